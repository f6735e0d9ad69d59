//! The `xks-proxy` command line: `serve`, `keys create|import|rotate|list`, `credentials new`,
//! `check-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, AccessKeyId, Settings, Transport, UriPrefix};

pub mod import_config;
mod keys;
mod serve;

pub use keys::KeysCommand;

/// AWS KMS External Key Store proxy: SigV4 + TLS in front, PKCS#11 behind.
#[derive(Debug, Parser)]
#[command(name = "xks-proxy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ConfigArg),
    /// Manage AES-256 keys and their versions on the configured token or fleet.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage SigV4 credentials.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Validate a configuration file and report every error with its field path.
    CheckConfig(ConfigArg),
    /// Turn another proxy's settings (AWS's sample proxy) into this proxy's configuration,
    /// listing every setting not carried over.
    ImportConfig(import_config::ImportConfigArgs),
}

/// `--config FILE`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (TOML); `XKS__SECTION__KEY` environment variables override it.
    #[arg(
        long,
        short,
        env = "XKS_CONFIG",
        default_value = "/etc/xks-proxy/xks-proxy.toml"
    )]
    pub config: PathBuf,
}

/// `credentials …`.
#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Generate an access key id and secret for a key store (CFG-1).
    New {
        /// The key store's path prefix, e.g. /tenant-a (may be empty).
        #[arg(long, default_value = "")]
        prefix: String,
        /// What to print.
        #[arg(long, value_enum, default_value = "both")]
        output: CredentialOutput,
    },
}

/// Output of `credentials new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialOutput {
    /// The config snippet and the KMS console JSON.
    Both,
    /// Only the `[[key_stores.credentials]]` TOML snippet.
    Toml,
    /// Only the KMS console JSON file.
    ConsoleJson,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::run(&args.config),
        Command::CheckConfig(args) => check_config(&args.config),
        Command::ImportConfig(args) => import_config::run(&args),
        Command::Keys(command) => keys::run(command),
        Command::Credentials(CredentialsCommand::New { prefix, output }) => {
            new_credentials(&prefix, output)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xks-proxy: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates a configuration, rendering every error on failure.
pub(crate) fn load_settings(path: &Path) -> Result<Settings, String> {
    config::load(path).map_err(|errors| format!("{}: {errors}", path.display()))
}

fn check_config(path: &Path) -> Result<(), String> {
    let settings = load_settings(path)?;
    if let Transport::Tls(tls) = &settings.server.transport {
        crate::tls::server_config(tls).map_err(|e| format!("server.tls: {e}"))?;
    }
    for warning in settings.warnings() {
        eprintln!("xks-proxy: warning: {warning}");
    }
    println!("{}: OK", path.display());
    println!("  listen: {}", settings.server.listen);
    for store in &settings.key_stores {
        let policies = store
            .authorization
            .as_ref()
            .or(settings.authorization.as_ref());
        let authorization = match policies {
            Some(p) => format!(
                "Cedar policies {} ({} policies, {})",
                p.path.display(),
                p.len(),
                p.mode.as_str()
            ),
            None => "no secondary authorization".to_owned(),
        };
        println!(
            "  key store {:?}: XksProxyUriPath {} ({} credential(s)); {authorization}",
            store.name,
            store.prefix.uri_path(),
            store.credentials.len()
        );
    }
    Ok(())
}

/// The 32 characters KMS allows in an access key id (AU-14).
const ACCESS_KEY_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn new_credentials(prefix: &str, output: CredentialOutput) -> Result<(), String> {
    let prefix = UriPrefix::parse(prefix).map_err(|e| format!("--prefix: {e}"))?;
    let mut random = [0u8; 20 + 32];
    getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
    // 20 characters × 5 bits: the alphabet has exactly 32 symbols, so `% 32` is unbiased.
    let id: String = random[..20]
        .iter()
        .map(|b| char::from(ACCESS_KEY_ALPHABET[usize::from(b % 32)]))
        .collect();
    let id = AccessKeyId::parse(&id).map_err(|e| format!("generated id invalid: {e}"))?;
    // 256 bits of entropy, 44 Base64 characters (AU-14).
    let secret = crate::xks::wire::b64(&random[20..]);
    zeroize::Zeroize::zeroize(&mut random);
    let console = serde_json::json!({
        "XksProxyUriPath": prefix.uri_path(),
        "XksProxyAuthenticationCredential": { "AccessKeyId": id.as_str(), "RawSecretAccessKey": secret },
    });
    let toml =
        format!("[[key_stores.credentials]]\naccess_key_id = \"{id}\"\nsecret = \"{secret}\"");
    match output {
        CredentialOutput::Toml => println!("{toml}"),
        CredentialOutput::ConsoleJson => println!("{console}"),
        CredentialOutput::Both => {
            println!("# Add to the [[key_stores]] entry with path_prefix = \"{prefix}\":");
            println!("{toml}\n");
            println!("# KMS console proxy configuration file (keep it secret):");
            println!("{console}");
        }
    }
    Ok(())
}

/// Logging for one-shot commands: warnings only, to stderr.
fn init_cli_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .try_init();
}
