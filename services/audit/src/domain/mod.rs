//! The audit service's rules; no gRPC types and no database driver here.

pub mod pattern;
pub mod record;
