//! Coffer's policy language: AWS IAM-style JSON policies, parsed strictly
//! and evaluated with AWS semantics. Pure computation: no I/O, no async.
//!
//! ```
//! use coffer_policy::{DecisionEffect, Policy, PrincipalInfo, RequestContext, evaluate};
//!
//! let policy = Policy::parse_identity(r#"{
//!     "Version": "2012-10-17",
//!     "Statement": [{
//!         "Effect": "Allow",
//!         "Action": ["kms:Encrypt", "kms:GenerateDataKey*"],
//!         "Resource": "arn:coffer:kms:eu-west-1:111122223333:key/*",
//!         "Condition": {"StringEquals": {"kms:ViaService": "secrets.eu-west-1.coffer.internal"}}
//!     }]
//! }"#).unwrap();
//! let caller = PrincipalInfo::user("coffer", "111122223333", "alice");
//! let context = RequestContext::new(caller, "kms:encrypt", "arn:coffer:kms:eu-west-1:111122223333:key/1234")
//!     .with_value("kms:ViaService", "secrets.eu-west-1.coffer.internal");
//! assert_eq!(evaluate(&[&policy], &context).effect, DecisionEffect::Allowed);
//! ```
//!
//! # Grammar
//!
//! `Version` (`"2012-10-17"` or `"2008-10-17"`; absent means the latter, as
//! in AWS), `Id`, `Statement` (one object or a non-empty list) of `Sid`,
//! `Effect` (`Allow`/`Deny`), `Principal`/`NotPrincipal` (resource policies
//! only, and `NotPrincipal` only with `Deny`), `Action`/`NotAction`,
//! `Resource`/`NotResource` and `Condition`. Element names, operator names
//! and `Allow`/`Deny` are case-sensitive, as AWS spells them.
//!
//! Parsing is strict; every refusal is a [`PolicyError`] (callers report it
//! as `MalformedPolicyDocumentException`) whose message names the element:
//! documents over [`MAX_POLICY_BYTES`], nesting deeper than
//! [`MAX_NESTING_DEPTH`], duplicate JSON keys at any level (serde_json would
//! silently keep the last), condition keys repeated in another case, unknown
//! fields or condition operators, both `X` and `NotX`, a missing `Effect`,
//! action or resource, malformed actions, ARNs, principals, condition values
//! or policy variables, and non-empty `Sid`s used twice.
//!
//! # Matching
//!
//! - Actions: `prefix:Name`, compared case-insensitively, with `*`/`?`
//!   wildcards (`kms:*`, `kms:Gen*`).
//! - Resources: `*` or `arn:partition:service:region:account:resource`
//!   (all six parts, no wildcard in the service), compared case-sensitively
//!   as a glob over the whole ARN: `*` matches any run including `/` and `:`.
//!   A document may name any partition; it simply has to match the
//!   instance's resource ARNs.
//! - Only the policy side is a pattern. Request values (action, resource,
//!   condition values, principal names, policy-variable values) are literal:
//!   `*`, `?`, `/`, `..`, `%2F` or NUL in them are ordinary characters, never
//!   decoded or normalised, so they cannot widen a match. [`wildcard_match`]
//!   exposes the same matcher.
//! - Policy variables (`2012-10-17` only) in `Resource`/`NotResource` and in
//!   string and ARN condition values: `${key}` is the single value of
//!   condition key `key` (case-insensitive), `${key, 'default'}` falls back
//!   to the default, `${*}`, `${?}`, `${$}` are those characters literally.
//!   A variable whose key is absent or multi-valued and has no default
//!   matches nothing, so the pattern holding it matches nothing. In a
//!   `NotResource` or a negated condition, which hold when nothing listed
//!   matches, such a value is not known to differ from the request's: an
//!   Allow statement holding it does not apply ("if AWS cannot resolve a
//!   variable this might cause the entire statement to be invalid"), and a
//!   Deny statement does, the stricter reading.
//!
//! # Conditions
//!
//! - All operator blocks of a statement, and all keys within one block, must
//!   hold (AND). The values listed for one key are alternatives (OR).
//! - A *negated* operator (`StringNotEquals`, `StringNotEqualsIgnoreCase`,
//!   `StringNotLike`, `ArnNotEquals`, `ArnNotLike`, `NumericNotEquals`,
//!   `DateNotEquals`, `NotIpAddress`) is the negation of its positive form:
//!   it holds when the request value matches *none* of the listed values.
//! - A key missing from the request (or present with no values) makes a
//!   positive operator false and a negated operator **true**. This is AWS's
//!   documented rule ("if the policy condition requires that the key is not
//!   matched, such as StringNotLike, and the key is not present, the
//!   condition returns true"), and it is what makes the usual guard
//!   `Deny … StringNotEquals kms:ViaService …` deny direct calls that carry
//!   no `kms:ViaService` at all.
//! - `…IfExists`: a missing key makes the condition true; a present key is
//!   checked as without the suffix. On a negated operator the suffix
//!   therefore changes nothing.
//! - `Null`: `"true"` holds when the key is missing, `"false"` when it is
//!   present. It takes neither `IfExists` nor a set qualifier.
//! - Several request values for a key without a set qualifier: a positive
//!   operator holds when *any* request value matches; a negated one when
//!   *no* request value matches (the negation again).
//! - Keys that are single-valued in AWS but whose names Coffer matches
//!   without case (`kms:EncryptionContext:<key>`, `aws:RequestTag/<key>`,
//!   `aws:ResourceTag/<key>`) carry several values when the request spells
//!   one key in several cases (`env` and `Env`). Each spelling is then
//!   judged on its own, and the stricter outcome wins: in a `Deny`
//!   statement the operator holds when it holds for *any* spelling's value,
//!   in an `Allow` statement only when it holds for *every* one. A second
//!   spelling therefore cannot switch off a `Deny … StringNotEquals` guard,
//!   nor satisfy an `Allow … StringEquals` beside a value it forbids. This
//!   holds with a set qualifier too (`ForAnyValue:StringNotEquals` in an
//!   Allow is not satisfied by `Env` beside a forbidden `env`).
//! - `ForAllValues:` holds when every request value satisfies the operator
//!   (for a negated operator: matches none of the listed values), and when
//!   the key is missing or empty. `ForAnyValue:` holds when at least one
//!   request value satisfies it, and is false when the key is missing.
//!   `IfExists` combined with a set qualifier has no further effect: the
//!   qualifier's own rule for a missing key applies.
//! - A request value that does not parse as the operator's type (a number
//!   for `Numeric…`, a date, an IP address, an ARN, a boolean) matches no
//!   listed value, so positive operators are false and negated ones true.
//!
//! # Principals
//!
//! Accepted forms:
//!
//! - `"Principal": "*"` or `{"AWS": "*"}`: everyone.
//! - `{"AWS": "111122223333"}` or `{"AWS": "arn:{partition}:iam::111122223333:root"}`:
//!   the account. A bare account id means the account in the instance's own
//!   partition; an ARN must name that partition to match (documents may use
//!   `aws` or `coffer` or any other partition; they are compared, not
//!   rewritten).
//! - `{"AWS": "arn:{p}:iam::{acct}:user/{name}"}` (or `role/`,
//!   `arn:{p}:sts::{acct}:assumed-role/…`, `arn:{p}:coffer:::service/{name}`):
//!   exactly that principal. Wildcards are refused: AWS does not allow them in
//!   principal ARNs (use `"*"` with a condition on `aws:PrincipalArn`).
//! - `{"Service": "secrets.coffer.internal"}`: a service principal, compared
//!   case-insensitively.
//!
//! Only the exact resource `root` names the account: `ROOT`, `Root`,
//! ` root` and the like are refused, and `user/root` is an ordinary user.
//!
//! **The account as principal.** In an `Allow`, naming the account does not
//! grant its users anything by itself: it delegates to the account's
//! identity policies, which must then allow too (AWS key-policy semantics).
//! The match is reported as [`PrincipalMatch::ViaAccountRoot`] so the caller
//! can apply that rule; only the root itself matches directly. In a `Deny`,
//! naming the account denies every principal of the account.
//!
//! **NotPrincipal** (accepted with `Deny` only) exempts a caller only when
//! every identity of the request is listed: the caller and, unless it is the
//! root or a service, its account (AWS's rule). To exempt `user/admin`, list
//! both its ARN and the account.
//!
//! # Evaluation
//!
//! [`evaluate`] for identity policies, [`evaluate_resource_policy`] for a
//! resource policy with principal matching, and [`authorize`] for the
//! combined AWS rule (key policy directly or via the account root, identity
//! policies, cross-account needs both). In all of them an applicable `Deny`
//! wins, then an applicable `Allow`, otherwise the request is implicitly
//! denied; the decision names the deciding statement ([`StatementRef`]) for
//! audit records and for error messages that must not quote the policy.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod condition;
mod context;
mod error;
mod evaluate;
mod glob;
mod json;
mod partition;
mod policy;
mod principal;
mod scalar;

pub use context::{PrincipalInfo, PrincipalKind, RequestContext};
pub use error::{MAX_QUOTED_CHARS, PolicyError};
pub use evaluate::{
    AccessDecision, Decision, DecisionEffect, ResourceDecision, StatementRef, authorize, evaluate,
    evaluate_resource_policy,
};
pub use glob::wildcard_match;
pub use json::MAX_NESTING_DEPTH;
pub use partition::foreign_partition_arn;
pub use policy::{Effect, MAX_POLICY_BYTES, Policy, PolicyKind, PolicyVersion, Statement};
pub use principal::PrincipalMatch;
