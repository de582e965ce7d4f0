//! Coffer's gRPC API contracts, generated from `proto/coffer/**`.
//!
//! `FILE_DESCRIPTOR_SET` is the encoded descriptor set of every Coffer proto
//! (imports included) that the servers hand to gRPC reflection.

#![allow(unreachable_pub, clippy::all, clippy::pedantic)]

/// The encoded `FileDescriptorSet` of every Coffer proto and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/coffer_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("coffer.common.v1");
    }
}

pub mod keys {
    pub mod v1 {
        tonic::include_proto!("coffer.keys.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("coffer.audit.v1");
    }
}

pub mod bench {
    pub mod v1 {
        tonic::include_proto!("coffer.bench.v1");
    }
}
