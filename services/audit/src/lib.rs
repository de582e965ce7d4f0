//! The audit service (DESIGN §5): CloudTrail-shaped event storage, lookup,
//! live subscriptions and EventBridge-style event rules.
//!
//! So far the event store ([`store`]: append with de-duplication by event
//! id, lookup by CloudTrail's attributes newest first, retention) and the
//! event-rule pattern language ([`domain::pattern`]) exist; the gRPC
//! service, the OTLP ingestion and the delivery guarantees come with the
//! audit issue.

pub mod domain;
pub mod store;
