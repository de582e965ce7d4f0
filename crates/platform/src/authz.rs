//! Authorization: the identity policies of the config file (hot-reloaded)
//! and the one call every RPC of every service makes before it acts.
//!
//! A handler turns its [`CallContext`](crate::call::CallContext) into a
//! [`Caller`], builds a request with [`Caller::request`] (action, resource
//! ARN and the global condition keys), adds its service's own keys, and
//! asks [`Caller::authorize`] with the resource's policy, if it has one. The
//! decision is recorded on the call: the call layer refuses to return a
//! successful response from an RPC that never asked (DESIGN §2).
//!
//! Global condition keys set here, never from request headers:
//! `aws:PrincipalArn`, `aws:PrincipalAccount`, `aws:PrincipalType`,
//! `aws:username` (users), `aws:SourceIp`, `aws:CurrentTime`,
//! `aws:EpochTime`, `aws:SecureTransport`, `aws:ViaAWSService` (whether a
//! Coffer service forwarded the call), `aws:PrincipalIsAWSService` (always
//! false: a service on its own behalf is no caller), and for the action's service
//! `{prefix}:CallerAccount` and, when a Coffer service forwards the caller,
//! `{prefix}:ViaService = {service prefix}.{region}.{dns suffix}` taken from
//! the forwarding service's certificate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use coffer_policy::{AccessDecision, DecisionEffect, Policy, PrincipalInfo, RequestContext};

use crate::arn::{AccountId, Location};
use crate::clock::Clock;
use crate::error::{ApiError, ErrorCode};
use crate::identity::{Principal, PrincipalKind};

/// An identity policy and the principals it is attached to.
#[derive(Debug, Clone)]
pub struct IdentityPolicyAttachment {
    /// A name for logs and errors.
    pub name: String,
    /// Principal ARN patterns (`*` and `?` wildcards; `*` alone is everyone).
    pub principals: Vec<String>,
    pub policy: Arc<Policy>,
}

impl IdentityPolicyAttachment {
    fn applies_to(&self, principal_arn: &str) -> bool {
        self.principals
            .iter()
            .any(|pattern| coffer_policy::wildcard_match(pattern, principal_arn))
    }
}

/// The policies attached to one principal, shared by its calls.
pub type AttachedPolicies = Arc<[Arc<Policy>]>;

/// Memoised principal → policies lookups kept per policy generation.
const MAX_MEMOISED_PRINCIPALS: usize = 10_000;

struct PolicySet {
    attachments: Vec<IdentityPolicyAttachment>,
    by_principal: Mutex<HashMap<String, AttachedPolicies>>,
}

/// The identity policies in force; replaced as a whole on reload.
pub struct IdentityPolicies {
    current: RwLock<Arc<PolicySet>>,
    /// Counts the replacements, for what holds on to an authorization
    /// (an open subscription) and must decide again after one.
    generation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for IdentityPolicies {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IdentityPolicies")
            .field("attachments", &self.snapshot().attachments.len())
            .finish()
    }
}

impl IdentityPolicies {
    pub fn new(attachments: Vec<IdentityPolicyAttachment>) -> Self {
        Self {
            current: RwLock::new(Arc::new(PolicySet {
                attachments,
                by_principal: Mutex::new(HashMap::new()),
            })),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes whenever [`IdentityPolicies::replace`] puts new policies in
    /// force.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Puts a new set of policies in force for every later call.
    pub fn replace(&self, attachments: Vec<IdentityPolicyAttachment>) {
        let set = Arc::new(PolicySet {
            attachments,
            by_principal: Mutex::new(HashMap::new()),
        });
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = set;
        self.generation.send_modify(|generation| *generation += 1);
    }

    fn snapshot(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How many attachments are in force.
    pub fn len(&self) -> usize {
        self.snapshot().attachments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The policies attached to `principal_arn`.
    pub fn for_principal(&self, principal_arn: &str) -> AttachedPolicies {
        let set = self.snapshot();
        let mut memo = set
            .by_principal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = memo.get(principal_arn) {
            return found.clone();
        }
        let policies: AttachedPolicies = set
            .attachments
            .iter()
            .filter(|attachment| attachment.applies_to(principal_arn))
            .map(|attachment| attachment.policy.clone())
            .collect();
        if memo.len() >= MAX_MEMOISED_PRINCIPALS {
            memo.clear();
        }
        memo.insert(principal_arn.to_owned(), policies.clone());
        policies
    }
}

/// Where identity policies come from and how often to look for changes.
/// Its `Debug` leaves out the text of the config file, which may hold
/// database passwords.
#[derive(Clone)]
pub struct AuthorizationSettings {
    pub identity_policies: Vec<IdentityPolicyAttachment>,
    /// The config file the policies were read from, watched for changes.
    pub source: Option<PathBuf>,
    /// The text of `source` the policies were read from: a change from it,
    /// made at any time since, is a change to put in force.
    pub loaded_text: Option<String>,
    /// The overrides the file was loaded with, applied again on a reload.
    pub overrides: crate::config::Overrides,
    pub reload_interval: Duration,
}

impl std::fmt::Debug for AuthorizationSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AuthorizationSettings")
            .field("identity_policies", &self.identity_policies)
            .field("source", &self.source)
            .field(
                "loaded_text",
                &self
                    .loaded_text
                    .as_ref()
                    .map(|text| format!("<{} bytes>", text.len())),
            )
            .field("overrides", &self.overrides)
            .field("reload_interval", &self.reload_interval)
            .finish()
    }
}

impl Default for AuthorizationSettings {
    fn default() -> Self {
        Self {
            identity_policies: Vec::new(),
            source: None,
            loaded_text: None,
            overrides: crate::config::Overrides::default(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// Watches the config file `source` and puts its identity policies in force
/// whenever its text changes. A file that no longer validates leaves the
/// policies in force untouched and logs one error per change.
pub fn spawn_reloader(
    policies: Arc<IdentityPolicies>,
    settings: &AuthorizationSettings,
) -> Option<tokio::task::JoinHandle<()>> {
    let source = settings.source.clone()?;
    let overrides = settings.overrides.clone();
    let interval = settings.reload_interval;
    // What the policies in force were read from, so an edit made while the
    // services were starting is seen as one.
    let loaded_text = settings.loaded_text.clone();
    Some(crate::background::supervised(
        "identity policy reloader",
        interval,
        move || {
            reload_policies(
                policies.clone(),
                source.clone(),
                overrides.clone(),
                interval,
                loaded_text.clone(),
            )
        },
    ))
}

/// [`spawn_reloader`]'s loop, from `last_text`, the text the policies were
/// loaded from at start-up (started again after a panic, it may put the
/// policies in force once more: harmless).
async fn reload_policies(
    policies: Arc<IdentityPolicies>,
    source: PathBuf,
    overrides: crate::config::Overrides,
    interval: Duration,
    mut last_text: Option<String>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let text = match tokio::fs::read_to_string(&source).await {
            Ok(text) => text,
            Err(error) => {
                if last_text.take().is_some() {
                    tracing::error!(path = %source.display(), %error,
                        "config file unreadable; identity policies unchanged");
                }
                continue;
            }
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        match crate::config::from_yaml(&text, overrides.clone()) {
            Ok(settings) => {
                let count = settings.authorization.identity_policies.len();
                policies.replace(settings.authorization.identity_policies);
                tracing::info!(path = %source.display(), policies = count,
                    "identity policies reloaded");
            }
            Err(error) => tracing::error!(path = %source.display(), %error,
                "config file changed but is invalid; the previous identity policies stay in force"),
        }
    }
}

/// The instance-wide half of authorization: identity policies, where the
/// instance is, and its clock.
pub struct Authorizer {
    location: Location,
    identity: Arc<IdentityPolicies>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Authorizer")
            .field("location", &self.location)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    pub fn new(location: Location, identity: Arc<IdentityPolicies>, clock: Arc<dyn Clock>) -> Self {
        Self {
            location,
            identity,
            clock,
        }
    }

    pub fn identity_policies(&self) -> &Arc<IdentityPolicies> {
        &self.identity
    }

    pub fn location(&self) -> &Location {
        &self.location
    }
}

/// Which condition keys a request must carry: those the policies in play
/// read ([`Policy::condition_keys`]). Building keys nobody reads is most of
/// what authorization would otherwise cost.
#[derive(Debug, Clone)]
pub enum KeyFilter<'a> {
    /// Every key (a policy reads variables, or nobody knows).
    All,
    /// Only these keys (lowercased).
    Only(Vec<&'a str>),
}

impl<'a> KeyFilter<'a> {
    /// The keys `policies` read.
    pub fn of(policies: impl IntoIterator<Item = &'a Policy>) -> Self {
        let mut keys: Vec<&'a str> = Vec::new();
        for policy in policies {
            match policy.condition_keys() {
                None => return Self::All,
                Some(policy_keys) => keys.extend(policy_keys.iter().map(String::as_str)),
            }
        }
        Self::Only(keys)
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Only(keys) if keys.is_empty())
    }

    /// Whether `key` (any case) is wanted.
    pub fn wants(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(keys) => keys.iter().any(|wanted| wanted.eq_ignore_ascii_case(key)),
        }
    }

    /// Whether any wanted key starts with `prefix` (lowercase).
    pub fn wants_prefix(&self, prefix: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(keys) => keys.iter().any(|wanted| wanted.starts_with(prefix)),
        }
    }
}

/// Whether an authorization decision was made during a call; shared by the
/// call layer and the call's [`Caller`]s.
#[derive(Debug, Clone, Default)]
pub(crate) struct DecisionMark(Arc<AtomicBool>);

impl DecisionMark {
    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The caller of one API call, as authorization sees it: an account-bound
/// principal, where it calls from, and through which Coffer service.
#[derive(Clone)]
pub struct Caller {
    principal: PrincipalInfo,
    account: AccountId,
    principal_type: &'static str,
    via_service: Option<String>,
    source_ip: IpAddr,
    authorizer: Arc<Authorizer>,
    identity_policies: AttachedPolicies,
    mark: DecisionMark,
    audit: Option<crate::audit::AuditRecorder>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Caller")
            .field("principal", &self.principal.arn())
            .field("via_service", &self.via_service)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// `None` for a principal without an account (a Coffer service calling
    /// on its own behalf).
    pub(crate) fn new(
        principal: &Principal,
        invoked_by: Option<&Principal>,
        source_ip: IpAddr,
        authorizer: Arc<Authorizer>,
        mark: DecisionMark,
        audit: Option<crate::audit::AuditRecorder>,
    ) -> Option<Self> {
        let account = principal.account()?.clone();
        let location = &authorizer.location;
        let (info, principal_type) = match principal.kind() {
            PrincipalKind::User => (
                PrincipalInfo::user(&location.partition, account.as_str(), principal.name()),
                "User",
            ),
            PrincipalKind::Role => (
                PrincipalInfo::role(&location.partition, account.as_str(), principal.name()),
                "AssumedRole",
            ),
            PrincipalKind::Service => return None,
        };
        let via_service = invoked_by
            .filter(|service| service.is_service())
            .map(|service| {
                format!(
                    "{}.{}.{}",
                    crate::service_prefix(service.name()),
                    location.region,
                    location.dns_suffix
                )
            });
        let identity_policies = authorizer.identity.for_principal(info.arn());
        Some(Self {
            principal: info,
            account,
            principal_type,
            via_service,
            source_ip,
            authorizer,
            identity_policies,
            mark,
            audit,
        })
    }

    /// A caller for tests of code that acts on a caller's behalf.
    pub fn for_tests(principal: &Principal, authorizer: Arc<Authorizer>) -> Option<Self> {
        Self::new(
            principal,
            None,
            IpAddr::from([127, 0, 0, 1]),
            authorizer,
            DecisionMark::default(),
            None,
        )
    }

    /// Names a resource the call acts on in its audit event. Domain code
    /// calls this before it writes, so that the event a state change commits
    /// to the outbox (DESIGN §5) already names what changed.
    pub fn record_resource(&self, arn: String, account: String, resource_type: &str) {
        if let Some(audit) = &self.audit {
            audit.resource(arn, account, resource_type);
        }
    }

    /// Records the call's response elements (a success's) before the
    /// domain writes, for the same reason as [`Self::record_resource`]: the
    /// outbox's copy of the event is then whole.
    pub fn record_response(&self, elements: serde_json::Value) {
        if let Some(audit) = &self.audit {
            audit.response_elements(elements);
        }
    }

    /// Records the call's `additionalEventData` before the domain writes.
    pub fn record_additional_data(&self, data: serde_json::Value) {
        if let Some(audit) = &self.audit {
            audit.additional_event_data(data);
        }
    }

    pub fn account(&self) -> &AccountId {
        &self.account
    }

    pub fn principal(&self) -> &PrincipalInfo {
        &self.principal
    }

    pub fn arn(&self) -> &str {
        self.principal.arn()
    }

    /// `{prefix}.{region}.{dns suffix}` of the Coffer service that forwarded
    /// this call, from its certificate.
    pub fn via_service(&self) -> Option<&str> {
        self.via_service.as_deref()
    }

    pub fn location(&self) -> &Location {
        &self.authorizer.location
    }

    /// A request for `action` (`kms:Encrypt`) on `resource` (an ARN or
    /// `*`) carrying every global condition key.
    pub fn request(&self, action: &str, resource: &str) -> RequestContext {
        self.request_with(action, resource, &KeyFilter::All)
    }

    /// A request carrying the global condition keys `filter` wants.
    pub fn request_with(
        &self,
        action: &str,
        resource: &str,
        filter: &KeyFilter<'_>,
    ) -> RequestContext {
        let prefix = action.split_once(':').map_or(action, |(prefix, _)| prefix);
        // The policy crate sets aws:PrincipalArn, aws:PrincipalAccount and
        // aws:username from the principal itself.
        let mut context = RequestContext::new(self.principal.clone(), action, resource);
        if filter.is_empty() {
            return context;
        }
        if filter.wants("aws:PrincipalType") {
            context.add_value("aws:PrincipalType", self.principal_type);
        }
        if filter.wants("aws:SourceIp") {
            context.add_value("aws:SourceIp", self.source_ip.to_string());
        }
        if filter.wants("aws:CurrentTime") || filter.wants("aws:EpochTime") {
            let now = self.authorizer.clock.now_millis();
            context.add_value(
                "aws:CurrentTime",
                crate::telemetry::rfc3339_at(now.div_euclid(1000)),
            );
            context.add_value("aws:EpochTime", (now.div_euclid(1000)).to_string());
        }
        if filter.wants("aws:SecureTransport") {
            context.add_value("aws:SecureTransport", "true");
        }
        // Present in every request, as in AWS, so that a guardrail such as
        // `Bool: {aws:ViaAWSService: "false"}` applies to direct calls.
        if filter.wants("aws:ViaAWSService") {
            let via = if self.via_service.is_some() {
                "true"
            } else {
                "false"
            };
            context.add_value("aws:ViaAWSService", via);
        }
        // A caller here is always a user or role (a service principal
        // calling on its own behalf has no `Caller`).
        if filter.wants("aws:PrincipalIsAWSService") {
            context.add_value("aws:PrincipalIsAWSService", "false");
        }
        let caller_account = format!("{prefix}:CallerAccount");
        if filter.wants(&caller_account) {
            context.add_value(&caller_account, self.account.as_str());
        }
        if let Some(via) = &self.via_service {
            let via_key = format!("{prefix}:ViaService");
            if filter.wants(&via_key) {
                context.add_value(&via_key, via.as_str());
            }
        }
        context
    }

    /// The caller's identity policies, as the shared set they are: the same
    /// allocation for every call of the principal until a reload.
    pub fn identity_policies(&self) -> &AttachedPolicies {
        &self.identity_policies
    }

    /// The AWS decision for `request` given the resource's policy (`None`
    /// when the resource has none) and the caller's identity policies. The
    /// call is marked as authorized-checked whatever the outcome.
    pub fn authorize(
        &self,
        resource_policy: Option<&Policy>,
        request: &RequestContext,
    ) -> AccessDecision {
        self.mark.set();
        let identity: Vec<&Policy> = self.identity_policies.iter().map(Arc::as_ref).collect();
        coffer_policy::authorize(resource_policy, &identity, request)
    }

    /// The decision of the caller's identity policies alone, for actions on
    /// no particular resource (`kms:CreateKey` on `*`).
    pub fn authorize_identity(&self, request: &RequestContext) -> coffer_policy::Decision {
        self.mark.set();
        let identity: Vec<&Policy> = self.identity_policies.iter().map(Arc::as_ref).collect();
        coffer_policy::evaluate(&identity, request)
    }

    /// Whether the identity policies in force *now* (reloaded since the
    /// call began, perhaps) still allow `action` on `resource`: for what
    /// outlives the call's own decision, an open subscription. Neither
    /// marks the call nor records anything.
    pub fn still_allowed(&self, action: &str, resource: &str) -> bool {
        let current = self.authorizer.identity.for_principal(self.principal.arn());
        let identity: Vec<&Policy> = current.iter().map(Arc::as_ref).collect();
        coffer_policy::evaluate(&identity, &self.request(action, resource)).is_allowed()
    }

    /// See [`IdentityPolicies::changes`].
    pub fn policy_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.authorizer.identity.changes()
    }

    /// This caller without the call's audit record and decision mark, for
    /// a task that outlives the call.
    pub fn detached(&self) -> Self {
        Self {
            principal: self.principal.clone(),
            account: self.account.clone(),
            principal_type: self.principal_type,
            via_service: self.via_service.clone(),
            source_ip: self.source_ip,
            authorizer: self.authorizer.clone(),
            identity_policies: self.identity_policies.clone(),
            mark: DecisionMark::default(),
            audit: None,
        }
    }

    /// Records that access was decided by a rule other than a policy (a
    /// grant, say) without evaluating one.
    pub fn mark_decided(&self) {
        self.mark.set();
    }

    /// AccessDeniedException for `action` on `resource`: names both, never
    /// the policy.
    pub fn denied(&self, action: &str, resource: &str, effect: DecisionEffect) -> ApiError {
        let reason = match effect {
            DecisionEffect::ExplicitDeny => "with an explicit deny".to_owned(),
            _ => format!("because no policy allows the {action} action"),
        };
        ApiError::new(
            ErrorCode::PermissionDenied,
            "AccessDeniedException",
            format!(
                "User: {} is not authorized to perform: {action} on resource: {resource} {reason}",
                self.principal.arn()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::clock::ManualClock;
    use crate::identity::principal_from_spiffe_id;

    fn location() -> Location {
        Location {
            partition: "coffer".into(),
            region: "eu-west-1".into(),
            dns_suffix: "coffer.internal".into(),
        }
    }

    fn attachment(principals: &[&str], document: &str) -> IdentityPolicyAttachment {
        IdentityPolicyAttachment {
            name: "test".into(),
            principals: principals.iter().map(|p| (*p).to_owned()).collect(),
            policy: Arc::new(Policy::parse_identity(document).unwrap()),
        }
    }

    const ALLOW_ENCRYPT: &str = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*"}}"#;

    /// A reload applies the overrides the file was first loaded with (a
    /// region given by `--region` included), or a file that depends on one
    /// would never validate again.
    #[tokio::test]
    async fn a_reload_applies_the_overrides_of_the_first_load()
    -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("coffer.yaml");
        let file = |policies: &str| {
            format!(
                "tls: {{ cert_file: c.pem, key_file: k.pem, ca_file: ca.pem }}\nroot_key: {{ file: root-key }}\nservices:\n  keys:\n    listen: 127.0.0.1:8443\n    database: {{ url: \"sqlite://keys.db\" }}\nauthorization:\n  reload_interval_ms: 100\n  identity_policies:\n{policies}"
            )
        };
        let attachment = |name: &str| {
            format!(
                "    - name: {name}\n      principals: [\"arn:coffer:iam::111122223333:user/{name}\"]\n      policy: '{ALLOW_ENCRYPT}'\n"
            )
        };
        std::fs::write(&path, file(&attachment("alice")))?;
        let settings = crate::config::load(
            Some(&path),
            vec![("COFFER_REGION".to_owned(), "eu-west-1".to_owned())],
        )?;
        let policies = Arc::new(IdentityPolicies::new(
            settings.authorization.identity_policies.clone(),
        ));
        // Changed after it was loaded, before the reloader started: still
        // a change.
        std::fs::write(
            &path,
            file(&format!("{}{}", attachment("alice"), attachment("bob"))),
        )?;
        let reloader = spawn_reloader(policies.clone(), &settings.authorization)
            .ok_or("a file-backed configuration has a reloader")?;
        let bob = "arn:coffer:iam::111122223333:user/bob";
        let mut reloaded = false;
        for _ in 0..100 {
            if !policies.for_principal(bob).is_empty() {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reloader.abort();
        if !reloaded {
            return Err("the changed file was never put in force".into());
        }
        Ok(())
    }

    #[test]
    fn attachments_match_principal_patterns_literally() {
        let policies = IdentityPolicies::new(vec![attachment(
            &["arn:coffer:iam::111122223333:user/app-*"],
            ALLOW_ENCRYPT,
        )]);
        assert_eq!(
            policies
                .for_principal("arn:coffer:iam::111122223333:user/app-1")
                .len(),
            1
        );
        assert!(
            policies
                .for_principal("arn:coffer:iam::111122223333:user/admin")
                .is_empty()
        );
        assert!(
            policies
                .for_principal("arn:coffer:iam::444455556666:user/app-1")
                .is_empty()
        );
        policies.replace(Vec::new());
        assert!(
            policies
                .for_principal("arn:coffer:iam::111122223333:user/app-1")
                .is_empty(),
            "a reload must not serve memoised lookups of the old set"
        );
    }

    #[test]
    fn requests_carry_global_keys_and_via_service_only_from_a_service() {
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ));
        let authorizer = Arc::new(Authorizer::new(
            location(),
            Arc::new(IdentityPolicies::new(Vec::new())),
            clock,
        ));
        let alice = principal_from_spiffe_id(
            "spiffe://coffer.local/account/111122223333/user/alice",
            "coffer.local",
        )
        .unwrap();
        let secrets =
            principal_from_spiffe_id("spiffe://coffer.local/service/secrets", "coffer.local")
                .unwrap();
        let direct = Caller::new(
            &alice,
            None,
            IpAddr::from([10, 0, 0, 1]),
            authorizer.clone(),
            DecisionMark::default(),
            None,
        )
        .unwrap();
        let request = direct.request("kms:Encrypt", "*");
        assert_eq!(
            request.single_value("aws:PrincipalArn"),
            Some("arn:coffer:iam::111122223333:user/alice")
        );
        assert_eq!(
            request.single_value("kms:CallerAccount"),
            Some("111122223333")
        );
        assert_eq!(request.single_value("aws:SourceIp"), Some("10.0.0.1"));
        assert_eq!(
            request.single_value("aws:CurrentTime"),
            Some("2023-11-14T22:13:20Z")
        );
        assert!(request.values("kms:ViaService").is_empty());

        let mark = DecisionMark::default();
        let forwarded = Caller::new(
            &alice,
            Some(&secrets),
            IpAddr::from([10, 0, 0, 1]),
            authorizer.clone(),
            mark.clone(),
            None,
        )
        .unwrap();
        assert_eq!(
            forwarded
                .request("kms:Decrypt", "*")
                .single_value("kms:ViaService"),
            Some("secretsmanager.eu-west-1.coffer.internal")
        );
        assert!(!mark.is_set());
        let decision = forwarded.authorize(None, &forwarded.request("kms:Decrypt", "*"));
        assert!(!decision.is_allowed());
        assert!(mark.is_set());

        // A user forwarded by a non-service is never "via" anything, and a
        // service has no account to act in.
        let bob = principal_from_spiffe_id(
            "spiffe://coffer.local/account/111122223333/user/bob",
            "coffer.local",
        )
        .unwrap();
        let not_via = Caller::new(
            &alice,
            Some(&bob),
            IpAddr::from([10, 0, 0, 1]),
            authorizer.clone(),
            DecisionMark::default(),
            None,
        )
        .unwrap();
        assert_eq!(not_via.via_service(), None);
        assert!(
            Caller::new(
                &secrets,
                None,
                IpAddr::from([10, 0, 0, 1]),
                authorizer,
                DecisionMark::default(),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn denial_names_action_and_resource_not_the_policy() {
        let authorizer = Arc::new(Authorizer::new(
            location(),
            Arc::new(IdentityPolicies::new(Vec::new())),
            Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH)),
        ));
        let alice = principal_from_spiffe_id(
            "spiffe://coffer.local/account/111122223333/user/alice",
            "coffer.local",
        )
        .unwrap();
        let caller = Caller::for_tests(&alice, authorizer).unwrap();
        let error = caller.denied(
            "kms:Encrypt",
            "arn:coffer:kms:eu-west-1:111122223333:key/k",
            DecisionEffect::ImplicitDeny,
        );
        assert_eq!(error.exception, "AccessDeniedException");
        assert_eq!(
            error.message,
            "User: arn:coffer:iam::111122223333:user/alice is not authorized to perform: kms:Encrypt on resource: arn:coffer:kms:eu-west-1:111122223333:key/k because no policy allows the kms:Encrypt action"
        );
    }
}
