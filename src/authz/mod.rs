//! Secondary authorization with Cedar (checklist AZ-1…AZ-3, LOG-5; README "Authorization").
//!
//! After SigV4 and before the HSM, an Encrypt, Decrypt or GetKeyMetadata request becomes one
//! Cedar request: the AWS principal KMS acted for, the action, the external key in its key
//! store, and a context from `requestMetadata` (schema: `config/policies/xks.cedarschema`,
//! compiled in). GetHealthStatus is never evaluated (AZ-3, H-4). Policy files are parsed and
//! validated against the schema when the configuration loads (`load.rs`), so a running proxy
//! only ever holds valid policy sets; a reload with a bad file keeps the old ones.
//!
//! Evaluation builds two small entities per request and never re-parses policies; a decision
//! taken once is kept for the same inputs ([`evaluate`]). Cedar is deny-overrides and
//! default-deny, and every decision names the policies that determined it, which the audit
//! line carries (LOG-5). An evaluation error denies (fail closed).

mod load;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression, Schema,
};

pub use load::{PolicyError, load_policy_file};

use crate::xks::wire::RequestMetadata;

/// The Cedar schema every policy is validated against.
pub const SCHEMA: &str = include_str!("../../config/policies/xks.cedarschema");

/// The parsed [`SCHEMA`]. It is part of the binary and tested, so parsing cannot fail at
/// runtime unless the build is broken; [`schema`] reports that instead of panicking.
static PARSED_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| format!("the built-in Cedar schema does not parse: {e}"))
});

/// The built-in schema.
pub(crate) fn schema() -> Result<&'static Schema, PolicyError> {
    PARSED_SCHEMA
        .as_ref()
        .map_err(|e| PolicyError::schema(e.clone()))
}

/// What happens to a request the policies deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denied requests get 403 `AccessDeniedException`.
    Enforce,
    /// Denied requests are logged and counted as `would_deny`, and served: for rolling out a
    /// policy safely.
    LogOnly,
}

impl Mode {
    /// The configuration and audit spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::LogOnly => "log-only",
        }
    }
}

/// A validated policy file and what to do with its denials.
#[derive(Clone)]
pub struct Policies {
    /// Where the policies came from, for logs.
    pub path: PathBuf,
    /// Enforce or only log.
    pub mode: Mode,
    set: Arc<PolicySet>,
    /// Decisions already taken by this set (a reload makes a new set, so a new cache).
    decisions: Arc<DecisionCache>,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("policies", &self.set.policies().count())
            .finish()
    }
}

impl PartialEq for Policies {
    /// Same file, mode and policy text: a reload that changes nothing compares equal.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.mode == other.mode
            && self.set.to_string() == other.set.to_string()
    }
}

impl Policies {
    /// Policies from `path`, parsed and validated against the schema.
    pub fn load(path: PathBuf, mode: Mode) -> Result<Self, Vec<PolicyError>> {
        let set = load_policy_file(&path)?;
        Ok(Self::new(path, mode, set))
    }

    fn new(path: PathBuf, mode: Mode, set: PolicySet) -> Self {
        Self {
            path,
            mode,
            set: Arc::new(set),
            decisions: Arc::default(),
        }
    }

    /// How many policies the file holds.
    pub fn len(&self) -> usize {
        self.set.policies().count()
    }

    /// Whether the file holds no policy (everything is denied: Cedar denies by default).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The three authorized XKS operations (GetHealthStatus never is, AZ-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// XKS Encrypt.
    Encrypt,
    /// XKS Decrypt.
    Decrypt,
    /// XKS GetKeyMetadata.
    GetKeyMetadata,
}

impl Action {
    /// The Cedar action id, and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "Encrypt",
            Self::Decrypt => "Decrypt",
            Self::GetKeyMetadata => "GetKeyMetadata",
        }
    }
}

/// Everything a decision depends on, borrowed from the request being served.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The XKS operation.
    pub action: Action,
    /// The key store's name.
    pub key_store: &'a str,
    /// The external key id from the URI.
    pub key_id: &'a str,
    /// The key version a Decrypt names.
    pub key_version: Option<u32>,
    /// The request's `requestMetadata`.
    pub metadata: &'a RequestMetadata,
    /// The SigV4 region it was signed for.
    pub region: &'a str,
    /// The mTLS client certificate's subject, when there is one.
    pub mtls_subject: Option<&'a str>,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the policies decided (a failed evaluation counts as a denial).
    pub outcome: Outcome,
    /// The policies that determined it: the permits of an allow, the forbids of a denial
    /// (empty for a default deny). Their `@id` annotation where they have one (LOG-5).
    pub policies: Arc<[String]>,
    /// Why evaluation failed, when it did (never contains request data beyond ids).
    pub errors: Vec<String>,
    /// The mode the decision was taken in.
    pub mode: Mode,
}

/// A decision as the audit line and the metric name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Permitted.
    Allow,
    /// Denied, and refused (enforce mode).
    Deny,
    /// Denied, but served (log-only mode).
    WouldDeny,
}

impl Outcome {
    /// `allow`, `deny` or `would_deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would_deny",
        }
    }
}

impl Verdict {
    /// Whether the request may go on to the HSM.
    pub fn permits(&self) -> bool {
        self.outcome != Outcome::Deny
    }
}

/// Evaluates `query` against `policies`: from the decision cache when the same inputs were
/// decided before, else with Cedar.
///
/// Cedar is deterministic: a decision depends only on the policies and on the request's
/// principal, action, resource and context, and the schema gives policies nothing else to read
/// (no request id, no clock). So a decision taken once for the same inputs is the decision,
/// and KMS traffic repeats the same few callers, keys and operations all day. Interpreting a
/// few dozen statements costs a hundred microseconds or more on a small machine
/// (`cargo bench --bench authz`); a cached decision costs one hash of the inputs.
pub fn evaluate(policies: &Policies, query: &Query<'_>) -> Verdict {
    let key = cache_key(query);
    let (outcome_if_denied, mode) = (deny_outcome(policies.mode), policies.mode);
    if let Some(decided) = policies.decisions.get(&key) {
        return decided.verdict(outcome_if_denied, mode);
    }
    let (decision, determining, errors) = match decide(&policies.set, query) {
        Ok(response) => response,
        Err(error) => (Decision::Deny, Vec::new(), vec![error]),
    };
    let decided = Decided {
        allowed: decision == Decision::Allow && errors.is_empty(),
        policies: determining.into(),
    };
    // A failed evaluation is not a decision worth keeping: it is logged every time.
    if errors.is_empty() {
        policies.decisions.insert(key, decided.clone());
    }
    Verdict {
        errors,
        ..decided.verdict(outcome_if_denied, mode)
    }
}

/// What a denial becomes in `mode`.
fn deny_outcome(mode: Mode) -> Outcome {
    match mode {
        Mode::Enforce => Outcome::Deny,
        Mode::LogOnly => Outcome::WouldDeny,
    }
}

/// A cached decision.
#[derive(Debug, Clone)]
struct Decided {
    allowed: bool,
    policies: Arc<[String]>,
}

impl Decided {
    fn verdict(&self, if_denied: Outcome, mode: Mode) -> Verdict {
        Verdict {
            outcome: if self.allowed {
                Outcome::Allow
            } else {
                if_denied
            },
            policies: Arc::clone(&self.policies),
            errors: Vec::new(),
            mode,
        }
    }
}

/// Most decisions one policy set keeps. Past it the cache starts over: simple, bounded, and a
/// caller inventing new inputs (it needs a valid SigV4 credential) only costs the evaluations
/// it would have cost without a cache.
const CACHE_CAPACITY: usize = 4096;

/// Decisions by their inputs.
#[derive(Debug, Default)]
struct DecisionCache {
    map: parking_lot::Mutex<HashMap<Box<[u8]>, Decided>>,
}

impl DecisionCache {
    fn get(&self, key: &[u8]) -> Option<Decided> {
        self.map.lock().get(key).cloned()
    }

    fn insert(&self, key: Vec<u8>, decided: Decided) {
        let mut map = self.map.lock();
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert(key.into_boxed_slice(), decided);
    }
}

/// Every input a policy can read, each length-prefixed (absent and empty differ), so two
/// requests share a key only if Cedar would see the same request.
fn cache_key(query: &Query<'_>) -> Vec<u8> {
    let metadata = query.metadata;
    let fields = [
        Some(query.action.as_str()),
        Some(query.key_store),
        Some(query.key_id),
        metadata.aws_principal_arn.as_deref(),
        Some(metadata.kms_operation.as_str()),
        metadata.kms_key_arn.as_deref(),
        metadata.kms_via_service.as_deref(),
        metadata.aws_source_vpc.as_deref(),
        metadata.aws_source_vpce.as_deref(),
        Some(query.region),
        query.mtls_subject,
    ];
    let mut key = Vec::with_capacity(256);
    for field in fields {
        match field {
            Some(value) => {
                key.push(1);
                key.extend_from_slice(&(value.len() as u64).to_be_bytes());
                key.extend_from_slice(value.as_bytes());
            }
            None => key.push(0),
        }
    }
    match query.key_version {
        Some(version) => {
            key.push(1);
            key.extend_from_slice(&version.to_be_bytes());
        }
        None => key.push(0),
    }
    key
}

/// Runs Cedar: the decision, the determining policy ids, and the evaluation errors.
fn decide(
    set: &PolicySet,
    query: &Query<'_>,
) -> Result<(Decision, Vec<String>, Vec<String>), String> {
    let principal = uid(
        &PRINCIPAL_TYPE,
        query
            .metadata
            .aws_principal_arn
            .as_deref()
            .unwrap_or_default(),
    );
    let resource = uid(&KEY_TYPE, &format!("{}/{}", query.key_store, query.key_id));
    let action = uid(&ACTION_TYPE, query.action.as_str());
    let entities = entities(query, &principal, &resource)?;
    let context = context(query)?;
    // The request is built by this module to the schema's shape; validating it against the
    // schema again per request would only cost time.
    let request = Request::new(principal, action, resource, context, None)
        .map_err(|e| format!("request: {e}"))?;
    let response = AUTHORIZER.is_authorized(&request, set, &entities);
    let diagnostics = response.diagnostics();
    let determining = diagnostics
        .reason()
        .map(|id| policy_name(set, id))
        .collect();
    let errors = diagnostics.errors().map(|e| e.to_string()).collect();
    Ok((response.decision(), determining, errors))
}

/// A policy's `@id` annotation, else the id Cedar gave it (`policy0`, ...).
fn policy_name(set: &PolicySet, id: &cedar_policy::PolicyId) -> String {
    set.annotation(id, "id")
        .map_or_else(|| id.to_string(), str::to_owned)
}

static AUTHORIZER: LazyLock<Authorizer> = LazyLock::new(Authorizer::new);

/// Entity type names, parsed once.
static PRINCIPAL_TYPE: LazyLock<EntityTypeName> = LazyLock::new(|| type_name("XKS::AwsPrincipal"));
static KEY_TYPE: LazyLock<EntityTypeName> = LazyLock::new(|| type_name("XKS::ExternalKey"));
static ACTION_TYPE: LazyLock<EntityTypeName> = LazyLock::new(|| type_name("XKS::Action"));

/// A constant, valid type name (tested: every one of them parses).
fn type_name(name: &str) -> EntityTypeName {
    #[allow(clippy::expect_used)]
    name.parse().expect("a constant Cedar type name")
}

fn uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

/// The principal and the key, with their attributes.
fn entities(
    query: &Query<'_>,
    principal: &EntityUid,
    resource: &EntityUid,
) -> Result<Entities, String> {
    let arn = query
        .metadata
        .aws_principal_arn
        .as_deref()
        .unwrap_or_default();
    let mut principal_attrs = HashMap::from([("arn".to_owned(), string(arn))]);
    if let Some(account) = account_of(arn) {
        principal_attrs.insert("account".to_owned(), string(account));
    }
    let mut key_attrs = HashMap::from([
        ("keyStore".to_owned(), string(query.key_store)),
        ("keyId".to_owned(), string(query.key_id)),
    ]);
    if let Some(version) = query.key_version {
        key_attrs.insert(
            "keyVersion".to_owned(),
            RestrictedExpression::new_long(i64::from(version)),
        );
    }
    let principal = Entity::new(principal.clone(), principal_attrs, HashSet::new())
        .map_err(|e| format!("principal: {e}"))?;
    let key = Entity::new(resource.clone(), key_attrs, HashSet::new())
        .map_err(|e| format!("resource: {e}"))?;
    Entities::from_entities([principal, key], None).map_err(|e| format!("entities: {e}"))
}

/// The context record; optional fields only when the request has them.
fn context(query: &Query<'_>) -> Result<Context, String> {
    let metadata = query.metadata;
    let mut pairs = vec![
        ("kmsOperation".to_owned(), string(&metadata.kms_operation)),
        ("region".to_owned(), string(query.region)),
        ("keyStore".to_owned(), string(query.key_store)),
    ];
    let optional = [
        ("kmsKeyArn", metadata.kms_key_arn.as_deref()),
        ("kmsViaService", metadata.kms_via_service.as_deref()),
        ("awsSourceVpc", metadata.aws_source_vpc.as_deref()),
        ("awsSourceVpce", metadata.aws_source_vpce.as_deref()),
        ("mtlsClientSubject", query.mtls_subject),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            pairs.push((name.to_owned(), string(value)));
        }
    }
    Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))
}

/// The account id of an ARN (`arn:partition:service:region:account:resource`), when the value
/// is one and names a 12-digit account; anything else is an opaque principal.
pub fn account_of(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some(_service), Some(_region), Some(account), Some(_)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

#[cfg(test)]
mod tests;
