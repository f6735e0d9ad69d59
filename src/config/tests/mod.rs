//! Configuration loading tests: every rule names its field (CFG, AU-14, URI-2, H-15).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Write;

use secrecy::ExposeSecret;

use super::load::load_with_env;
use super::*;

const SECRET: &str = "GfHQzWbmSw4uRGZqKo5nhQKE+ILlcOt7VEqNdWCtuLY=";

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for name in ["module.so", "chain.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn valid_toml(&self) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:8443"
[server.tls]
certificate_chain = "{chain}"
private_key = "{key}"
[hsm]
module = "{module}"
token_label = "xks"
user_pin = "1234"
[[key_stores]]
path_prefix = "/tenant-a"
[[key_stores.credentials]]
access_key_id = "AKIAI2SFODNN7EXAMPLE"
secret = "{SECRET}"
"#,
            chain = self.path("chain.pem"),
            key = self.path("key.pem"),
            module = self.path("module.so"),
        )
    }
}

fn fields(err: ConfigErrors) -> Vec<String> {
    err.0.into_iter().map(|e| e.field).collect()
}

#[test]
fn a_minimal_config_gets_safe_defaults() {
    let files = Files::new();
    let s = load_from_str(&files.valid_toml()).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:8443");
    assert!(matches!(
        s.server.transport,
        Transport::Tls(TlsSettings {
            client_auth: ClientAuth::Disabled,
            ..
        })
    ));
    assert_eq!(s.server.request_timeout.as_millis(), 200);
    assert_eq!(s.limits.max_body_bytes, 128 * 1024);
    assert_eq!(s.hsm.primary().token, TokenSelector::Label("xks".into()));
    assert_eq!(s.hsm.primary().user_pin.expose_secret(), "1234");
    assert_eq!(s.health.cache_ttl.as_secs(), 30);
    assert_eq!(s.key_stores.len(), 1);
    assert_eq!(s.key_stores[0].name, "tenant-a");
    assert_eq!(s.key_stores[0].prefix.uri_path(), "/tenant-a/kms/xks/v1");
    assert!(s.key_stores[0].allowed_regions.is_none());
    assert_eq!(s.logging.format, LogFormat::Json);
}

#[test]
fn every_error_is_reported_at_once_with_its_field() {
    let files = Files::new();
    let toml = format!(
        r#"
[server]
listen = "localhost"
plaintext_behind_load_balancer = false
request_timeout_ms = 0
[limits]
max_body_bytes = 1000
max_aad_bytes = 70000
[hsm]
module = "/nonexistent/module.so"
token_label = "a"
token_serial = "b"
sessions = 0
[health]
cache_ttl_seconds = 61
[logging]
format = "xml"
[[key_stores]]
path_prefix = "tenant/"
allowed_keys = ["ok", "not/ok", "xks-proxy-health-check"]
[[key_stores.credentials]]
access_key_id = "short"
secret = "tooshort"
[[key_stores]]
path_prefix = "/b"
[[key_stores.credentials]]
access_key_id = "AKIAI2SFODNN7EXAMPLE"
secret_file = "{missing}"
"#,
        missing = files.path("missing-secret")
    );
    let got = fields(load_from_str(&toml).unwrap_err());
    for want in [
        "server.listen",
        "server.tls",
        "server.request_timeout_ms",
        "limits.max_body_bytes",
        "limits.max_aad_bytes",
        "hsm.module",
        "hsm.token_label",
        "hsm.user_pin",
        "hsm.sessions",
        "health.cache_ttl_seconds",
        "logging.format",
        "key_stores[0].path_prefix",
        "key_stores[0].allowed_keys[1]",
        "key_stores[0].credentials[0].access_key_id",
        "key_stores[0].credentials[0].secret",
        "key_stores[1].credentials[0].secret_file",
    ] {
        assert!(
            got.iter().any(|f| f == want),
            "missing error for {want}; got {got:?}"
        );
    }
}

#[test]
fn cfg_unknown_fields_are_rejected_by_name() {
    let files = Files::new();
    let toml = files.valid_toml().replace("[hsm]", "[hsm]\nsesions = 4");
    let err = load_from_str(&toml).unwrap_err();
    assert!(err.to_string().contains("sesions"), "{err}");
}

#[test]
fn au_13_a_credential_belongs_to_one_store_and_prefixes_are_unique() {
    let files = Files::new();
    let mut toml = files.valid_toml();
    toml.push_str(&format!(
        "[[key_stores]]\npath_prefix = \"/tenant-a\"\n[[key_stores.credentials]]\naccess_key_id = \"AKIAI2SFODNN7EXAMPLE\"\nsecret = \"{SECRET}\"\n"
    ));
    let got = fields(load_from_str(&toml).unwrap_err());
    assert!(
        got.contains(&"key_stores[1].path_prefix".to_owned()),
        "{got:?}"
    );
    assert!(
        got.contains(&"key_stores[1].credentials[0].access_key_id".to_owned()),
        "{got:?}"
    );
}

#[test]
fn mt_2_client_auth_needs_a_ca_and_names() {
    let files = Files::new();
    let toml = files.valid_toml().replace(
        "[hsm]",
        &format!(
            "[server.tls.client_auth]\nca_bundle = \"{}\"\nallowed_subject_names = [\"cks.kms.eu-west-1.amazonaws.com\"]\n[hsm]",
            files.path("ca.pem")
        ),
    );
    let s = load_from_str(&toml).unwrap();
    let Transport::Tls(TlsSettings {
        client_auth:
            ClientAuth::Required {
                allowed_subject_names,
                ..
            },
        ..
    }) = s.server.transport
    else {
        panic!("mTLS not configured");
    };
    assert_eq!(
        allowed_subject_names[0].as_str(),
        "cks.kms.eu-west-1.amazonaws.com"
    );

    let empty = toml.replace("[\"cks.kms.eu-west-1.amazonaws.com\"]", "[]");
    assert!(
        fields(load_from_str(&empty).unwrap_err())
            .contains(&"server.tls.client_auth.allowed_subject_names".to_owned())
    );
}

#[test]
fn environment_overrides_file_values_and_supplies_the_pin() {
    let files = Files::new();
    let toml = files.valid_toml().replace("user_pin = \"1234\"\n", "");
    let mut file = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
    file.write_all(toml.as_bytes()).unwrap();

    let err = load_with_env(file.path(), Some(HashMap::new())).unwrap_err();
    assert!(fields(err).contains(&"hsm.user_pin".to_owned()));

    let env = HashMap::from([
        ("XKS__HSM__USER_PIN".to_owned(), "98765".to_owned()),
        ("XKS__HSM__SESSIONS".to_owned(), "9".to_owned()),
        (
            "XKS__SERVER__LISTEN".to_owned(),
            "127.0.0.1:9443".to_owned(),
        ),
    ]);
    let s = load_with_env(file.path(), Some(env)).unwrap();
    assert_eq!(s.hsm.primary().user_pin.expose_secret(), "98765");
    assert_eq!(s.hsm.primary().sessions.get(), 9);
    assert_eq!(s.server.listen.port(), 9443);
}

#[test]
fn secrets_and_pins_come_from_files_without_the_trailing_newline() {
    let files = Files::new();
    std::fs::write(files.path("pin"), "4321\n").unwrap();
    std::fs::write(files.path("secret"), format!("{SECRET}\n")).unwrap();
    let toml = files
        .valid_toml()
        .replace(
            "user_pin = \"1234\"",
            &format!("user_pin_file = \"{}\"", files.path("pin")),
        )
        .replace(
            &format!("secret = \"{SECRET}\""),
            &format!("secret_file = \"{}\"", files.path("secret")),
        );
    let s = load_from_str(&toml).unwrap();
    assert_eq!(s.hsm.primary().user_pin.expose_secret(), "4321");
    assert_eq!(
        s.key_stores[0].credentials[0].secret.expose_secret(),
        SECRET
    );
}

#[test]
fn the_example_config_file_parses() {
    // The shipped example must stay loadable; its paths are replaced by existing files.
    let example = include_str!("../../../config/xks-proxy.example.toml");
    let files = Files::new();
    std::fs::write(files.path("pin"), "1234").unwrap();
    std::fs::write(files.path("secret"), SECRET).unwrap();
    let toml = example
        .lines()
        .map(|line| match line.split_once(" = ") {
            Some((key, _))
                if ["certificate_chain", "private_key", "module", "ca_bundle"]
                    .contains(&key.trim()) =>
            {
                format!("{key} = \"{}\"", files.path("chain.pem"))
            }
            Some(("user_pin_file", _)) => format!("user_pin_file = \"{}\"", files.path("pin")),
            Some(("secret_file", _)) => format!("secret_file = \"{}\"", files.path("secret")),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let s = load_from_str(&toml).unwrap();
    assert!(!s.key_stores.is_empty());
}

/// `[hsm]` without a token plus the given `[[hsm.members]]` tables.
fn fleet_toml(files: &Files, members: &str) -> String {
    files
        .valid_toml()
        .replace("token_label = \"xks\"\n", "")
        .replace("[[key_stores]]", &format!("{members}\n[[key_stores]]"))
}

#[test]
fn h_12_hsm_members_inherit_hsm_defaults() {
    let files = Files::new();
    let toml = fleet_toml(
        &files,
        "[[hsm.members]]\nid = \"a\"\ntoken_label = \"xks-a\"\n\
         [[hsm.members]]\ntoken_serial = \"0123\"\nuser_pin = \"5678\"\n",
    );
    let s = load_from_str(&toml).unwrap();
    let Hsm::Fleet(fleet) = &s.hsm else {
        panic!("a fleet: {:?}", s.hsm)
    };
    let members: Vec<_> = fleet.members().collect();
    assert_eq!(members.len(), 2);
    let (a, b) = (members[0], members[1]);
    assert_eq!(a.id.as_deref(), Some("a"));
    assert_eq!(a.hsm.token, TokenSelector::Label("xks-a".into()));
    assert_eq!(a.hsm.user_pin.expose_secret(), "1234");
    assert_eq!(b.id, None);
    assert_eq!(b.hsm.token, TokenSelector::Serial("0123".into()));
    assert_eq!(b.hsm.user_pin.expose_secret(), "5678");
    assert_eq!(b.hsm.module, a.hsm.module);
    assert_eq!(
        s.hsm.primary().token,
        a.hsm.token,
        "the first member is primary"
    );
    let single = load_from_str(&files.valid_toml()).unwrap();
    assert!(matches!(single.hsm, Hsm::Single(_)));
    assert_eq!(single.hsm.members().len(), 1);
}

#[test]
fn h_12_hsm_members_are_validated_by_field() {
    let files = Files::new();
    let with_token = fleet_toml(&files, "[[hsm.members]]\ntoken_label = \"xks-a\"\n")
        .replace("[hsm]\n", "[hsm]\ntoken_serial = \"9\"\n");
    assert_eq!(
        fields(load_from_str(&with_token).unwrap_err()),
        ["hsm.token_serial"]
    );
    let duplicates = fleet_toml(
        &files,
        "[[hsm.members]]\nid = \"a\"\ntoken_label = \"x\"\n\
         [[hsm.members]]\nid = \"a\"\ntoken_label = \"x\"\n",
    );
    assert_eq!(
        fields(load_from_str(&duplicates).unwrap_err()),
        ["hsm.members[1].id", "hsm.members[1].token_label"]
    );
    let eleven: String = (0..11)
        .map(|i| format!("[[hsm.members]]\ntoken_label = \"t{i}\"\n"))
        .collect();
    assert_eq!(
        fields(load_from_str(&fleet_toml(&files, &eleven)).unwrap_err()),
        ["hsm.members"]
    );
    let no_pin = fleet_toml(&files, "[[hsm.members]]\n").replace("user_pin = \"1234\"\n", "");
    assert_eq!(
        fields(load_from_str(&no_pin).unwrap_err()),
        ["hsm.members[0].token_label", "hsm.members[0].user_pin"]
    );
}

mod hardening;
