//! Policy loading and evaluation on the built-in schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::load::parse_policies;
use super::*;

fn policies(text: &str, mode: Mode) -> Policies {
    Policies::new(
        PathBuf::from("test.cedar"),
        mode,
        parse_policies(text).unwrap(),
    )
}

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

fn query<'a>(action: Action, metadata: &'a RequestMetadata) -> Query<'a> {
    Query {
        action,
        key_store: "tenant-a",
        key_id: "key-1",
        key_version: (action == Action::Decrypt).then_some(2),
        metadata,
        region: "eu-west-1",
        mtls_subject: None,
    }
}

const ALICE: &str = "arn:aws:iam::111122223333:role/app-alice";
const MALLORY: &str = "arn:aws:iam::444455556666:role/app-mallory";

#[test]
fn the_built_in_schema_parses() {
    schema().unwrap();
    for name in [&*PRINCIPAL_TYPE, &*KEY_TYPE, &*ACTION_TYPE] {
        assert!(name.to_string().starts_with("XKS::"));
    }
}

#[test]
fn one_account_only_names_the_determining_policy() {
    let p = policies(
        r#"@id("account-a")
permit (principal, action, resource) when { principal has account && principal.account == "111122223333" };"#,
        Mode::Enforce,
    );
    let alice = metadata(ALICE, None);
    let verdict = evaluate(&p, &query(Action::Encrypt, &alice));
    assert_eq!(verdict.outcome, Outcome::Allow);
    assert_eq!(*verdict.policies, ["account-a".to_owned()]);
    let mallory = metadata(MALLORY, None);
    let verdict = evaluate(&p, &query(Action::Encrypt, &mallory));
    assert_eq!(verdict.outcome, Outcome::Deny);
    assert!(
        verdict.policies.is_empty(),
        "a default deny names no policy"
    );
    assert!(!verdict.permits());
}

#[test]
fn forbid_overrides_and_log_only_serves_what_it_would_deny() {
    let text = r#"@id("all") permit (principal, action, resource);
@id("no-app-decrypt")
forbid (principal, action == XKS::Action::"Decrypt", resource)
when { principal.arn like "arn:aws:iam::111122223333:role/app-*" };"#;
    let alice = metadata(ALICE, None);
    for (mode, outcome) in [
        (Mode::Enforce, Outcome::Deny),
        (Mode::LogOnly, Outcome::WouldDeny),
    ] {
        let verdict = evaluate(&policies(text, mode), &query(Action::Decrypt, &alice));
        assert_eq!(
            (verdict.outcome, verdict.policies.clone()),
            (outcome, vec!["no-app-decrypt".to_owned()].into())
        );
        assert_eq!(verdict.permits(), mode == Mode::LogOnly);
    }
    let verdict = evaluate(
        &policies(text, Mode::Enforce),
        &query(Action::Encrypt, &alice),
    );
    assert_eq!(verdict.outcome, Outcome::Allow);
}

#[test]
fn optional_context_needs_has_and_key_versions_are_longs() {
    let text = r#"permit (principal, action, resource)
when { context has awsSourceVpce && context.awsSourceVpce == "vpce-1" && context.region == "eu-west-1" };
permit (principal, action == XKS::Action::"Decrypt", resource)
when { resource has keyVersion && resource.keyVersion >= 2 && context.kmsOperation == "Decrypt" };"#;
    let p = policies(text, Mode::Enforce);
    let through_vpce = metadata(MALLORY, Some("vpce-1"));
    assert_eq!(
        evaluate(&p, &query(Action::Encrypt, &through_vpce)).outcome,
        Outcome::Allow
    );
    let direct = metadata(MALLORY, None);
    assert_eq!(
        evaluate(&p, &query(Action::Encrypt, &direct)).outcome,
        Outcome::Deny
    );
    assert_eq!(
        evaluate(&p, &query(Action::Decrypt, &direct)).outcome,
        Outcome::Allow
    );
}

#[test]
fn problems_are_reported_with_line_and_policy() {
    // Reading an optional attribute without `has` fails strict validation.
    let errors = parse_policies(
        "@id(\"ok\") permit (principal, action, resource);\n\n@id(\"vpce\")\npermit (principal, action, resource)\n  when { context.awsSourceVpce == \"v\" };",
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].policy.as_deref(), Some("vpce"));
    assert_eq!(
        errors[0].location.map(|(line, _)| line),
        Some(5),
        "{}",
        errors[0]
    );
    // A syntax error.
    let errors = parse_policies("permit (principal, action, resource)\nwhen { true ").unwrap_err();
    assert!(errors[0].location.is_some(), "{}", errors[0]);
    // Unknown entity types and attributes.
    let errors =
        parse_policies("permit (principal == User::\"x\", action, resource);").unwrap_err();
    assert!(!errors.is_empty());
    let errors =
        parse_policies("permit (principal, action, resource) when { principal.name == \"x\" };")
            .unwrap_err();
    assert!(errors[0].to_string().contains("name"), "{}", errors[0]);
    // Duplicate ids and templates.
    let errors = parse_policies("@id(\"a\") permit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);").unwrap_err();
    assert_eq!(errors[0].message, "two policies have this @id");
    assert!(parse_policies("permit (principal == ?principal, action, resource);").is_err());
}

#[test]
fn an_empty_file_denies_everything() {
    let p = policies("", Mode::Enforce);
    assert!(p.is_empty());
    let alice = metadata(ALICE, None);
    assert_eq!(
        evaluate(&p, &query(Action::GetKeyMetadata, &alice)).outcome,
        Outcome::Deny
    );
}

#[test]
fn account_ids_come_only_from_arns_that_have_one() {
    assert_eq!(account_of(ALICE), Some("111122223333"));
    assert_eq!(
        account_of("arn:aws:sts::111122223333:assumed-role/r/s"),
        Some("111122223333")
    );
    assert_eq!(account_of("arn:aws:iam::aws:policy/x"), None);
    assert_eq!(account_of("111122223333"), None);
    assert_eq!(account_of("arn:aws:iam::1234:root"), None);
    assert_eq!(account_of("arn:aws:s3:::bucket"), None);
}

#[test]
fn a_cached_decision_is_the_decision_for_the_same_inputs_only() {
    let text = r#"@id("vpce") permit (principal, action, resource)
when { context has awsSourceVpce && context.awsSourceVpce == "vpce-1" };"#;
    let p = policies(text, Mode::Enforce);
    let through = metadata(ALICE, Some("vpce-1"));
    let other = metadata(ALICE, Some("vpce-2"));
    let none = metadata(ALICE, None);
    for _ in 0..3 {
        assert_eq!(
            evaluate(&p, &query(Action::Encrypt, &through)).outcome,
            Outcome::Allow
        );
        assert_eq!(
            evaluate(&p, &query(Action::Encrypt, &other)).outcome,
            Outcome::Deny
        );
        assert_eq!(
            evaluate(&p, &query(Action::Encrypt, &none)).outcome,
            Outcome::Deny
        );
    }
    assert_eq!(p.decisions.map.lock().len(), 3);
    // An absent field and an empty one are different inputs.
    let empty = metadata(ALICE, Some(""));
    assert_ne!(
        cache_key(&query(Action::Encrypt, &none)),
        cache_key(&query(Action::Encrypt, &empty))
    );
    // The same set in log-only mode (a reload) starts with an empty cache and its own outcome.
    let log_only = policies(text, Mode::LogOnly);
    assert_eq!(
        evaluate(&log_only, &query(Action::Encrypt, &other)).outcome,
        Outcome::WouldDeny
    );
    // The request id is not an input: it does not split the cache.
    let mut again = through.clone();
    again.kms_request_id = "r-2".into();
    assert_eq!(
        cache_key(&query(Action::Encrypt, &through)),
        cache_key(&query(Action::Encrypt, &again))
    );
}

#[test]
fn the_cache_is_bounded() {
    let p = policies("permit (principal, action, resource);", Mode::Enforce);
    for n in 0..(CACHE_CAPACITY + 10) {
        let m = metadata(&format!("arn:aws:iam::111122223333:user/u{n}"), None);
        assert_eq!(
            evaluate(&p, &query(Action::Encrypt, &m)).outcome,
            Outcome::Allow
        );
        assert!(p.decisions.map.lock().len() <= CACHE_CAPACITY);
    }
}
