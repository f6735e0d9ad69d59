//! `xks-proxy import-config --from aws-sample`: a settings file of AWS's sample proxy
//! (modelled on its `configuration/settings_softhsmv2.toml`) becomes a configuration that
//! `check-config` accepts, with every setting not carried over reported.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use support::binary::run;
use support::softhsm;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const METADATA: &str = "djAuMC4x";
const LOGGER: &str = "/local/centos/pkcs11-logger/build/linux/pkcs11-logger-x64.so";

/// Settings as the sample ships them for SoftHSMv2 (pkcs11-logger in front of the module,
/// file logging, keepalive, two key stores), with TLS + mTLS on and real files in `dir`.
fn write_sample(dir: &Path, store_b_key_id: &str) -> PathBuf {
    let ca = support::Ca::new("import CA");
    let (chain, key) = ca.server().write(dir, &ca, "server");
    let client_ca = support::Ca::new("client CA").write(dir, "client-ca");
    let path = dir.join("settings_softhsmv2.toml");
    let text = format!(
        r#"# This is a sample xks-proxy configuration file of using SoftHSMv2 with pkcs11-logger.
[server]
ip = "127.0.0.1"
port = 8443
region = "us-east-1"
service = "kms-xks-proxy"
ciphertext_metadata_b64 = "{METADATA}"

[server.tcp_keepalive]
tcp_keepalive_secs = 60
tcp_keepalive_retries = 3
tcp_keepalive_interval_secs = 1

[tracing]
is_stdout_writer_enabled = true
is_file_writer_enabled = true
level = "DEBUG"
directory = "/var/local/xks-proxy/logs"
file_prefix = "xks-proxy.log"
rotation_kind = "HOURLY"

[security]
is_sigv4_auth_enabled = true
is_tls_enabled = true
is_mtls_enabled = true
secondary_auth = "Oso"

[security.oso]
polar_file_path = "configuration/oso.polar"

[tls]
tls_cert_pem = {chain:?}
tls_key_pem = {key:?}
mtls_client_ca_pem = {client_ca:?}
mtls_client_dns_name = "cks.kms.us-east-1.amazonaws.com"

[[external_key_stores]]
uri_path_prefix = ""
sigv4_access_key_id = "{akid_a}"
sigv4_secret_access_key = "{secret_a}"
xks_key_id_set = ["foo", "cat", "dog"]

[[external_key_stores]]
uri_path_prefix = "/example/uri/path/prefix"
sigv4_access_key_id = "{store_b_key_id}"
sigv4_secret_access_key = "{secret_b}"
xks_key_id_set = ["foo", "bar"]

[pkcs11]
session_pool_max_size = 30
session_pool_timeout_milli = 0
session_eager_close = false
user_pin = "{pin}"
PKCS11_HSM_MODULE = "{LOGGER}"
context_read_timeout_milli = 10

[pkcs11_logger]
PKCS11_LOGGER_LIBRARY_PATH = "{module}"
PKCS11_LOGGER_LOG_FILE_PATH = "/var/local/xks-proxy/logs/pkcs11-logger-output.log"
PKCS11_LOGGER_FLAGS = "0"

[limits]
max_plaintext_in_base64 = 8192
max_aad_in_base64 = 16384

[hsm_capabilities]
can_generate_iv = false
is_zero_iv_required = false
"#,
        akid_a = support::AKID_A1,
        secret_a = support::SECRET_A1,
        secret_b = support::SECRET_B,
        pin = softhsm::USER_PIN,
        module = softhsm::MODULE,
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn import(sample: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "import-config",
        "--from",
        "aws-sample",
        sample.to_str().unwrap(),
        "--token-label",
        softhsm::TOKEN_LABEL,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn check_config(config: &Path) -> std::process::Output {
    run(&["check-config", "--config", config.to_str().unwrap()])
}

/// Every setting of the sample file above that has no equivalent here.
const DROPPED: &[&str] = &[
    "server.tcp_keepalive",
    "security.secondary_auth, security.oso",
    "tracing.is_file_writer_enabled",
    "pkcs11_logger",
    "pkcs11.session_pool_timeout_milli",
    "pkcs11.session_eager_close",
    "pkcs11.context_read_timeout_milli",
    "hsm_capabilities",
];

fn assert_no_secret(text: &str) {
    for secret in [support::SECRET_A1, support::SECRET_B, softhsm::USER_PIN] {
        assert!(!text.contains(secret), "a secret leaked: {text}");
    }
}

#[test]
fn softhsmv2_sample_to_stdout_maps_everything_and_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let sample = write_sample(dir.path(), support::AKID_B);
    let out = import(&sample, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let toml: toml::Table = toml::from_str(&text).unwrap();

    assert_eq!(toml["server"]["listen"].as_str(), Some("127.0.0.1:8443"));
    let tls = &toml["server"]["tls"];
    assert!(
        tls["certificate_chain"]
            .as_str()
            .unwrap()
            .ends_with("server-chain.pem")
    );
    assert!(
        tls["private_key"]
            .as_str()
            .unwrap()
            .ends_with("server-key.pem")
    );
    assert!(
        tls["client_auth"]["ca_bundle"]
            .as_str()
            .unwrap()
            .ends_with("client-ca.pem")
    );
    assert_eq!(
        tls["client_auth"]["allowed_subject_names"][0].as_str(),
        Some("cks.kms.us-east-1.amazonaws.com")
    );
    let hsm = &toml["hsm"];
    assert_eq!(
        hsm["module"].as_str(),
        Some(softhsm::MODULE),
        "logger unwrapped"
    );
    assert_eq!(hsm["token_label"].as_str(), Some(softhsm::TOKEN_LABEL));
    assert_eq!(hsm["user_pin"].as_str(), Some(softhsm::USER_PIN));
    assert_eq!(hsm["sessions"].as_integer(), Some(30));
    assert_eq!(
        toml["limits"]["max_plaintext_bytes"].as_integer(),
        Some(6144)
    );
    assert_eq!(toml["limits"]["max_aad_bytes"].as_integer(), Some(12288));
    assert_eq!(toml["logging"]["level"].as_str(), Some("debug"));

    let stores = toml["key_stores"].as_array().unwrap();
    assert_eq!(stores.len(), 2);
    let expected = [
        (
            "",
            support::AKID_A1,
            support::SECRET_A1,
            vec!["cat", "dog", "foo"],
        ),
        (
            "/example/uri/path/prefix",
            support::AKID_B,
            support::SECRET_B,
            vec!["bar", "foo"],
        ),
    ];
    for (store, (prefix, akid, secret, keys)) in stores.iter().zip(expected) {
        assert_eq!(store["path_prefix"].as_str(), Some(prefix));
        assert_eq!(store["allowed_regions"][0].as_str(), Some("us-east-1"));
        let allowed: Vec<_> = store["allowed_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(allowed, keys);
        assert_eq!(
            store["aws_sample_migration"]["ciphertext_metadata_b64"].as_str(),
            Some(METADATA)
        );
        assert_eq!(
            store["credentials"][0]["access_key_id"].as_str(),
            Some(akid)
        );
        assert_eq!(store["credentials"][0]["secret"].as_str(), Some(secret));
    }

    // The same list heads the file (as comments) and goes to stderr, without any secret.
    let (header, _) = text.split_once("\n[server]").unwrap();
    let err = stderr(&out);
    assert!(header.contains("as secret as that one"), "{header}");
    for setting in DROPPED {
        assert!(
            header.contains(&format!("- {setting}")),
            "{setting}: {header}"
        );
        assert!(err.contains(&format!("- {setting}")), "{setting}: {err}");
    }
    assert!(
        err.contains("Not carried over") && err.contains("needs attention"),
        "{err}"
    );
    assert_no_secret(&err);

    let config = dir.path().join("xks-proxy.toml");
    std::fs::write(&config, &text).unwrap();
    let checked = check_config(&config);
    assert!(checked.status.success(), "{}\n{text}", stderr(&checked));
    assert!(stdout(&checked).contains("/example/uri/path/prefix/kms/xks/v1"));
}

#[test]
fn output_file_is_written_private_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let sample = write_sample(dir.path(), support::AKID_B);
    let target = dir.path().join("imported.toml");
    let out = import(&sample, &["--output", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "config went to --output, not stdout"
    );
    assert!(stderr(&out).contains("check-config"), "{}", stderr(&out));
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(
        written.starts_with("# xks-proxy configuration"),
        "{written}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the file holds secrets");
    }
    assert!(check_config(&target).status.success());

    let again = import(&sample, &["--output", target.to_str().unwrap()]);
    assert!(!again.status.success());
    let err = stderr(&again);
    assert!(
        err.contains("--output") && err.contains("not overwritten"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), written);
}

#[test]
fn unreadable_or_invalid_sample_files_fail_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let out = import(&missing, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("absent.toml") && err.contains("cannot read"),
        "{err}"
    );

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[server]\nip = \"0.0.0.0\"\nport = = 80\n").unwrap();
    let out = import(&broken, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("broken.toml") && err.contains("line 3"),
        "{err}"
    );

    // Valid TOML, but not the sample's schema: the missing table is named.
    let ours = dir.path().join("ours.toml");
    std::fs::write(
        &ours,
        "[server]\nip = \"0.0.0.0\"\nport = 80\n[hsm]\nmodule = \"x\"\n",
    )
    .unwrap();
    let out = import(&ours, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("security"), "{}", stderr(&out));

    // A secret on a broken line is not echoed.
    let sample = write_sample(dir.path(), support::AKID_B);
    let text = std::fs::read_to_string(&sample)
        .unwrap()
        .replace(&format!("\"{}\"", support::SECRET_A1), support::SECRET_A1);
    std::fs::write(&sample, text).unwrap();
    let out = import(&sample, &[]);
    assert!(!out.status.success());
    assert_no_secret(&stderr(&out));
    assert!(stderr(&out).contains("line "), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn credential_outside_au_14_is_written_reported_and_refused_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let sample = write_sample(dir.path(), "lowercase-key-id-not-au14");
    let target = dir.path().join("imported.toml");
    let out = import(&sample, &["--output", target.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the import itself succeeds: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("external_key_stores[1].sigv4_access_key_id") && err.contains("AU-14"),
        "{err}"
    );
    assert_no_secret(&err);
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(written.contains("external_key_stores[1].sigv4_access_key_id"));
    let toml: toml::Table = toml::from_str(&written).unwrap();
    assert_eq!(
        toml["key_stores"][1]["credentials"][0]["access_key_id"].as_str(),
        Some("lowercase-key-id-not-au14"),
        "written as is"
    );

    let checked = check_config(&target);
    assert!(!checked.status.success());
    let err = stderr(&checked);
    assert!(
        err.contains("key_stores[1].credentials[0].access_key_id"),
        "{err}"
    );
}
