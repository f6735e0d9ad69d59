//! Exposition of every metric family: names, labels, units, both text formats.

use super::*;

#[test]
fn exposition_names_units_and_values() {
    let m = Metrics::new();
    m.request_finished(
        RequestLabels {
            key_store: "a".into(),
            operation: "Encrypt".into(),
            status: 200,
            error_name: String::new(),
        },
        Duration::from_millis(3),
    );
    m.auth_failed("a", "bad_signature");
    m.hsm_call("C_Encrypt", Duration::from_micros(50));
    m.add_hsm_sessions("idle", 4);
    m.hsm_session_busy(true);
    m.set_hsm_health("serial-1", 2);
    m.set_credentials([("a", 2)]);
    m.reload(false);
    m.set_tls_not_after(Some(SystemTime::now() + Duration::from_secs(86_400)));
    let _guard = m.request_started();
    let text = m.render();
    for line in [
        r#"xks_requests_total{key_store="a",operation="Encrypt",status="200",error_name=""} 1"#,
        r#"xks_request_duration_seconds_bucket{le="0.005",operation="Encrypt"} 1"#,
        r#"xks_authentication_failures_total{key_store="a",reason="bad_signature"} 1"#,
        r#"xks_hsm_call_duration_seconds_count{function="C_Encrypt"} 1"#,
        r#"xks_hsm_sessions{state="in_use"} 1"#,
        r#"xks_hsm_sessions{state="idle"} 3"#,
        r#"xks_hsm_health_state{member="serial-1"} 2"#,
        r#"xks_key_store_credentials{key_store="a"} 2"#,
        r#"xks_config_reloads_total{result="failure"} 1"#,
        "xks_requests_in_flight 1",
        "xks_build_info{version=",
        "# UNIT xks_tls_certificate_expiry_seconds seconds",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    let expiry: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("xks_tls_certificate_expiry_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((86_000.0..=86_400.0).contains(&expiry), "{expiry}");
}

#[test]
fn text_format_names_counter_families_with_total_and_drops_openmetrics_only_lines() {
    let m = Metrics::new();
    m.auth_failed("a", "mtls");
    m.request_finished(
        RequestLabels {
            key_store: "none".into(),
            operation: "unknown".into(),
            status: 404,
            error_name: "InvalidUriPathException".into(),
        },
        Duration::from_millis(1),
    );
    assert!(
        !m.render().contains("tls_certificate_expiry_seconds "),
        "TLS off: no sample"
    );
    let text = m.render_text();
    for line in [
        "# HELP xks_requests_total XKS API requests",
        "# TYPE xks_requests_total counter",
        "# TYPE xks_authentication_failures_total counter",
        r#"xks_authentication_failures_total{key_store="a",reason="mtls"} 1"#,
        "# TYPE xks_request_duration_seconds histogram",
        "# TYPE xks_requests_in_flight gauge",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    assert!(!text.contains("# TYPE xks_requests counter"), "{text}");
}

#[test]
fn exposition_follows_the_accept_header() {
    let m = Metrics::new();
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, body) = m.exposition(Some(prometheus));
    assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
    assert!(body.ends_with("# EOF\n"));
    for accept in [
        None,
        Some("*/*"),
        Some("text/plain"),
        Some("application/openmetrics-text; q=0"),
    ] {
        let (content_type, body) = m.exposition(accept);
        assert_eq!(content_type, TEXT_CONTENT_TYPE, "{accept:?}");
        assert!(!body.contains("# EOF"));
    }
}
