//! Secondary authorization with Cedar (issue 10; checklist AZ-1…AZ-5, H-4, LOG-5) through the
//! real server: TLS, SigV4 and SoftHSM2, in process ([`ProxyBuilder`]) and as the real
//! binary ([`Server`]: audit lines, `/metrics`, SIGHUP). The example policies of
//! `config/policies/` are the ones under test wherever one fits, so the shipped examples do
//! what their comments say.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::binary::{Server, run};
use support::bodies::{self, unb64};
use support::softhsm::{self, create_key};
use support::{
    AKID_A1, AKID_B, Ca, Client, ProxyBuilder, Reply, SECRET_A1, SECRET_B, Signer, eventually,
};
use xks_proxy::authz::{Action, Mode, Outcome, Policies, Query, evaluate};
use xks_proxy::hsm::KeyUsage;
use xks_proxy::xks::wire::RequestMetadata;

/// The account the examples name.
const OWNER: &str = "arn:aws:iam::111122223333:user/Owner";
/// An application role of that account, which `deny-decrypt-pattern.cedar` may not decrypt.
const APP_ROLE: &str = "arn:aws:iam::111122223333:role/app-billing";
/// The same role as an STS session, as a caller acting through the role may be named.
const APP_SESSION: &str = "arn:aws:sts::111122223333:assumed-role/app-billing/i-0abc";
/// `bodies`' default principal: another account.
const STRANGER: &str = "arn:aws:iam::123456789012:user/Alice";
/// The first endpoint `vpc-endpoint-only.cedar` allows.
const VPCE: &str = "vpce-0a1b2c3d4e5f67890";
/// The 403's errorMessage: generic, never a policy id (those are for the operator's log).
const DENIED: &str = "the request is not allowed by the key store's authorization policies";
const AAD: &[u8] = b"authz";

/// An example policy file of `config/policies/`.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/policies")
        .join(name)
}

/// `[table]` naming `policy` in `mode`.
fn authz(table: &str, policy: &Path, mode: &str) -> String {
    format!("[{table}]\npolicy_file = {policy:?}\nmode = \"{mode}\"\n")
}

/// `body` with these `requestMetadata` fields set.
fn with(body: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut json: Value = serde_json::from_slice(body).unwrap();
    for (field, value) in fields {
        json["requestMetadata"][*field] = (*value).into();
    }
    json.to_string().into_bytes()
}

fn key_path(prefix: &str, key: &str, operation: &str) -> String {
    format!("{prefix}/kms/xks/v1/keys/{key}/{operation}")
}

/// One key of one key store, called on behalf of whichever principal a call names.
struct Key<'a> {
    client: &'a Client,
    prefix: &'a str,
    key: &'a str,
}

impl Key<'_> {
    async fn encrypt(&self, fields: &[(&str, &str)]) -> Reply {
        let body = bodies::encrypt(b"authorized plaintext", Some(AAD), false);
        let path = key_path(self.prefix, self.key, "encrypt");
        self.client.post(&path, &with(&body, fields)).await
    }

    async fn decrypt(&self, sealed: &Value, fields: &[(&str, &str)]) -> Reply {
        let body = bodies::decrypt_from(sealed, Some(AAD)).to_string();
        let path = key_path(self.prefix, self.key, "decrypt");
        self.client
            .post(&path, &with(body.as_bytes(), fields))
            .await
    }

    async fn metadata(&self, fields: &[(&str, &str)]) -> Reply {
        let path = key_path(self.prefix, self.key, "metadata");
        self.client
            .post(&path, &with(&bodies::metadata(), fields))
            .await
    }

    /// A ciphertext of this key, made on behalf of `fields` (who must be allowed to encrypt).
    async fn sealed(&self, fields: &[(&str, &str)]) -> Value {
        self.encrypt(fields).await.assert_ok()
    }
}

/// Asserts the exact denial KMS gets: 403 AccessDeniedException with the generic message.
#[track_caller]
fn assert_denied(reply: &Reply) {
    reply.assert_error(403, "AccessDeniedException");
    assert_eq!(reply.json()["errorMessage"], DENIED);
}

/// Asserts a Decrypt answered with the plaintext [`Key::encrypt`] sealed.
#[track_caller]
fn assert_opened(reply: &Reply) {
    assert_eq!(
        unb64(&reply.assert_ok()["plaintext"]),
        b"authorized plaintext"
    );
}

/// Every `xks_authorization_decisions_total` series: `{labels}` → count.
fn decisions(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("xks_authorization_decisions_total"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// The series key of [`decisions`].
fn series(store: &str, action: &str, outcome: &str) -> String {
    format!(r#"{{key_store="{store}",action="{action}",outcome="{outcome}"}}"#)
}

// ---- The examples -----------------------------------------------------------------------

/// The metadata of a request from `principal`, through `vpce` if any.
fn metadata(principal: &str, vpce: Option<&str>) -> RequestMetadata {
    RequestMetadata {
        kms_request_id: "r-1".into(),
        kms_operation: "Decrypt".into(),
        aws_principal_arn: Some(principal.into()),
        kms_key_arn: Some("arn:aws:kms:eu-west-1:111122223333:key/k".into()),
        kms_via_service: None,
        aws_source_vpc: None,
        aws_source_vpce: vpce.map(str::to_owned),
    }
}

/// The decision and determining policies of `example` on one request.
fn decide(example_name: &str, action: Action, metadata: &RequestMetadata) -> (Outcome, String) {
    let policies = Policies::load(example(example_name), Mode::Enforce).unwrap();
    let verdict = evaluate(
        &policies,
        &Query {
            action,
            key_store: "tenant-a",
            key_id: "key-1",
            key_version: (action == Action::Decrypt).then_some(1),
            metadata,
            region: "eu-west-1",
            mtls_subject: None,
        },
    );
    (verdict.outcome, verdict.policies.join(","))
}

/// Every `.cedar` file of `config/policies/` validates strictly against the built-in schema,
/// names its policies with `@id`, and decides as its comments say.
#[test]
fn every_example_policy_validates_against_the_schema_and_decides_as_documented() {
    let mut names: Vec<String> = std::fs::read_dir(example(""))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".cedar"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "allow-all.cedar",
            "deny-decrypt-pattern.cedar",
            "single-account.cedar",
            "vpc-endpoint-only.cedar"
        ]
    );
    for name in &names {
        let policies = Policies::load(example(name), Mode::LogOnly)
            .unwrap_or_else(|errors| panic!("{name}: {errors:?}"));
        assert!(!policies.is_empty(), "{name}");
        let text = std::fs::read_to_string(example(name)).unwrap();
        let statements = text.matches("permit (").count() + text.matches("forbid (").count();
        assert_eq!(
            text.matches("@id(\"").count(),
            statements,
            "{name}: one @id each"
        );
        assert_eq!(policies.len(), statements, "{name}");
    }

    use Action::{Decrypt, Encrypt, GetKeyMetadata};
    use Outcome::{Allow, Deny};
    let allow = |id: &str| (Allow, id.to_owned());
    let default_deny = (Deny, String::new());
    let owner = metadata(OWNER, None);
    let stranger = metadata(STRANGER, Some(VPCE));
    assert_eq!(
        decide("allow-all.cedar", Decrypt, &stranger),
        allow("allow-all")
    );

    let one_account = allow("only-account-111122223333");
    assert_eq!(decide("single-account.cedar", Encrypt, &owner), one_account);
    assert_eq!(
        decide(
            "single-account.cedar",
            Decrypt,
            &metadata(APP_SESSION, None)
        ),
        one_account
    );
    assert_eq!(
        decide("single-account.cedar", Encrypt, &stranger),
        default_deny
    );
    // Not an ARN: no account attribute, so not that account.
    assert_eq!(
        decide(
            "single-account.cedar",
            Encrypt,
            &metadata("111122223333", None)
        ),
        default_deny
    );

    let vpce = "vpc-endpoint-only.cedar";
    assert_eq!(
        decide(vpce, GetKeyMetadata, &stranger),
        allow("via-vpc-endpoint")
    );
    let second = metadata(OWNER, Some("vpce-0fedcba9876543210"));
    assert_eq!(decide(vpce, Encrypt, &second), allow("via-vpc-endpoint"));
    assert_eq!(decide(vpce, Encrypt, &owner), default_deny);
    assert_eq!(
        decide(vpce, Encrypt, &metadata(OWNER, Some("vpce-other"))),
        default_deny
    );

    let pattern = "deny-decrypt-pattern.cedar";
    let forbidden = (Deny, "no-decrypt-for-app-roles".to_owned());
    assert_eq!(
        decide(pattern, Decrypt, &metadata(APP_ROLE, None)),
        forbidden
    );
    assert_eq!(
        decide(pattern, Decrypt, &metadata(APP_SESSION, None)),
        forbidden
    );
    assert_eq!(
        decide(pattern, Encrypt, &metadata(APP_ROLE, None)),
        allow("allow-all")
    );
    assert_eq!(decide(pattern, Decrypt, &owner), allow("allow-all"));
    let other_account = metadata("arn:aws:iam::444455556666:role/app-billing", None);
    assert_eq!(decide(pattern, Decrypt, &other_account), allow("allow-all"));
}

/// A config on the process's test token with `top` before the key store and `store` in it.
fn write_config(dir: &Path, ca: &Ca, top: &str, store: &str) -> PathBuf {
    let (chain, key) = ca.server().write(dir, ca, "server");
    let pin = dir.join("pin");
    std::fs::write(&pin, softhsm::USER_PIN).unwrap();
    let token = dir.join("reload-token");
    std::fs::write(&token, RELOAD_TOKEN).unwrap();
    let path = dir.join("xks-proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {chain:?}\n\
             private_key = {key:?}\n[hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\n\
             user_pin_file = {pin:?}\n[logging]\nlevel = \"info\"\n[admin]\n\
             listen = \"127.0.0.1:0\"\nreload_token_file = {token:?}\n{top}\n\
             [[key_stores]]\nname = \"tenant-a\"\npath_prefix = \"/tenant-a\"\n{store}\n\
             [[key_stores.credentials]]\naccess_key_id = \"{AKID_A1}\"\nsecret = \"{SECRET_A1}\"\n",
            softhsm::MODULE,
            softhsm::TOKEN_LABEL,
        ),
    )
    .unwrap();
    path
}

/// The bearer token of `POST /admin/reload` in these tests.
const RELOAD_TOKEN: &str = "authz-reload-token-0123456789abcdef";

fn check_config(config: &Path) -> std::process::Output {
    run(&["check-config", "--config", config.to_str().unwrap()])
}

/// `check-config` accepts each example, as the process-wide default and for one key store.
#[test]
fn check_config_accepts_every_example_policy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authz check CA");
    for name in [
        "allow-all.cedar",
        "deny-decrypt-pattern.cedar",
        "single-account.cedar",
        "vpc-endpoint-only.cedar",
    ] {
        for (top, store) in [
            (
                authz("authorization", &example(name), "enforce"),
                String::new(),
            ),
            (
                String::new(),
                authz("key_stores.authorization", &example(name), "log-only"),
            ),
        ] {
            let out = check_config(&write_config(dir.path(), &ca, &top, &store));
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A policy that reads an optional attribute without `has` (strict validation refuses it) on
/// line 6, and one with a syntax error: `check-config` exits non-zero and names the field, the
/// file, the line and the policy.
#[test]
fn check_config_rejects_a_malformed_policy_with_field_file_line_and_policy_id() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authz check CA");
    let unchecked = dir.path().join("unchecked.cedar");
    std::fs::write(&unchecked, UNCHECKED_VPCE).unwrap();
    let broken = dir.path().join("broken.cedar");
    std::fs::write(
        &broken,
        "@id(\"broken\")\npermit (principal, action, resource)\nwhen { true ",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &ca,
        &authz("authorization", &broken, "enforce"),
        &authz("key_stores.authorization", &unchecked, "enforce"),
    );
    let out = check_config(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("key_stores[0].authorization.policy_file"))
        .unwrap_or_else(|| panic!("no key store field in: {stderr}"));
    assert!(line.contains(unchecked.to_str().unwrap()), "{line}");
    assert!(line.contains("line 6, column "), "{line}");
    assert!(line.contains(r#"policy "vpce-without-has""#), "{line}");
    assert!(line.contains("awsSourceVpce"), "{line}");
    let line = stderr
        .lines()
        .find(|l| l.contains(" authorization.policy_file"))
        .unwrap_or_else(|| panic!("no default field in: {stderr}"));
    assert!(line.contains(broken.to_str().unwrap()), "{line}");
    assert!(line.contains("line 3, column "), "{line}");
    eprintln!("{stderr}");
}

/// A valid first policy, then one that reads `context.awsSourceVpce` without `has`, on line 6.
const UNCHECKED_VPCE: &str = r#"@id("fine")
permit (principal, action == XKS::Action::"GetKeyMetadata", resource);

@id("vpce-without-has")
permit (principal, action, resource)
when { context.awsSourceVpce == "vpce-0a1b2c3d4e5f67890" };
"#;

// ---- In process: decisions and metrics --------------------------------------------------

/// `single-account.cedar` on tenant-a: the account's principals get every operation, any
/// other principal (another account, or a value that is no ARN) gets exactly 403
/// AccessDeniedException for each, and tenant-b, which has no policy, is not evaluated.
#[tokio::test]
async fn az_2_only_the_allowed_account_uses_the_keys_others_get_403() {
    softhsm::isolate!();
    let key = create_key("authz-acct", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let proxy = ProxyBuilder {
        store_a_extra: authz(
            "key_stores.authorization",
            &example("single-account.cedar"),
            "enforce",
        ),
        ..ProxyBuilder::default()
    }
    .start()
    .await;
    let client = proxy.client();
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };
    let owner = [("awsPrincipalArn", OWNER)];
    let sealed = a.sealed(&owner).await;
    assert_opened(&a.decrypt(&sealed, &owner).await);
    assert_eq!(a.metadata(&owner).await.assert_ok()["keyStatus"], "ENABLED");

    for principal in [STRANGER, "111122223333"] {
        let stranger = [("awsPrincipalArn", principal)];
        assert_denied(&a.encrypt(&stranger).await);
        assert_denied(&a.decrypt(&sealed, &stranger).await);
        assert_denied(&a.metadata(&stranger).await);
    }

    let client_b = proxy.client().signer(Some(Signer::new(AKID_B, SECRET_B)));
    let b = Key {
        client: &client_b,
        prefix: "/tenant-b",
        key: &key,
    };
    let sealed_b = b.sealed(&[]).await;
    assert_opened(&b.decrypt(&sealed_b, &[]).await);

    let expected = BTreeMap::from([
        (series("tenant-a", "Encrypt", "allow"), 1),
        (series("tenant-a", "Decrypt", "allow"), 1),
        (series("tenant-a", "GetKeyMetadata", "allow"), 1),
        (series("tenant-a", "Encrypt", "deny"), 2),
        (series("tenant-a", "Decrypt", "deny"), 2),
        (series("tenant-a", "GetKeyMetadata", "deny"), 2),
    ]);
    assert_eq!(decisions(&proxy.metrics.render_text()), expected);
}

/// `vpc-endpoint-only.cedar`: a listed `awsSourceVpce` is allowed, another endpoint and a call
/// without one (the public KMS endpoint) are denied.
#[tokio::test]
async fn a_vpc_endpoint_condition_needs_a_listed_aws_source_vpce() {
    softhsm::isolate!();
    let key = create_key("authz-vpce", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let proxy = ProxyBuilder {
        store_a_extra: authz(
            "key_stores.authorization",
            &example("vpc-endpoint-only.cedar"),
            "enforce",
        ),
        ..ProxyBuilder::default()
    }
    .start()
    .await;
    let client = proxy.client();
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };
    let through = [("awsSourceVpce", VPCE), ("awsSourceVpc", "vpc-0123")];
    let sealed = a.sealed(&through).await;
    assert_opened(&a.decrypt(&sealed, &through).await);
    let second = [("awsSourceVpce", "vpce-0fedcba9876543210")];
    assert_opened(&a.decrypt(&sealed, &second).await);

    assert_denied(&a.encrypt(&[]).await);
    assert_denied(&a.decrypt(&sealed, &[]).await);
    assert_denied(&a.metadata(&[]).await);
    let elsewhere = [("awsSourceVpce", "vpce-0000000000000000f")];
    assert_denied(&a.encrypt(&elsewhere).await);
    assert_denied(&a.decrypt(&sealed, &elsewhere).await);
    // The VPC alone is not the endpoint.
    assert_denied(&a.encrypt(&[("awsSourceVpc", "vpc-0123")]).await);

    let counts = decisions(&proxy.metrics.render_text());
    assert_eq!(counts[&series("tenant-a", "Encrypt", "deny")], 3);
    assert_eq!(counts[&series("tenant-a", "Decrypt", "allow")], 2);
}

/// The process-wide `[authorization]` applies to every key store without its own; a store's
/// `[key_stores.authorization]` replaces both file and mode.
#[tokio::test]
async fn a_key_store_policy_overrides_the_process_wide_default() {
    softhsm::isolate!();
    let key = create_key("authz-override", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let proxy = ProxyBuilder {
        extra: authz("authorization", &example("single-account.cedar"), "enforce"),
        store_a_extra: authz(
            "key_stores.authorization",
            &example("deny-decrypt-pattern.cedar"),
            "log-only",
        ),
        ..ProxyBuilder::default()
    }
    .start()
    .await;
    let client_a = proxy.client();
    let a = Key {
        client: &client_a,
        prefix: "/tenant-a",
        key: &key,
    };
    let client_b = proxy.client().signer(Some(Signer::new(AKID_B, SECRET_B)));
    let b = Key {
        client: &client_b,
        prefix: "/tenant-b",
        key: &key,
    };
    let stranger = [("awsPrincipalArn", STRANGER)];
    let app = [("awsPrincipalArn", APP_ROLE)];

    // tenant-a: its own policy; the default's account restriction does not apply, and its
    // forbid only logs.
    let sealed = a.sealed(&stranger).await;
    assert_opened(&a.decrypt(&sealed, &stranger).await);
    assert_opened(&a.decrypt(&sealed, &app).await);
    // tenant-b: the default, enforced.
    assert_denied(&b.encrypt(&stranger).await);
    let sealed_b = b.sealed(&app).await;
    assert_opened(&b.decrypt(&sealed_b, &app).await);

    let expected = BTreeMap::from([
        (series("tenant-a", "Encrypt", "allow"), 1),
        (series("tenant-a", "Decrypt", "allow"), 1),
        (series("tenant-a", "Decrypt", "would_deny"), 1),
        (series("tenant-b", "Encrypt", "deny"), 1),
        (series("tenant-b", "Encrypt", "allow"), 1),
        (series("tenant-b", "Decrypt", "allow"), 1),
    ]);
    assert_eq!(decisions(&proxy.metrics.render_text()), expected);
}

// ---- The binary: audit lines, /metrics, reload ------------------------------------------

/// The binary on `config`, and a client of its tenant-a.
fn start(config: &Path, ca: &Ca) -> (Server, Client) {
    let server = Server::start(config);
    let client = Client::tls(server.addr, ca, None).signer(Some(Signer::new(AKID_A1, SECRET_A1)));
    (server, client)
}

async fn admin(server: &Server, method: &str, path: &str) -> Reply {
    let bearer = format!("Bearer {RELOAD_TOKEN}");
    Client::plaintext(server.admin_addr)
        .signer(None)
        .send(method, path, &[("authorization", &bearer)], b"")
        .await
}

/// The audit line of the request with `kms_request_id`, parsed.
fn audit_line(server: &Server, kms_request_id: &str) -> (String, Value) {
    let line = server.wait_for_log(&format!(r#""kms_request_id":"{kms_request_id}""#));
    let json = serde_json::from_str(&line).unwrap();
    (line, json)
}

/// A forbid on a principal pattern (`deny-decrypt-pattern.cedar`, enforced): the role's
/// Decrypt gets 403 and never reaches the HSM, and its audit line names the forbid (LOG-5);
/// its Encrypt and everyone else's Decrypt pass, naming the permit.
#[tokio::test]
async fn log_5_a_denial_names_the_forbid_in_the_audit_line() {
    softhsm::isolate!();
    let key = create_key("authz-deny", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authz deny CA");
    let policy = authz(
        "key_stores.authorization",
        &example("deny-decrypt-pattern.cedar"),
        "enforce",
    );
    let (server, client) = start(&write_config(dir.path(), &ca, "", &policy), &ca);
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };
    let app = |id| [("awsPrincipalArn", APP_ROLE), ("kmsRequestId", id)];

    let sealed = a.sealed(&app("authz-app-encrypt")).await;
    assert_denied(&a.decrypt(&sealed, &app("authz-app-decrypt")).await);
    let session = [
        ("awsPrincipalArn", APP_SESSION),
        ("kmsRequestId", "authz-session"),
    ];
    assert_denied(&a.decrypt(&sealed, &session).await);
    let owner = [("awsPrincipalArn", OWNER), ("kmsRequestId", "authz-owner")];
    assert_opened(&a.decrypt(&sealed, &owner).await);

    let (_, encrypt) = audit_line(&server, "authz-app-encrypt");
    assert_eq!(
        (
            &encrypt["authz_decision"],
            &encrypt["authz_policies"],
            &encrypt["authz_mode"]
        ),
        (&"allow".into(), &"allow-all".into(), &"enforce".into())
    );
    let (line, denied) = audit_line(&server, "authz-app-decrypt");
    eprintln!("denial audit line: {line}");
    for (field, value) in [
        ("operation", "Decrypt"),
        ("key_store", "tenant-a"),
        ("aws_principal_arn", APP_ROLE),
        ("error_name", "AccessDeniedException"),
        ("authz_decision", "deny"),
        ("authz_policies", "no-decrypt-for-app-roles"),
        ("authz_mode", "enforce"),
    ] {
        assert_eq!(denied[field], value, "{field} in {line}");
    }
    assert_eq!(denied["status"], 403, "{line}");
    assert!(
        denied.get("hsm_member").is_none(),
        "reached the HSM: {line}"
    );
    let (_, session) = audit_line(&server, "authz-session");
    assert_eq!(session["authz_policies"], "no-decrypt-for-app-roles");
    let (_, owner) = audit_line(&server, "authz-owner");
    assert_eq!(
        (&owner["authz_decision"], owner["status"].as_u64()),
        (&"allow".into(), Some(200))
    );
}

/// Log-only: the request the policy denies is served (and decrypts), the audit line says
/// `would_deny` with the policy, and the metric counts it as such.
#[tokio::test]
async fn log_only_serves_what_it_would_deny_and_logs_and_counts_it() {
    softhsm::isolate!();
    let key = create_key("authz-logonly", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authz log-only CA");
    let policy = authz(
        "authorization",
        &example("deny-decrypt-pattern.cedar"),
        "log-only",
    );
    let (server, client) = start(&write_config(dir.path(), &ca, &policy, ""), &ca);
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };
    let app = [
        ("awsPrincipalArn", APP_ROLE),
        ("kmsRequestId", "authz-would-deny"),
    ];

    let sealed = a.sealed(&[("awsPrincipalArn", APP_ROLE)]).await;
    assert_opened(&a.decrypt(&sealed, &app).await);

    let (line, served) = audit_line(&server, "authz-would-deny");
    eprintln!("log-only audit line: {line}");
    assert!(line.contains(r#""authz_decision":"would_deny""#), "{line}");
    assert_eq!(
        served["authz_policies"], "no-decrypt-for-app-roles",
        "{line}"
    );
    assert_eq!(served["authz_mode"], "log-only", "{line}");
    assert_eq!(served["status"], 200, "{line}");
    assert!(served.get("error_name").is_none(), "{line}");
    let metrics = admin(&server, "GET", "/metrics").await.text();
    let expected = BTreeMap::from([
        (series("tenant-a", "Encrypt", "allow"), 1),
        (series("tenant-a", "Decrypt", "would_deny"), 1),
    ]);
    assert_eq!(decisions(&metrics), expected, "{metrics}");
}

/// AZ-3, H-4: with policies that deny everything, GetHealthStatus still answers 200; it is
/// never evaluated (no authz fields in its audit line, no series for it), while a key
/// operation is denied.
#[tokio::test]
async fn az_3_get_health_status_is_never_evaluated_even_under_deny_all() {
    softhsm::isolate!();
    let key = create_key("authz-health", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authz health CA");
    let deny_all = dir.path().join("deny-all.cedar");
    std::fs::write(
        &deny_all,
        "@id(\"deny-all\")\nforbid (principal, action, resource);\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.cedar");
    std::fs::write(&empty, "// No policy: Cedar denies what nothing permits.\n").unwrap();
    let a_config = |policy: &Path| {
        write_config(
            dir.path(),
            &ca,
            "",
            &authz("key_stores.authorization", policy, "enforce"),
        )
    };
    let (server, client) = start(&a_config(&deny_all), &ca);
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };

    let health = client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await;
    assert_eq!(
        health.assert_ok()["ekmFleetDetails"][0]["healthStatus"],
        "ACTIVE"
    );
    assert_denied(&a.encrypt(&[("kmsRequestId", "authz-deny-all")]).await);
    let (line, audited) = audit_line(&server, "6f0a8a5e-health");
    assert_eq!(audited["operation"], "GetHealthStatus", "{line}");
    assert!(!line.contains("authz_"), "health was evaluated: {line}");
    let (_, denied) = audit_line(&server, "authz-deny-all");
    assert_eq!(denied["authz_policies"], "deny-all");

    // An empty file (default deny, no policy named) as well.
    a_config(&empty);
    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    assert_denied(&a.encrypt(&[("kmsRequestId", "authz-empty")]).await);
    let (_, denied) = audit_line(&server, "authz-empty");
    // A default deny: no policy decided it, so none is named.
    assert_eq!(
        (&denied["authz_decision"], &denied["authz_policies"]),
        (&"deny".into(), &Value::Null)
    );

    let metrics = admin(&server, "GET", "/metrics").await.text();
    let expected = BTreeMap::from([(series("tenant-a", "Encrypt", "deny"), 2)]);
    assert_eq!(decisions(&metrics), expected, "{metrics}");
    assert!(
        metrics.contains(
            r#"xks_requests_total{key_store="tenant-a",operation="GetHealthStatus",status="200",error_name=""} 2"#
        ),
        "{metrics}"
    );
}

/// Writes `text` to `path` atomically (a rename), as editors and config management do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What one load worker saw.
#[derive(Default)]
struct Seen {
    round_trips: usize,
    failures: Vec<String>,
}

/// Round trips per load worker, at most (the load stops once the reloads are done).
const LOAD_LIMIT: usize = 2_000;
const WORKERS: usize = 4;

/// Encrypt-then-decrypt round trips as [`OWNER`] until `stop`, at most [`LOAD_LIMIT`].
async fn load(client: Client, key: String, stop: Arc<AtomicBool>) -> Seen {
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };
    let owner = [("awsPrincipalArn", OWNER)];
    let mut seen = Seen::default();
    for _ in 0..LOAD_LIMIT {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sealed = a.encrypt(&owner).await;
        if sealed.status != 200 {
            seen.failures
                .push(format!("encrypt {}: {}", sealed.status, sealed.text()));
            continue;
        }
        let opened = a.decrypt(&sealed.json(), &owner).await;
        if opened.status != 200 || unb64(&opened.json()["plaintext"]) != b"authorized plaintext" {
            seen.failures
                .push(format!("decrypt {}: {}", opened.status, opened.text()));
        }
        seen.round_trips += 1;
    }
    seen
}

/// The policy file swapped between `allow-all.cedar` and `single-account.cedar` (both allow
/// the load's principal) with SIGHUP, six times, while four workers encrypt and decrypt: no
/// request fails, and each swap takes effect (a stranger is denied exactly while the
/// single-account policy is in force).
#[tokio::test]
async fn policy_reload_under_load_fails_no_request() {
    softhsm::isolate!();
    let key = create_key("authz-reload", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authz reload CA");
    let policy = dir.path().join("policy.cedar");
    let allow_all = std::fs::read_to_string(example("allow-all.cedar")).unwrap();
    let one_account = std::fs::read_to_string(example("single-account.cedar")).unwrap();
    replace(&policy, &allow_all);
    let config = write_config(
        dir.path(),
        &ca,
        &authz("authorization", &policy, "enforce"),
        "",
    );
    let (server, client) = start(&config, &ca);
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(load(client.clone(), key.clone(), Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..6 {
        let restrict = round % 2 == 0;
        replace(&policy, if restrict { &one_account } else { &allow_all });
        server.hangup();
        server.wait_for_log("configuration reloaded");
        let want = if restrict { 403 } else { 200 };
        eventually("the swapped policy decides", || async {
            a.encrypt(&[("awsPrincipalArn", STRANGER)]).await.status == want
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);

    let mut round_trips = 0;
    for worker in workers {
        let seen = worker.await.unwrap();
        assert!(seen.failures.is_empty(), "{:?}", seen.failures);
        round_trips += seen.round_trips;
    }
    assert!(
        round_trips >= WORKERS,
        "the load ran: {round_trips} round trips"
    );
    let metrics = admin(&server, "GET", "/metrics").await.text();
    let allowed = decisions(&metrics)[&series("tenant-a", "Decrypt", "allow")];
    assert!(allowed >= round_trips as u64, "{metrics}");
    eprintln!("{round_trips} round trips across 6 policy reloads, none failed");
}

/// A broken policy file is rejected by SIGHUP and by `POST /admin/reload`; the old policies
/// stay in force (what they deny is still denied, what they allow still allowed), and a
/// fixed file is taken afterwards.
#[tokio::test]
async fn a_malformed_policy_is_rejected_by_reload_and_the_old_policies_stay() {
    softhsm::isolate!();
    let key = create_key("authz-bad-reload", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authz bad reload CA");
    let policy = dir.path().join("policy.cedar");
    replace(
        &policy,
        &std::fs::read_to_string(example("single-account.cedar")).unwrap(),
    );
    let config = write_config(
        dir.path(),
        &ca,
        "",
        &authz("key_stores.authorization", &policy, "enforce"),
    );
    let (server, client) = start(&config, &ca);
    let a = Key {
        client: &client,
        prefix: "/tenant-a",
        key: &key,
    };
    let owner = [("awsPrincipalArn", OWNER)];
    let stranger = [("awsPrincipalArn", STRANGER)];
    let old_policies_hold = || async {
        let sealed = a.sealed(&owner).await;
        assert_opened(&a.decrypt(&sealed, &owner).await);
        assert_denied(&a.encrypt(&stranger).await);
        assert_denied(&a.decrypt(&sealed, &stranger).await);
    };
    old_policies_hold().await;

    replace(&policy, UNCHECKED_VPCE);
    server.hangup();
    let line = server.wait_for_log("configuration reload rejected");
    for needle in [
        "key_stores[0].authorization.policy_file",
        "line 6",
        "vpce-without-has",
    ] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }
    old_policies_hold().await;

    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["result"], "rejected");
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("vpce-without-has")
    );
    old_policies_hold().await;

    replace(
        &policy,
        &std::fs::read_to_string(example("allow-all.cedar")).unwrap(),
    );
    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    a.encrypt(&stranger).await.assert_ok();
}
