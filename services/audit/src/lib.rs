//! The audit service (DESIGN §5): CloudTrail-shaped event storage, lookup,
//! live subscriptions and EventBridge-style event rules.
//!
//! So far only the domain's event-pattern language exists
//! ([`domain::pattern`]); the gRPC service, the OTLP ingestion and the
//! event store come with the audit issue.

pub mod domain;
