//! Behaviour tests of coffer-policy through its public API.

mod conditions;
mod evaluation;
mod matching;
mod parse_errors;
mod principals;
mod properties;
mod support;
