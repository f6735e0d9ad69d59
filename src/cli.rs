//! The `xks-proxy` command line: `serve`, `keys create|list`, `credentials new`,
//! `check-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::config::{self, AccessKeyId, Settings, Transport, UriPrefix};
use crate::hsm::NoObserver;
use crate::hsm::pkcs11::Pkcs11Backend;
use crate::hsm::{FleetBackend, KeyUsage};
use crate::xks::ExternalKeyId;

pub mod import_config;
mod serve;

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
    /// Manage AES-256 keys on the configured token.
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

/// `keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an AES-256 token key: private, sensitive, non-extractable, neither modifiable
    /// nor copyable, with exactly the given usages.
    Create {
        /// Configuration file whose `[hsm]` section names the module, token and PIN.
        #[command(flatten)]
        config: ConfigArg,
        /// The key's label, used by KMS as `XksKeyId` (A-Z a-z 0-9 - . _, ≤ 128).
        #[arg(long)]
        label: String,
        /// Comma-separated usages from encrypt, decrypt, wrap, unwrap, sign, verify, derive;
        /// `none` (or an empty string) for a key that may do nothing.
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
    },
    /// Generate one AES-256 key (OS CSPRNG) and create it, with the same key material, in
    /// every HSM member's token (`[[hsm.members]]`, else the `[hsm]` token), so that a
    /// SoftHSM/test fleet holds the same keys. Refuses if any member already has the label.
    /// For real HSM clusters, replicate keys with the vendor's own cloning tools instead.
    Import {
        /// Configuration file whose `[hsm]` section names the module, tokens and PINs.
        #[command(flatten)]
        config: ConfigArg,
        /// The key's label, used by KMS as `XksKeyId` (A-Z a-z 0-9 - . _, ≤ 128).
        #[arg(long)]
        label: String,
        /// Comma-separated usages, as for `keys create`.
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
    },
    /// List the keys on the token: label, type, size, usages; keys the proxy refuses to serve
    /// (not private, not sensitive or extractable) are marked REFUSED with the reason.
    List {
        /// Configuration file whose `[hsm]` section names the module, token and PIN.
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Parses `--usage`: comma-separated names, `none` or empty for no usage at all.
fn parse_usages(list: &str) -> Result<Vec<KeyUsage>, String> {
    let mut usages = Vec::new();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "none")
    {
        usages.push(match name.to_ascii_lowercase().as_str() {
            "encrypt" => KeyUsage::Encrypt,
            "decrypt" => KeyUsage::Decrypt,
            "wrap" => KeyUsage::Wrap,
            "unwrap" => KeyUsage::Unwrap,
            "sign" => KeyUsage::Sign,
            "verify" => KeyUsage::Verify,
            "derive" => KeyUsage::Derive,
            _ => {
                return Err(format!(
                    "--usage: unknown usage {name:?}; use encrypt, decrypt, wrap, unwrap, sign, \
                     verify, derive or none"
                ));
            }
        });
    }
    usages.sort();
    usages.dedup();
    Ok(usages)
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
        Command::Keys(KeysCommand::Create {
            config,
            label,
            usage,
        }) => create_key(&config.config, &label, &usage),
        Command::Keys(KeysCommand::Import {
            config,
            label,
            usage,
        }) => import_key(&config.config, &label, &usage),
        Command::Keys(KeysCommand::List { config }) => list_keys(&config.config),
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
        println!(
            "  key store {:?}: XksProxyUriPath {} ({} credential(s))",
            store.name,
            store.prefix.uri_path(),
            store.credentials.len()
        );
    }
    Ok(())
}

fn open_backend(path: &Path) -> Result<Arc<Pkcs11Backend>, String> {
    let settings = load_settings(path)?;
    init_cli_logging();
    Pkcs11Backend::open(settings.hsm.primary())
        .map(Arc::new)
        .map_err(|e| format!("cannot open the HSM: {e}"))
}

fn create_key(path: &Path, label: &str, usage: &str) -> Result<(), String> {
    let label = ExternalKeyId::parse(label).map_err(|e| format!("--label: {e}"))?;
    let usages = parse_usages(usage)?;
    let backend = open_backend(path)?;
    backend
        .create_key(&label, &usages)
        .map_err(|e| format!("cannot create key {label}: {e}"))?;
    let names: Vec<_> = usages.iter().map(|u| u.as_str()).collect();
    println!(
        "created AES-256 key {label} with usages [{}]",
        names.join(",")
    );
    Ok(())
}

fn import_key(path: &Path, label: &str, usage: &str) -> Result<(), String> {
    let label = ExternalKeyId::parse(label).map_err(|e| format!("--label: {e}"))?;
    let usages = parse_usages(usage)?;
    let settings = load_settings(path)?;
    init_cli_logging();
    let members = settings.hsm.members();
    let fleet = FleetBackend::open(&members, Arc::new(NoObserver))
        .map_err(|e| format!("cannot open the HSM: {e}"))?;
    for member in fleet.members() {
        let exists = member
            .backend()
            .key_exists(&label)
            .map_err(|e| format!("member {}: cannot look for key {label}: {e}", member.id()))?;
        if exists {
            return Err(format!(
                "member {} already has a key labelled {label}; nothing imported",
                member.id()
            ));
        }
    }
    let mut value = Zeroizing::new([0u8; 32]);
    getrandom::fill(value.as_mut_slice()).map_err(|e| format!("no randomness: {e}"))?;
    let mut done = Vec::new();
    for member in fleet.members() {
        member
            .backend()
            .import_key(&label, &value, &usages)
            .map_err(|e| {
                format!(
                    "member {}: cannot import key {label}: {e} (already imported into: [{}])",
                    member.id(),
                    done.join(", ")
                )
            })?;
        done.push(member.id().to_owned());
    }
    let names: Vec<_> = usages.iter().map(|u| u.as_str()).collect();
    println!(
        "imported AES-256 key {label} with usages [{}] into {} member(s): {}",
        names.join(","),
        done.len(),
        done.join(", ")
    );
    Ok(())
}

fn list_keys(path: &Path) -> Result<(), String> {
    let backend = open_backend(path)?;
    let keys = backend
        .list_keys()
        .map_err(|e| format!("cannot list keys: {e}"))?;
    println!("{:<40} {:<12} USAGES", "LABEL", "KEY SPEC");
    let mut refused = 0usize;
    for key in keys {
        let usages: Vec<_> = key.usages.iter().map(|u| u.as_str()).collect();
        let usages = if usages.is_empty() {
            "-".to_owned()
        } else {
            usages.join(",")
        };
        let problems = key.protection.problems();
        let note = if !problems.is_empty() {
            refused += 1;
            format!("  REFUSED: {}; never served", problems.join(", "))
        } else if key.health_check {
            "  (health-check key, not served to KMS)".to_owned()
        } else {
            String::new()
        };
        println!("{:<40} {:<12} {usages}{note}", key.label, key.spec.as_str());
    }
    if refused > 0 {
        // On stderr, so that scripts reading the table still get it unchanged.
        eprintln!(
            "xks-proxy: warning: {refused} key(s) marked REFUSED: the proxy refuses to serve keys \
             that are not private, sensitive and non-extractable (anyone with token access can \
             plant a public key under a known value); recreate them with `keys create`"
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
