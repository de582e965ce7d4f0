//! Evaluation: explicit Deny wins, then Allow, otherwise implicit deny.

use crate::context::RequestContext;
use crate::policy::{Effect, Policy, Statement};
use crate::principal::PrincipalMatch;

/// The outcome of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionEffect {
    /// A statement allowed the request and none denied it.
    Allowed,
    /// A statement denied the request; nothing can override this.
    ExplicitDeny,
    /// No statement applied.
    ImplicitDeny,
}

/// Which statement decided: for audit records and for error messages that
/// must not quote the policy (`sid` is the author's label, which may be
/// absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatementRef {
    /// Index into the `policies` slice given to [`evaluate`] (0 for a
    /// resource policy).
    pub policy_index: usize,
    /// Index of the statement within its policy's `Statement` list.
    pub statement_index: usize,
    pub sid: Option<String>,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: DecisionEffect,
    /// The first denying statement, or for `Allowed` the first allowing
    /// one; `None` for an implicit deny.
    pub statement: Option<StatementRef>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == DecisionEffect::Allowed
    }
}

/// The result of [`evaluate_resource_policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDecision {
    pub effect: DecisionEffect,
    pub statement: Option<StatementRef>,
    /// For `Allowed`: whether the allowing statement named the caller
    /// directly or only the caller's account (which then requires an
    /// identity policy to allow as well). A direct match is preferred when
    /// both kinds of statement allow. `None` unless `Allowed`.
    pub principal_match: Option<PrincipalMatch>,
}

impl ResourceDecision {
    /// The policy allows the caller by itself.
    pub fn allows_directly(&self) -> bool {
        self.effect == DecisionEffect::Allowed
            && self.principal_match == Some(PrincipalMatch::Direct)
    }

    /// The policy allows the caller's account, delegating the decision to
    /// the account's identity policies.
    pub fn allows_via_account_root(&self) -> bool {
        self.effect == DecisionEffect::Allowed
            && self.principal_match == Some(PrincipalMatch::ViaAccountRoot)
    }

    pub fn is_explicit_deny(&self) -> bool {
        self.effect == DecisionEffect::ExplicitDeny
    }
}

/// Which side a statement is evaluated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Identity,
    Resource,
}

/// Whether `statement` applies to the request, and how its principal
/// matched. Cheapest tests first: action, resource, principal, conditions.
///
/// A statement without a principal element applies to the caller in an
/// identity policy. In a resource policy (which the parser never produces
/// without principals, but a caller could pass an identity policy by
/// mistake) such a statement can deny but never allow: the safe reading.
/// In an identity policy, a statement that does have a principal element
/// (a resource policy passed by mistake) allows only on a direct match.
fn statement_match(
    statement: &Statement,
    context: &RequestContext,
    side: Side,
) -> Option<PrincipalMatch> {
    if !statement.action_applies(context.action()) {
        return None;
    }
    if !statement.resource_applies(context) {
        return None;
    }
    let principal_match = match statement.principal() {
        None => match (side, statement.effect()) {
            (Side::Identity, _) | (Side::Resource, Effect::Deny) => PrincipalMatch::Direct,
            (Side::Resource, Effect::Allow) => return None,
        },
        Some(element) => element.match_caller(context.principal())?,
    };
    if !statement.conditions_hold(context) {
        return None;
    }
    Some(principal_match)
}

fn statement_ref(policy: &Policy, policy_index: usize, statement_index: usize) -> StatementRef {
    StatementRef {
        policy_index,
        statement_index,
        sid: policy
            .statements()
            .get(statement_index)
            .and_then(|statement| statement.sid())
            .map(str::to_owned),
    }
}

/// Evaluates identity policies (all those attached to the caller) for one
/// request: any applicable Deny statement → `ExplicitDeny`; else any
/// applicable Allow → `Allowed`; else `ImplicitDeny`.
pub fn evaluate(policies: &[&Policy], context: &RequestContext) -> Decision {
    let mut first_allow: Option<(usize, usize)> = None;
    for (policy_index, policy) in policies.iter().enumerate() {
        for (statement_index, statement) in policy.statements().iter().enumerate() {
            let Some(principal_match) = statement_match(statement, context, Side::Identity) else {
                continue;
            };
            match statement.effect() {
                Effect::Deny => {
                    return Decision {
                        effect: DecisionEffect::ExplicitDeny,
                        statement: Some(statement_ref(policy, policy_index, statement_index)),
                    };
                }
                Effect::Allow => {
                    if principal_match == PrincipalMatch::Direct && first_allow.is_none() {
                        first_allow = Some((policy_index, statement_index));
                    }
                }
            }
        }
    }
    match first_allow {
        Some((policy_index, statement_index)) => Decision {
            effect: DecisionEffect::Allowed,
            statement: policies
                .get(policy_index)
                .map(|policy| statement_ref(policy, policy_index, statement_index)),
        },
        None => Decision {
            effect: DecisionEffect::ImplicitDeny,
            statement: None,
        },
    }
}

/// Evaluates a resource policy (e.g. a key policy) with principal matching.
/// A Deny that names the caller, its account, or everyone wins; otherwise
/// an Allow is reported with how it matched (see [`ResourceDecision`]).
pub fn evaluate_resource_policy(policy: &Policy, context: &RequestContext) -> ResourceDecision {
    let mut first_direct: Option<usize> = None;
    let mut first_via_account: Option<usize> = None;
    for (statement_index, statement) in policy.statements().iter().enumerate() {
        let Some(principal_match) = statement_match(statement, context, Side::Resource) else {
            continue;
        };
        match (statement.effect(), principal_match) {
            (Effect::Deny, _) => {
                return ResourceDecision {
                    effect: DecisionEffect::ExplicitDeny,
                    statement: Some(statement_ref(policy, 0, statement_index)),
                    principal_match: None,
                };
            }
            (Effect::Allow, PrincipalMatch::Direct) => {
                first_direct.get_or_insert(statement_index);
            }
            (Effect::Allow, PrincipalMatch::ViaAccountRoot) => {
                first_via_account.get_or_insert(statement_index);
            }
        }
    }
    let allowing = first_direct
        .map(|index| (index, PrincipalMatch::Direct))
        .or(first_via_account.map(|index| (index, PrincipalMatch::ViaAccountRoot)));
    match allowing {
        Some((statement_index, principal_match)) => ResourceDecision {
            effect: DecisionEffect::Allowed,
            statement: Some(statement_ref(policy, 0, statement_index)),
            principal_match: Some(principal_match),
        },
        None => ResourceDecision {
            effect: DecisionEffect::ImplicitDeny,
            statement: None,
            principal_match: None,
        },
    }
}

/// The combined result of [`authorize`]: the effect and the statements that
/// produced it on each side (those that were needed for an Allow, the one
/// that denied for an explicit deny).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDecision {
    pub effect: DecisionEffect,
    pub resource_statement: Option<StatementRef>,
    /// How the resource policy's allowing statement matched the caller.
    pub principal_match: Option<PrincipalMatch>,
    pub identity_statement: Option<StatementRef>,
}

impl AccessDecision {
    pub fn is_allowed(&self) -> bool {
        self.effect == DecisionEffect::Allowed
    }

    fn implicit_deny() -> Self {
        Self {
            effect: DecisionEffect::ImplicitDeny,
            resource_statement: None,
            principal_match: None,
            identity_statement: None,
        }
    }
}

/// The whole AWS decision for one request on a resource, combining the
/// resource's policy with the caller's identity policies:
///
/// 1. An explicit Deny in either policy denies (the resource policy's is
///    reported first).
/// 2. The resource policy allows the caller **directly**: allowed when the
///    caller is in the resource's account (the account in the resource
///    ARN) or is a Coffer service (which has no account and no identity
///    policies); a caller from another account also needs its identity
///    policies to allow ("cross-account needs both sides").
/// 3. The resource policy allows the caller's **account root**: the
///    account delegates to its identity policies, which must allow.
/// 4. `resource_policy` is `None` (the resource has no resource policy, as
///    a secret or parameter may): identity policies decide for callers in
///    the resource's account; other accounts are denied. Key policies are
///    mandatory in KMS, so the keys service always passes `Some`.
/// 5. Anything else is an implicit deny.
pub fn authorize(
    resource_policy: Option<&Policy>,
    identity_policies: &[&Policy],
    context: &RequestContext,
) -> AccessDecision {
    let resource_decision = resource_policy.map(|policy| evaluate_resource_policy(policy, context));
    let identity_decision = evaluate(identity_policies, context);

    if let Some(decision) = &resource_decision
        && decision.is_explicit_deny()
    {
        return AccessDecision {
            effect: DecisionEffect::ExplicitDeny,
            resource_statement: decision.statement.clone(),
            principal_match: None,
            identity_statement: None,
        };
    }
    if identity_decision.effect == DecisionEffect::ExplicitDeny {
        return AccessDecision {
            effect: DecisionEffect::ExplicitDeny,
            resource_statement: None,
            principal_match: None,
            identity_statement: identity_decision.statement,
        };
    }

    let caller = context.principal();
    let resource_account_id = resource_account(context.resource());
    let caller_in_resource_account =
        caller.account().is_some() && caller.account() == resource_account_id;
    let caller_has_no_account = caller.account().is_none();
    let identity_allows = identity_decision.is_allowed();

    let allowed = |resource: &ResourceDecision, identity_needed: bool| {
        if identity_needed && !identity_allows {
            return AccessDecision::implicit_deny();
        }
        AccessDecision {
            effect: DecisionEffect::Allowed,
            resource_statement: resource.statement.clone(),
            principal_match: resource.principal_match,
            identity_statement: if identity_needed {
                identity_decision.statement.clone()
            } else {
                None
            },
        }
    };

    match &resource_decision {
        Some(decision) if decision.allows_directly() => {
            let identity_needed = !(caller_in_resource_account || caller_has_no_account);
            allowed(decision, identity_needed)
        }
        Some(decision) if decision.allows_via_account_root() => allowed(decision, true),
        Some(_) => AccessDecision::implicit_deny(),
        None => {
            if caller_in_resource_account && identity_allows {
                AccessDecision {
                    effect: DecisionEffect::Allowed,
                    resource_statement: None,
                    principal_match: None,
                    identity_statement: identity_decision.statement,
                }
            } else {
                AccessDecision::implicit_deny()
            }
        }
    }
}

/// The account component of a resource ARN, when it is one.
fn resource_account(resource: &str) -> Option<&str> {
    let mut parts = resource.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let account = parts.nth(3)?;
    parts.next()?;
    (!account.is_empty()).then_some(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_accounts() {
        assert_eq!(
            resource_account("arn:coffer:kms:eu-west-1:111122223333:key/abc"),
            Some("111122223333")
        );
        assert_eq!(resource_account("arn:coffer:s3:::bucket"), None);
        assert_eq!(resource_account("*"), None);
        assert_eq!(
            resource_account("arn:coffer:kms:eu-west-1:111122223333"),
            None
        );
    }
}
