//! The command line and the SigV4 credential it points to: `--console-json` (the file the
//! proxy's `credentials new --output console-json` writes) or `--access-key-id` plus `--secret`
//! / `XKS_LOAD_SECRET`.

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

/// What the workers send.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Operation {
    Encrypt,
    Decrypt,
    /// GetKeyMetadata on the key: SigV4, JSON and the audit line, and for a key whose
    /// attributes cannot change, no PKCS#11 call (the proxy answers from its key cache).
    Metadata,
    Health,
    /// Unsigned `GET /ping` on the same host (the floor: TLS, HTTP and routing only). The
    /// proxy does not count `/ping` as activity and closes a connection that carries nothing
    /// else after its handshake timeout (5 s by default); a request racing that close counts
    /// as a transport error (`channel closed`). `--compare-ping` is not affected.
    Ping,
}

impl Operation {
    /// The name printed in the summary.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Metadata => "metadata",
            Self::Health => "health",
            Self::Ping => "ping",
        }
    }
}

/// Closed- or open-loop load generator for a loopback xks-proxy (see the module docs).
// No `Debug`: the struct holds the secret.
#[derive(Parser)]
#[command(
    name = "xks_load",
    about = "SigV4 load generator for a loopback xks-proxy (encrypt, decrypt, metadata, health \
             or ping; closed loop, open loop with --rate, or --compare-ping)"
)]
pub(crate) struct Args {
    /// The key's Encrypt URL, https://HOST:PORT/PREFIX/kms/xks/v1/keys/KEY/encrypt (loopback only).
    #[arg(
        long,
        default_value = "https://localhost:8443/demo/kms/xks/v1/keys/demo-key-1/encrypt"
    )]
    pub(crate) url: String,
    /// PEM file with the CA certificate(s) that issued the proxy's TLS certificate.
    #[arg(long)]
    pub(crate) cacert: PathBuf,
    /// PEM client certificate chain for mTLS (with --key).
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// KMS console JSON with XksProxyAuthenticationCredential.{AccessKeyId,RawSecretAccessKey}.
    #[arg(long, conflicts_with_all = ["access_key_id", "secret"])]
    pub(crate) console_json: Option<PathBuf>,
    /// SigV4 access key id (with --secret).
    #[arg(long, requires = "secret")]
    pub(crate) access_key_id: Option<String>,
    /// SigV4 secret (with --access-key-id); prefer XKS_LOAD_SECRET or --console-json.
    #[arg(long, env = "XKS_LOAD_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// Region of the SigV4 credential scope.
    #[arg(long, default_value = "us-east-1")]
    pub(crate) region: String,
    /// Number of connections, each with at most one request in flight (the closed loop's
    /// workers; with --rate, the most requests in flight).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(crate) duration: u64,
    /// Also stop after this many measured requests.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) requests: Option<u64>,
    /// Warm-up seconds before measuring (requests sent, not counted).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub(crate) warmup: u64,
    /// Use HTTP/2 (one connection per worker) instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    pub(crate) http2: bool,
    /// Plaintext size for encrypt/decrypt.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub(crate) plaintext_bytes: u32,
    /// Additional authenticated data size for encrypt/decrypt (0 = none sent).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub(crate) aad_bytes: u32,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Operation::Encrypt)]
    pub(crate) operation: Operation,
    /// Open loop: send R requests per second on a fixed schedule from the start; latency is
    /// measured from each request's intended send time (no coordinated omission).
    #[arg(long, value_name = "R", value_parser = parse_rate, conflicts_with = "compare_ping")]
    pub(crate) rate: Option<f64>,
    /// One connection alternating one `GET /ping` and one --operation request; prints both
    /// latencies and the ratio of their p50s (use with --concurrency 1, the default here).
    #[arg(long, conflicts_with = "concurrency")]
    pub(crate) compare_ping: bool,
    /// Tokio worker threads of the load tool (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub(crate) client_threads: usize,
}

/// `--rate`: a finite request rate between 0.1 and 1,000,000 per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if !(0.1..=1_000_000.0).contains(&rate) {
        return Err(format!(
            "{rate} is not between 0.1 and 1000000 requests per second"
        ));
    }
    Ok(rate)
}

/// A SigV4 credential. No `Debug`, so the secret cannot end up in output.
pub(crate) struct Credential {
    pub(crate) access_key_id: String,
    pub(crate) secret: String,
    pub(crate) region: String,
}

/// The credential from `--console-json`, or from `--access-key-id` with `--secret`.
pub(crate) fn load_credential(args: &Args) -> Result<Credential, String> {
    let (access_key_id, secret) = match (&args.console_json, &args.access_key_id, &args.secret) {
        (Some(path), _, _) => read_console_json(path)?,
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        _ => {
            return Err(
                "give --console-json, or --access-key-id with --secret / XKS_LOAD_SECRET".into(),
            );
        }
    };
    if access_key_id.is_empty() || secret.is_empty() {
        return Err("the access key id and the secret must not be empty".into());
    }
    Ok(Credential {
        access_key_id,
        secret,
        region: args.region.clone(),
    })
}

/// `(AccessKeyId, RawSecretAccessKey)` from a KMS console JSON file.
fn read_console_json(path: &Path) -> Result<(String, String), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let credential = &json["XksProxyAuthenticationCredential"];
    let field = |name: &str| {
        credential[name].as_str().map(str::to_owned).ok_or_else(|| {
            format!(
                "{} has no XksProxyAuthenticationCredential.{name} string",
                path.display()
            )
        })
    };
    Ok((field("AccessKeyId")?, field("RawSecretAccessKey")?))
}
