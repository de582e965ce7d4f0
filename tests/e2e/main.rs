//! End-to-end tests: real services, real mTLS, real databases.

mod asymmetric;
mod audit;
mod audit_service;
mod authz;
mod ciphertexts;
mod dry_run;
mod identity;
mod keys;
mod lifecycle;
mod operations;
