//! Configuration rules from hardening the front door (issue 7) and reload bookkeeping: no
//! value is ever quoted back, the new limits and admin settings are validated, and
//! restart-only settings are told apart from reloadable ones.

use super::*;

#[test]
fn parse_errors_never_quote_the_offending_line() {
    let files = Files::new();
    let toml = files.valid_toml().replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret = \"{SECRET}"),
    );
    let err = load_from_str(&toml).unwrap_err().to_string();
    assert!(!err.contains(SECRET), "secret quoted in: {err}");
    assert!(err.contains("line"), "position missing: {err}");
}

#[test]
fn values_in_the_wrong_field_are_never_quoted_back() {
    let files = Files::new();
    // Quotes and backticks inside the value must not end a "quoted" span early.
    let canary = r#"pin\"canary`8c1f"#;
    for (from, to) in [
        // A string in an integer field, a negative number, a string in a bool field.
        (
            "[server]\n".to_owned(),
            format!("[server]\nmax_connections = \"{canary}\"\n"),
        ),
        (
            "[hsm]\n".to_owned(),
            format!("[hsm]\nsessions = \"{canary}\"\n"),
        ),
        (
            "[server]\n".to_owned(),
            format!("[server]\nplaintext_behind_load_balancer = \"{canary}\"\n"),
        ),
        (
            "[server]\n".to_owned(),
            "[server]\nidle_timeout_ms = 987654321987\n".to_owned(),
        ),
        // An array where a string goes, and a string where a table goes.
        (
            "[server]\n".to_owned(),
            format!("[server]\nhandshake_timeout_ms = [\"{canary}\"]\n"),
        ),
        (
            "[hsm]\n".to_owned(),
            format!("[hsm]\nmembers = \"{canary}\"\n"),
        ),
    ] {
        let toml = files.valid_toml().replacen(&from, &to, 1);
        let err = load_from_str(&toml).unwrap_err().to_string();
        for part in ["pin", "canary", "8c1f"] {
            assert!(!err.contains(part), "value quoted in: {err}");
        }
        assert!(!err.contains("987654321987"), "value quoted in: {err}");
        assert!(err.contains("server.") || err.contains("hsm."), "{err}");
    }
}

#[test]
fn front_door_limits_have_safe_defaults_and_bounds() {
    let files = Files::new();
    let s = load_from_str(&files.valid_toml()).unwrap();
    assert_eq!(s.server.idle_timeout.as_secs(), 30);
    assert_eq!(s.server.body_timeout.as_secs(), 5);
    assert_eq!(s.server.http2_max_concurrent_streams, 32);
    assert_eq!(s.limits.pre_auth_buffer_bytes, 16 * 1024 * 1024);
    assert!(s.admin.reload_token_file.is_none());
    assert!(!s.admin.exposed());

    let toml = files.valid_toml().replace(
        "[server]\n",
        "[server]\nidle_timeout_ms = 10\nhttp2_max_concurrent_streams = 0\nbody_timeout_ms = 0\n",
    ) + "[limits]\nmax_body_bytes = 131072\npre_auth_buffer_bytes = 1000\n";
    let got = fields(load_from_str(&toml).unwrap_err());
    for field in [
        "server.idle_timeout_ms",
        "server.http2_max_concurrent_streams",
        "server.body_timeout_ms",
        "limits.pre_auth_buffer_bytes",
    ] {
        assert!(got.iter().any(|f| f == field), "{field} not in {got:?}");
    }
}

#[test]
fn admin_reload_token_file_and_allowed_hosts_are_validated() {
    let files = Files::new();
    let short = files.dir.path().join("short-token");
    std::fs::write(&short, "too-short\n").unwrap();
    let good = files.dir.path().join("token");
    std::fs::write(&good, format!("{}\n", "t".repeat(40))).unwrap();

    let with_admin = |extra: &str| {
        format!(
            "{}[admin]\nlisten = \"0.0.0.0:9443\"\n{extra}",
            files.valid_toml()
        )
    };
    let err = load_from_str(&with_admin(&format!(
        "reload_token_file = {short:?}\nallowed_hosts = [\"ok.example\", \"bad host:1\"]\n"
    )))
    .unwrap_err();
    assert_eq!(
        fields(err),
        ["admin.reload_token_file", "admin.allowed_hosts[1]"]
    );
    let s = load_from_str(&with_admin(&format!(
        "reload_token_file = {good:?}\nallowed_hosts = [\"Metrics.Example\"]\n"
    )))
    .unwrap();
    assert!(s.admin.exposed());
    assert_eq!(s.admin.reload_token_file.as_deref(), Some(good.as_path()));
    assert_eq!(s.admin.allowed_hosts, ["metrics.example"]);
}

#[test]
fn restart_only_settings_are_told_apart_from_reloadable_ones() {
    let files = Files::new();
    let base = load_from_str(&files.valid_toml()).unwrap();
    let with = |from: &str, to: &str| {
        let toml = files.valid_toml().replacen(from, to, 1);
        RestartOnly::of(&load_from_str(&toml).unwrap())
    };
    let started = RestartOnly::of(&base);
    assert!(started.changed(&RestartOnly::of(&base)).is_empty());
    for (from, to, key) in [
        (
            "[server]\n",
            "[server]\nmax_connections = 7\n",
            "server.max_connections",
        ),
        (
            "[server]\n",
            "[server]\nidle_timeout_ms = 9000\n",
            "server.idle_timeout_ms",
        ),
        ("user_pin = \"1234\"", "user_pin = \"4321\"", "hsm.user_pin"),
        ("[hsm]\n", "[hsm]\nsessions = 9\n", "hsm.sessions"),
        (
            "[[key_stores]]",
            "[logging]\nformat = \"text\"\n[[key_stores]]",
            "logging.format",
        ),
    ] {
        assert_eq!(started.changed(&with(from, to)), [key], "{to}");
    }
    // Reloadable: the log level, request timeout, body limits and key stores.
    for (from, to) in [
        (
            "[server]\n",
            "[server]\nrequest_timeout_ms = 150\nbody_timeout_ms = 900\n",
        ),
        (
            "[[key_stores]]",
            "[logging]\nlevel = \"debug\"\n[[key_stores]]",
        ),
        ("path_prefix = \"/tenant-a\"", "path_prefix = \"/tenant-b\""),
    ] {
        assert!(started.changed(&with(from, to)).is_empty(), "{to}");
    }
}
