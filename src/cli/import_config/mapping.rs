//! The sample's settings → our TOML, setting by setting, with a `Note` for everything that
//! is dropped or needs a look. Values are written verbatim where they have an equivalent, even
//! when our validation will refuse them (a bad credential, an empty PIN): nothing is silently
//! changed, and `check-config` then names the field.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::key_stores::key_stores;
use super::render::{Notes, quoted};
use super::sample::{Sample, Tls};

/// What the caller knows that the sample's file does not say.
pub(super) struct Options<'a> {
    /// `--token-label`: the sample always used the first PKCS#11 slot.
    pub(super) token_label: Option<&'a str>,
}

/// The body of our configuration (no header) and the notes about it.
pub(super) struct Converted {
    pub(super) body: Zeroizing<String>,
    pub(super) notes: Notes,
}

// Our ranges (src/config/validate): sessions 1..=1024, max_plaintext_bytes 4300..=1 MiB,
// max_aad_bytes 8192..=65535, max_body_bytes up to 16 MiB with a 128 KiB default.
const SESSIONS: (u64, u64) = (1, 1024);
const PLAINTEXT: (u64, u64) = (4300, 1024 * 1024);
const AAD: (u64, u64) = (8192, 65_535);
const DEFAULT_BODY: u64 = 128 * 1024;
const MAX_BODY: u64 = 16 * 1024 * 1024;
/// Room for the JSON around the Base64 fields (request metadata, key names, ...).
const BODY_OVERHEAD: u64 = 4096;

/// Converts the sample's settings. Fails only where the sample itself could not have run.
pub(super) fn convert(sample: Sample, opts: &Options<'_>) -> Result<Converted, String> {
    let mut notes = Notes::default();
    let mut out = Zeroizing::new(String::new());
    server(&sample, &mut out, &mut notes)?;
    limits(&sample, &mut out, &mut notes);
    hsm(&sample, opts, &mut out, &mut notes);
    logging(&sample, &mut out, &mut notes);
    key_stores(&sample, &mut out, &mut notes);
    Ok(Converted { body: out, notes })
}

fn server(sample: &Sample, out: &mut String, notes: &mut Notes) -> Result<(), String> {
    let s = &sample.server;
    let ip: IpAddr = s.ip.trim().parse().map_err(|_| {
        format!(
            "server.ip: {:?} is not an IP address (the sample would not start)",
            s.ip
        )
    })?;
    let listen = SocketAddr::new(ip, s.port).to_string();
    let _ = writeln!(out, "[server]\nlisten = {}", quoted(&listen));
    if s.port_http_ping.is_some() {
        notes.drop(
            "server.port_http_ping",
            "no separate plain-HTTP ping listener: GET /ping answers on server.listen, and \
             /healthz, /readyz on the admin listener (admin.listen, 127.0.0.1:9443)",
        );
    }
    if s.tcp_keepalive.is_some() || s.tcp_keepalive_secs.is_some() {
        notes.drop(
            "server.tcp_keepalive",
            "no TCP keepalive setting; idle connections are closed after \
             server.idle_timeout_ms (30 s) and HTTP/2 connections are pinged",
        );
    }
    if let Some(service) = &s.service
        && service != "kms-xks-proxy"
    {
        notes.drop(
            "server.service",
            format!(
                "{service:?}: this proxy always requires the SigV4 service kms-xks-proxy, \
                 which is what KMS signs with (AU-3)"
            ),
        );
    }
    let sec = &sample.security;
    if !sec.is_sigv4_auth_enabled {
        notes.attention(
            "security.is_sigv4_auth_enabled",
            "false in the sample; SigV4 cannot be turned off here. KMS always signs, so KMS \
             traffic is unaffected; unsigned test clients now get 401",
        );
    }
    if sec.secondary_auth.is_some() || sec.oso.is_some() {
        notes.drop(
            "security.secondary_auth, security.oso",
            "no secondary authorization (Oso is deprecated); limit each key store's keys \
             with key_stores.allowed_keys",
        );
    }
    transport(sample, out, notes)
}

/// `[security]` and `[tls]` → plain HTTP, or `[server.tls]` with an optional `client_auth`.
fn transport(sample: &Sample, out: &mut String, notes: &mut Notes) -> Result<(), String> {
    let sec = &sample.security;
    let empty = Tls::default();
    let tls = sample.tls.as_ref().unwrap_or(&empty);
    if !sec.is_tls_enabled {
        out.push_str("plaintext_behind_load_balancer = true\n");
        notes.attention(
            "security.is_tls_enabled",
            "false in the sample: written as server.plaintext_behind_load_balancer = true. \
             Plain HTTP is only for a load balancer that terminates TLS in front of the proxy \
             (KMS requires HTTPS); the proxy warns at startup. Prefer [server.tls]",
        );
        let files = [
            tls.tls_cert_pem.as_str(),
            tls.tls_key_pem.as_str(),
            tls.mtls_client_ca_pem.as_deref().unwrap_or(""),
            tls.mtls_client_dns_name.as_deref().unwrap_or(""),
        ];
        if files.iter().any(|f| !f.trim().is_empty()) {
            notes.drop(
                "tls",
                "security.is_tls_enabled = false in the sample, so its [tls] files never applied",
            );
        }
        if sec.is_mtls_enabled {
            notes.drop(
                "security.is_mtls_enabled",
                "true, but TLS was off in the sample, so mTLS never applied",
            );
        }
        return Ok(());
    }
    let Some(tls_table) = &sample.tls else {
        return Err("security.is_tls_enabled = true but [tls] is missing".into());
    };
    let cert = required(&tls_table.tls_cert_pem, "tls.tls_cert_pem")?;
    let key = required(&tls_table.tls_key_pem, "tls.tls_key_pem")?;
    let _ = writeln!(
        out,
        "\n[server.tls]\ncertificate_chain = {}\nprivate_key = {}",
        quoted(cert),
        quoted(key)
    );
    relative(cert, "tls.tls_cert_pem", notes);
    relative(key, "tls.tls_key_pem", notes);
    let ca = tls.mtls_client_ca_pem.as_deref().unwrap_or("");
    let name = tls.mtls_client_dns_name.as_deref().unwrap_or("");
    if sec.is_mtls_enabled {
        let ca = required(ca, "tls.mtls_client_ca_pem")?;
        let name = required(name, "tls.mtls_client_dns_name")?;
        let _ = writeln!(
            out,
            "\n# The sample matched the client certificate's SAN dNSName; this proxy accepts \
             the\n# subject CN or a SAN dNSName, so the same certificates pass.\n\
             [server.tls.client_auth]\nca_bundle = {}\nallowed_subject_names = [{}]",
            quoted(ca),
            quoted(name.trim())
        );
        relative(ca, "tls.mtls_client_ca_pem", notes);
    } else if !ca.is_empty() || !name.is_empty() {
        notes.drop(
            "tls.mtls_client_ca_pem, tls.mtls_client_dns_name",
            "security.is_mtls_enabled = false in the sample, so mTLS stays off",
        );
    }
    Ok(())
}

fn limits(sample: &Sample, out: &mut String, notes: &mut Notes) {
    let Some(limits) = &sample.limits else {
        return;
    };
    // The sample counts Base64 characters; we count decoded bytes: 4 characters, 3 bytes.
    let mut table = String::new();
    let mut plaintext = None;
    let mut aad = None;
    for (field, value, ours, range, slot) in [
        (
            "max_plaintext_in_base64",
            limits.max_plaintext_in_base64,
            "max_plaintext_bytes",
            PLAINTEXT,
            &mut plaintext,
        ),
        (
            "max_aad_in_base64",
            limits.max_aad_in_base64,
            "max_aad_bytes",
            AAD,
            &mut aad,
        ),
    ] {
        let Some(b64) = value else { continue };
        let bytes = b64 / 4 * 3;
        let clamped = bytes.clamp(range.0, range.1);
        if clamped != bytes {
            notes.attention(
                format!("limits.{field}"),
                format!(
                    "{b64} Base64 characters = {bytes} bytes, outside limits.{ours}'s \
                     {}..={}; clamped to {clamped}",
                    range.0, range.1
                ),
            );
        }
        let _ = writeln!(
            table,
            "# The sample's {field} = {b64} (Base64 characters), as decoded bytes.\n\
             {ours} = {clamped}"
        );
        *slot = Some(clamped);
    }
    if table.is_empty() {
        return;
    }
    let b64 = |n: u64| n.div_ceil(3) * 4;
    let body = b64(plaintext.unwrap_or(32 * 1024)) + b64(aad.unwrap_or(16 * 1024)) + BODY_OVERHEAD;
    if body > DEFAULT_BODY {
        let _ = writeln!(
            table,
            "# Room for both fields in Base64 plus the JSON around them.\n\
             max_body_bytes = {}",
            body.min(MAX_BODY)
        );
    }
    let _ = write!(out, "\n[limits]\n{table}");
}

fn hsm(sample: &Sample, opts: &Options<'_>, out: &mut String, notes: &mut Notes) {
    let p = &sample.pkcs11;
    let mut module = p.module.as_str();
    if let Some(logger) = &sample.pkcs11_logger {
        notes.drop(
            "pkcs11_logger",
            "no pkcs11-logger wrapper; PKCS#11 failures are logged by the proxy and \
             xks_hsm_call_duration_seconds times every call",
        );
        let wraps = Path::new(module)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().contains("pkcs11-logger"));
        if wraps && !logger.library_path.trim().is_empty() {
            module = logger.library_path.trim();
            notes.attention(
                "pkcs11.PKCS11_HSM_MODULE",
                "was the pkcs11-logger wrapper: hsm.module is the library it wrapped \
                 (pkcs11_logger.PKCS11_LOGGER_LIBRARY_PATH)",
            );
        }
    }
    notes.attention(
        "pkcs11.PKCS11_HSM_MODULE",
        "the sample let the PKCS11_HSM_MODULE environment variable override the file; if \
         the deployment set it, put that path in hsm.module",
    );
    relative(module, "pkcs11.PKCS11_HSM_MODULE", notes);
    let _ = writeln!(out, "\n[hsm]\nmodule = {}", quoted(module));
    match opts.token_label {
        Some(label) => {
            let _ = writeln!(out, "token_label = {}", quoted(label));
        }
        None => {
            out.push_str(
                "# The sample used the first PKCS#11 slot; set the token's label (or\n\
                 # token_serial). `pkcs11-tool --module <module> --list-slots` shows it.\n\
                 token_label = \"\"\n",
            );
            notes.attention(
                "hsm.token_label",
                "the sample always used the first PKCS#11 slot; this proxy selects the token \
                 by label or serial. Written empty, so check-config fails until it is set \
                 (or rerun with --token-label)",
            );
        }
    }
    let pin = p.user_pin.0.expose_secret();
    out.push_str(
        "# Inline, as in the sample's file. Better: user_pin_file, or XKS__HSM__USER_PIN.\n\
         user_pin = ",
    );
    out.push_str(&quoted(pin));
    out.push('\n');
    if pin.is_empty() {
        notes.attention(
            "pkcs11.user_pin",
            "empty in the sample; check-config requires a PIN (hsm.user_pin_file)",
        );
    }
    if let Some(size) = p.session_pool_max_size {
        let sessions = size.clamp(SESSIONS.0, SESSIONS.1);
        if sessions != size {
            notes.attention(
                "pkcs11.session_pool_max_size",
                format!(
                    "{size} is outside hsm.sessions' {}..={}; clamped to {sessions}",
                    SESSIONS.0, SESSIONS.1
                ),
            );
        }
        let _ = writeln!(
            out,
            "# The sample's session_pool_max_size: sessions it opened on demand. Here they are\n\
             # opened and logged in at startup, one per worker thread.\nsessions = {sessions}"
        );
    }
    dropped_pkcs11(sample, notes);
}

fn dropped_pkcs11(sample: &Sample, notes: &mut Notes) {
    let p = &sample.pkcs11;
    if p.session_pool_timeout_milli.is_some() {
        notes.drop(
            "pkcs11.session_pool_timeout_milli",
            "server.request_timeout_ms (200 ms) bounds the wait for a session plus the HSM \
             call, and hsm.queue_depth (256) the requests waiting",
        );
    }
    if p.session_eager_close.is_some() {
        notes.drop(
            "pkcs11.session_eager_close",
            "sessions are long-lived; broken ones are replaced automatically",
        );
    }
    if p.context_read_timeout_milli.is_some() {
        notes.drop(
            "pkcs11.context_read_timeout_milli",
            "no context lock: after device errors the PKCS#11 context is rebuilt in the \
             background while requests fail fast",
        );
    }
    if let Some(caps) = &sample.hsm_capabilities {
        let reason = "this proxy always draws the GCM IV from the OS CSPRNG and passes it to \
                      the HSM";
        if caps.can_generate_iv {
            notes.attention(
                "hsm_capabilities.can_generate_iv",
                format!(
                    "{reason}; the sample let this HSM generate it. An HSM that refuses \
                     caller-supplied IVs (e.g. some in FIPS mode) fails Encrypt: test first"
                ),
            );
        } else {
            notes.drop("hsm_capabilities", reason);
        }
    }
    notes.attention(
        "hsm.health_key_label",
        "new here: the deep health check encrypts with its own AES key \
         xks-proxy-health-check, created on the token at first start \
         (hsm.create_health_key = true)",
    );
}

fn logging(sample: &Sample, out: &mut String, notes: &mut Notes) {
    let Some(t) = &sample.tracing else { return };
    if let Some(level) = &t.level {
        let lower = level.trim().to_ascii_lowercase();
        if ["trace", "debug", "info", "warn", "error"].contains(&lower.as_str()) {
            let _ = writeln!(out, "\n[logging]\nlevel = {}", quoted(&lower));
            if lower == "trace" || lower == "debug" {
                notes.attention(
                    "tracing.level",
                    format!(
                        "carried over as {lower:?}; the sample's own advice is INFO in production"
                    ),
                );
            }
        } else {
            notes.drop(
                "tracing.level",
                format!("{level:?} is not TRACE, DEBUG, INFO, WARN or ERROR; default info kept"),
            );
        }
    }
    if t.is_file_writer_enabled
        || t.directory.is_some()
        || t.file_prefix.is_some()
        || t.rotation_kind.is_some()
    {
        notes.drop(
            "tracing.is_file_writer_enabled, directory, file_prefix, rotation_kind",
            "logs go to stdout only (journald or the container runtime keep them); no \
             rolling files, so the sample's xks-proxy_cleanlogs.timer is not needed",
        );
    }
    if !t.is_stdout_writer_enabled {
        notes.attention(
            "tracing.is_stdout_writer_enabled",
            "false in the sample; this proxy always logs to stdout",
        );
    }
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, String> {
    let value = value.trim();
    if value.is_empty() {
        Err(format!(
            "{field} is empty, but the sample's security settings need it"
        ))
    } else {
        Ok(value)
    }
}

fn relative(path: &str, field: &str, notes: &mut Notes) {
    if Path::new(path).is_relative() {
        notes.attention(
            field,
            format!(
                "{path:?} is relative: the sample resolved it against its working \
                 directory, this proxy against its own; make it absolute"
            ),
        );
    }
}
