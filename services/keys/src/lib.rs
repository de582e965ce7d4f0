//! The Coffer keys service: AWS KMS semantics over gRPC.
//!
//! `grpc` (edge) → `domain` (rules and cryptography) → `store` (Postgres or
//! SQLite). [`connect`] opens the database and builds the domain;
//! [`registration`] hands the service to the platform's server builder.

pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use std::sync::Arc;

use coffer_crypto::RootKey;
use coffer_platform::arn::Location;
use coffer_platform::audit::{EventCategory, RpcKind};
use coffer_platform::call::ServiceCatalog;
use coffer_platform::clock::Clock;
use coffer_platform::config::DatabaseSettings;
use coffer_platform::db::{DbError, DbPool, connect as connect_database};
use coffer_platform::server::ServiceRegistration;
use coffer_proto::keys::v1::keys_server::KeysServer;

/// The largest answer the service gives, whatever `limits.max_message_bytes`
/// says: a ListKeys page of 1,000 keys is about 120 KB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

pub use domain::KeysDomain;

/// The fully qualified gRPC service name.
pub const GRPC_SERVICE: &str = "coffer.keys.v1.Keys";

/// Read-only flag and event category of each keys RPC.
pub fn rpc_kind(method: &str) -> Option<RpcKind> {
    let (read_only, category) = match method {
        "DescribeKey"
        | "ListKeys"
        | "ListAliases"
        | "ListResourceTags"
        | "GetKeyRotationStatus"
        | "ListKeyRotations"
        | "GetPublicKey"
        | "GetKeyPolicy"
        | "ListKeyPolicies"
        | "ListGrants"
        | "ListRetirableGrants" => (true, EventCategory::Management),
        "Encrypt"
        | "Decrypt"
        | "GenerateDataKey"
        | "GenerateDataKeyWithoutPlaintext"
        | "GenerateRandom"
        | "Sign"
        | "Verify"
        | "GenerateMac"
        | "VerifyMac"
        | "GenerateDataKeyPair"
        | "GenerateDataKeyPairWithoutPlaintext"
        | "ReEncrypt" => (true, EventCategory::Data),
        _ => (false, EventCategory::Management),
    };
    Some(RpcKind {
        read_only,
        category,
    })
}

/// Opens (and migrates) the keys database and builds the domain.
pub async fn connect(
    database: &DatabaseSettings,
    root_key: Arc<RootKey>,
    location: Location,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<KeysDomain>, DbPool), DbError> {
    let pool = connect_database(database, &store::MIGRATIONS).await?;
    let store = store::key_store(pool.clone());
    Ok((
        Arc::new(KeysDomain::new(store, root_key, location, clock)),
        pool,
    ))
}

/// The keys service, ready for the server builder. `outbox`: the table its
/// state changes write their audit events to (`required` mode).
pub fn registration(
    domain: Arc<KeysDomain>,
    outbox: Option<Arc<coffer_platform::audit::outbox::SqlOutbox>>,
) -> ServiceRegistration {
    ServiceRegistration {
        catalog: Some(ServiceCatalog {
            grpc_service: GRPC_SERVICE,
            service_name: "keys",
            rpc_kind,
        }),
        descriptor_set: coffer_proto::FILE_DESCRIPTOR_SET,
        install: Box::new(move |routes, max_message_bytes| {
            // What callers send is bounded by the setting; what the service
            // answers is not made smaller than its largest answer (a
            // ListKeys page of 1,000 keys is ~120 KB), or a small setting
            // would fail such a call after it ran, in its trailers.
            routes.add_service(
                KeysServer::new(grpc::KeysGrpc::new(domain))
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes.max(MAX_ANSWER_BYTES)),
            );
        }),
        audit_sink: None,
        outbox,
    }
}
