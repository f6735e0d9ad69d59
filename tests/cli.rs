//! The `xks-proxy` subcommands, run as a user would (CFG-1, AU-14, CLI of issue 2).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use support::binary::run;
use support::softhsm;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `keys list` row whose LABEL column (the fourth) is `label`, split on whitespace:
/// MEMBER KEY VERSION LABEL SPEC USAGES STATUS, then the words of the NOTE.
fn list_row(list: &str, label: &str) -> Vec<String> {
    list.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.get(3).is_some_and(|cell| cell == label))
        .unwrap_or_else(|| panic!("{label} not in {list}"))
}

/// A config for the test token with TLS files that exist.
fn write_config(dir: &std::path::Path, extra_hsm: &str) -> std::path::PathBuf {
    let ca = support::Ca::new("cli CA");
    let (chain, key) = ca.server().write(dir, &ca, "server");
    let path = dir.join("xks-proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {chain:?}\nprivate_key = {key:?}\n\
             [hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin = \"{}\"\n{extra_hsm}\n\
             [[key_stores]]\npath_prefix = \"/t\"\n[[key_stores.credentials]]\naccess_key_id = \"{}\"\nsecret = \"{}\"\n",
            softhsm::MODULE,
            softhsm::TOKEN_LABEL,
            softhsm::USER_PIN,
            support::AKID_A1,
            support::SECRET_A1
        ),
    )
    .unwrap();
    path
}

#[test]
fn cfg_1_au_14_credentials_new_prints_a_valid_console_file() {
    let out = run(&[
        "credentials",
        "new",
        "--prefix",
        "/keystores/tenant-a",
        "--output",
        "console-json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["XksProxyUriPath"], "/keystores/tenant-a/kms/xks/v1");
    let id = json["XksProxyAuthenticationCredential"]["AccessKeyId"]
        .as_str()
        .unwrap();
    let secret = json["XksProxyAuthenticationCredential"]["RawSecretAccessKey"]
        .as_str()
        .unwrap();
    assert!(
        (20..=30).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "{id}"
    );
    assert!((43..=64).contains(&secret.len()), "{secret}");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(secret)
            .unwrap()
            .len(),
        32,
        "256 bits"
    );

    let again = run(&[
        "credentials",
        "new",
        "--prefix",
        "/keystores/tenant-a",
        "--output",
        "console-json",
    ]);
    assert_ne!(stdout(&out), stdout(&again), "credentials must be random");

    let both = run(&["credentials", "new", "--prefix", "/p"]);
    let text = stdout(&both);
    assert!(
        text.contains("[[key_stores.credentials]]") && text.contains("XksProxyUriPath"),
        "{text}"
    );

    let bad = run(&["credentials", "new", "--prefix", "no-slash"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--prefix"), "{}", stderr(&bad));
}

#[test]
fn check_config_reports_every_error_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "");
    let out = run(&["check-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("/t/kms/xks/v1"), "{}", stdout(&out));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\nplaintext_behind_load_balancer = true\n[hsm]\nmodule = \"/missing.so\"\ntoken_label = \"x\"\nuser_pin = \"1\"\nsessions = 0\n[[key_stores]]\npath_prefix = \"x/\"\n",
    )
    .unwrap();
    let out = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for field in [
        "server.listen",
        "hsm.module",
        "hsm.sessions",
        "key_stores[0].path_prefix",
        "key_stores[0].credentials",
    ] {
        assert!(err.contains(field), "{field} missing in: {err}");
    }
}

#[test]
fn keys_create_and_list_show_exact_usages() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let config = config.to_str().unwrap();
    let both = softhsm::unique_label("cli-both");
    let enc = softhsm::unique_label("cli-enc");
    let none = softhsm::unique_label("cli-none");
    for (label, usage) in [(&both, "encrypt,decrypt"), (&enc, "encrypt"), (&none, "")] {
        let out = softhsm::serialised_write(|| {
            run(&[
                "keys", "create", "--config", config, "--label", label, "--usage", usage,
            ])
        });
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let dup = run(&["keys", "create", "--config", config, "--label", &both]);
    assert!(!dup.status.success(), "duplicate labels must be refused");

    let out = run(&["keys", "list", "--config", config]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    assert!(
        list.lines().next().unwrap().starts_with("MEMBER"),
        "header: {list}"
    );
    let row = list_row(&list, &both);
    assert_eq!(
        row[1..7],
        [&both, "1", &both, "AES_256", "ENCRYPT,DECRYPT", "encrypts"],
        "{row:?}"
    );
    assert_eq!(list_row(&list, &enc)[5], "ENCRYPT");
    assert_eq!(list_row(&list, &none)[5], "-");
    assert!(
        list.contains(softhsm::HEALTH_KEY),
        "health key listed: {list}"
    );
}

/// Key hygiene: `keys list` marks keys the proxy refuses to serve (not private, not
/// sensitive or extractable) instead of listing them as usable, and warns on stderr.
#[test]
fn key_hygiene_keys_list_marks_refused_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let config = config.to_str().unwrap();
    let good = softhsm::unique_label("cli-good");
    let squat = softhsm::unique_label("cli-squat");
    let loose = softhsm::unique_label("cli-extractable");
    let out = softhsm::serialised_write(|| {
        run(&["keys", "create", "--config", config, "--label", &good])
    });
    assert!(out.status.success(), "{}", stderr(&out));
    softhsm::plant_public_key(&squat, &[0x42; 32]);
    softhsm::pkcs11_tool_extractable_key(&loose);

    let out = run(&["keys", "list", "--config", config]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    let line = |label: &str| list_row(&list, label).join(" ");
    assert_eq!(list_row(&list, &good)[5], "ENCRYPT,DECRYPT");
    assert_eq!(list_row(&list, &squat)[6], "REFUSED");
    assert_eq!(list_row(&list, &loose)[6], "REFUSED");
    let squat_line = line(&squat);
    assert!(
        squat_line.contains("REFUSED") && squat_line.contains("not private"),
        "{squat_line}"
    );
    assert!(
        squat_line.contains("not sensitive") && squat_line.contains("extractable"),
        "{squat_line}"
    );
    let loose_line = line(&loose);
    assert!(
        loose_line.contains("REFUSED") && loose_line.contains("extractable"),
        "{loose_line}"
    );
    assert!(!loose_line.contains("not private"), "{loose_line}");
    let err = stderr(&out);
    assert!(err.contains("2 key(s)") && err.contains("refuses"), "{err}");
}
