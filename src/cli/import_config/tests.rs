//! The mapping, without files: sample TOML in, our TOML and the notes out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::mapping::{Options, convert};
use super::render::{Kind, header, quoted};
use super::{describe, sample::Sample};

const SECRET: &str = "GfHQzWbmSw4uRGZqKo5nhQKE+ILlcOt7VEqNdWCtuLY=";

fn sample(security: &str, extra: &str) -> String {
    format!(
        r#"
[server]
ip = "0.0.0.0"
port = 443
region = "eu-west-1"
service = "kms-xks-proxy"
ciphertext_metadata_b64 = "djAuMC4x"
[server.tcp_keepalive]
tcp_keepalive_secs = 60
[security]
{security}
[tls]
tls_cert_pem = "/etc/xks/cert.pem"
tls_key_pem = "/etc/xks/key.pem"
mtls_client_ca_pem = "/etc/xks/ca.pem"
mtls_client_dns_name = "cks.kms.eu-west-1.amazonaws.com"
[tracing]
is_stdout_writer_enabled = true
is_file_writer_enabled = true
level = "INFO"
directory = "/var/log/xks"
[[external_key_stores]]
uri_path_prefix = "/example/prefix"
sigv4_access_key_id = "AKIAI2SFODNN7EXAMPLE"
sigv4_secret_access_key = "{SECRET}"
xks_key_id_set = ["foo", "bar"]
[pkcs11]
session_pool_max_size = 5000
session_pool_timeout_milli = 0
session_eager_close = false
user_pin = "1234"
PKCS11_HSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
context_read_timeout_milli = 10
[limits]
max_plaintext_in_base64 = 8192
max_aad_in_base64 = 16384
[hsm_capabilities]
can_generate_iv = false
is_zero_iv_required = false
an_unknown_key = 1
{extra}
"#
    )
}

fn import(text: &str, token: Option<&str>) -> (toml::Table, Vec<super::render::Note>, String) {
    let parsed: Sample = toml::from_str(text).unwrap();
    let converted = convert(parsed, &Options { token_label: token }).unwrap();
    let whole = format!("{}{}", header("s.toml", &converted.notes), *converted.body);
    (toml::from_str(&whole).unwrap(), converted.notes.0, whole)
}

fn dropped(notes: &[super::render::Note], setting: &str) -> bool {
    notes
        .iter()
        .any(|n| n.kind == Kind::Dropped && n.setting.contains(setting))
}

#[test]
fn import_config_maps_tls_mtls_limits_pool_and_key_stores() {
    let text = sample(
        "is_sigv4_auth_enabled = true\nis_tls_enabled = true\nis_mtls_enabled = true\nsecondary_auth = \"Oso\"",
        "",
    );
    let (toml, notes, whole) = import(&text, Some("xks"));
    assert_eq!(toml["server"]["listen"].as_str(), Some("0.0.0.0:443"));
    let tls = &toml["server"]["tls"];
    assert_eq!(tls["certificate_chain"].as_str(), Some("/etc/xks/cert.pem"));
    assert_eq!(
        tls["client_auth"]["allowed_subject_names"][0].as_str(),
        Some("cks.kms.eu-west-1.amazonaws.com")
    );
    assert!(
        toml["server"]
            .get("plaintext_behind_load_balancer")
            .is_none()
    );
    // 8192 Base64 characters are 6144 bytes; 16384 are 12288.
    assert_eq!(
        toml["limits"]["max_plaintext_bytes"].as_integer(),
        Some(6144)
    );
    assert_eq!(toml["limits"]["max_aad_bytes"].as_integer(), Some(12288));
    assert_eq!(toml["hsm"]["sessions"].as_integer(), Some(1024), "clamped");
    assert_eq!(toml["hsm"]["token_label"].as_str(), Some("xks"));
    assert_eq!(toml["logging"]["level"].as_str(), Some("info"));
    let store = &toml["key_stores"][0];
    assert_eq!(store["path_prefix"].as_str(), Some("/example/prefix"));
    assert_eq!(store["allowed_regions"][0].as_str(), Some("eu-west-1"));
    assert_eq!(store["allowed_keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        store["aws_sample_migration"]["ciphertext_metadata_b64"].as_str(),
        Some("djAuMC4x")
    );
    assert_eq!(store["credentials"][0]["secret"].as_str(), Some(SECRET));
    for setting in [
        "server.tcp_keepalive",
        "security.secondary_auth",
        "tracing.is_file_writer_enabled",
        "pkcs11.session_pool_timeout_milli",
        "pkcs11.session_eager_close",
        "pkcs11.context_read_timeout_milli",
        "hsm_capabilities",
    ] {
        assert!(
            dropped(&notes, setting),
            "{setting} not reported: {notes:?}"
        );
    }
    assert!(
        notes
            .iter()
            .any(|n| n.kind == Kind::Attention && n.setting == "pkcs11.session_pool_max_size")
    );
    for note in &notes {
        assert!(!note.reason.contains(SECRET) && !note.reason.contains("1234"));
    }
    assert!(whole.starts_with("# xks-proxy configuration"));
}

#[test]
fn import_config_without_tls_is_plaintext_and_keeps_an_empty_migration_table() {
    let text = sample(
        "is_sigv4_auth_enabled = false\nis_tls_enabled = false\nis_mtls_enabled = true",
        "[pkcs11_logger]\nPKCS11_LOGGER_LIBRARY_PATH = \"/opt/real.so\"",
    )
    .replace("ciphertext_metadata_b64 = \"djAuMC4x\"", "")
    .replace(
        "/usr/lib/softhsm/libsofthsm2.so",
        "/opt/pkcs11-logger/pkcs11-logger-x64.so",
    );
    let (toml, notes, _) = import(&text, None);
    assert_eq!(
        toml["server"]["plaintext_behind_load_balancer"].as_bool(),
        Some(true)
    );
    assert!(toml["server"].get("tls").is_none());
    assert_eq!(toml["hsm"]["module"].as_str(), Some("/opt/real.so"));
    assert_eq!(toml["hsm"]["token_label"].as_str(), Some(""));
    assert_eq!(
        toml["key_stores"][0]["aws_sample_migration"]["ciphertext_metadata_b64"].as_str(),
        Some("")
    );
    assert!(dropped(&notes, "security.is_mtls_enabled"));
    assert!(dropped(&notes, "pkcs11_logger"));
    assert!(
        notes
            .iter()
            .any(|n| n.kind == Kind::Dropped && n.setting == "tls")
    );
    for attention in [
        "security.is_tls_enabled",
        "security.is_sigv4_auth_enabled",
        "hsm.token_label",
    ] {
        assert!(
            notes
                .iter()
                .any(|n| n.kind == Kind::Attention && n.setting == attention),
            "{attention}: {notes:?}"
        );
    }
}

#[test]
fn import_config_errors_never_show_a_secret() {
    // A PIN of the wrong type: serde would quote the value.
    let text = sample("is_tls_enabled = false\nis_mtls_enabled = false", "")
        .replace("user_pin = \"1234\"", "user_pin = 987654");
    let error = toml::from_str::<Sample>(&text).unwrap_err();
    let message = describe(&error, &text);
    assert!(!message.contains("987654"), "{message}");
    assert!(message.contains("line "), "{message}");

    // A syntax error on the secret's own line: the excerpt is left out.
    let text = sample("is_tls_enabled = false\nis_mtls_enabled = false", "")
        .replace(&format!("\"{SECRET}\""), &format!("\"{SECRET}"));
    let error = toml::from_str::<Sample>(&text).unwrap_err();
    let message = describe(&error, &text);
    assert!(!message.contains(SECRET), "{message}");
}

#[test]
fn import_config_quotes_toml_strings() {
    assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(quoted("x\ny\u{1}"), r#""x\ny\u0001""#);
    let parsed: toml::Table = toml::from_str(&format!("k = {}", quoted("é\"\\\t"))).unwrap();
    assert_eq!(parsed["k"].as_str(), Some("é\"\\\t"));
}
