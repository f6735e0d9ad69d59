//! `xks-proxy import-config --from aws-sample FILE [--output OUT] [--token-label LABEL]`: turns
//! the settings TOML of AWS's sample proxy (`aws-samples/aws-kms-xks-proxy`) into our
//! configuration.
//!
//! Carried over: the listener (`server.ip`/`port`), TLS and mTLS files and the client name,
//! plain HTTP when the sample ran without TLS, every external key store (prefix, SigV4
//! credential with its secret inline, key ids, the sample's SigV4 region), the PKCS#11 module
//! and PIN, the session pool size, the plaintext/AAD limits, the log level, and the sample's
//! `ciphertext_metadata_b64` as `[key_stores.aws_sample_migration]` in every key store (so
//! Decrypt accepts the sample's ciphertexts). Everything else is listed, with the reason,
//! at the top of the output and on stderr; so is every value carried over that needs a look.
//!
//! A value our validation refuses (e.g. an access key id outside AU-14) is still written, so
//! nothing is lost silently: `check-config` then fails and names the field. Secrets and the
//! PIN never reach stderr, not even in a parse error.

mod key_stores;
mod mapping;
mod render;
mod sample;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use zeroize::Zeroizing;

/// `import-config …`.
#[derive(Debug, Args)]
pub struct ImportConfigArgs {
    /// The kind of configuration FILE is.
    #[arg(long, value_enum)]
    pub from: ImportSource,
    /// The other proxy's settings file.
    pub file: PathBuf,
    /// Write the configuration to this new file (mode 0600) instead of stdout; an existing
    /// file is never overwritten.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The HSM token's label. The sample always used the first PKCS#11 slot, which this proxy
    /// does not do; without this option `hsm.token_label` is written empty.
    #[arg(long)]
    pub token_label: Option<String>,
}

/// Where a configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum ImportSource {
    /// The settings TOML of AWS's sample proxy, aws-samples/aws-kms-xks-proxy (xks-axum).
    AwsSample,
}

/// Runs `import-config`: the configuration to stdout or `--output`, the notes to stderr.
pub fn run(args: &ImportConfigArgs) -> Result<(), String> {
    let ImportSource::AwsSample = args.from;
    if let Some(out) = &args.output
        && out.symlink_metadata().is_ok()
    {
        return Err(refuse_overwrite(out));
    }
    let file = args.file.display();
    let text = std::fs::read_to_string(&args.file)
        .map(Zeroizing::new)
        .map_err(|e| format!("{file}: cannot read the sample's settings file: {e}"))?;
    let sample: sample::Sample = toml::from_str(&text).map_err(|e| {
        format!(
            "{file}: not a settings file of AWS's sample proxy: {}",
            describe(&e, &text)
        )
    })?;
    let options = mapping::Options {
        token_label: args.token_label.as_deref(),
    };
    let converted = mapping::convert(sample, &options).map_err(|e| format!("{file}: {e}"))?;
    let mut toml = Zeroizing::new(render::header(&file.to_string(), &converted.notes));
    toml.push_str(&converted.body);
    match &args.output {
        Some(out) => write_new(out, &toml)?,
        None => print!("{}", toml.as_str()),
    }
    for line in converted.notes.lines() {
        eprintln!("xks-proxy: import-config: {line}");
    }
    if let Some(out) = &args.output {
        eprintln!(
            "xks-proxy: wrote {}; validate it with: xks-proxy check-config --config {}",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

/// A TOML error as `line L, column C: message`, without the source excerpt `Display` adds:
/// that excerpt could be the line holding the PIN or a secret.
fn describe(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let before = text.as_bytes().get(..span.start).unwrap_or(text.as_bytes());
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    format!("line {line}, column {column}: {message}")
}

fn refuse_overwrite(out: &Path) -> String {
    format!(
        "--output {}: the file exists; not overwritten (remove it or choose another path)",
        out.display()
    )
}

/// Creates `out` (which must not exist), readable by its owner only: it holds secrets.
fn write_new(out: &Path, toml: &str) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => refuse_overwrite(out),
        _ => format!("--output {}: {e}", out.display()),
    })?;
    file.write_all(toml.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("--output {}: {e}", out.display()))
}

#[cfg(test)]
mod tests;
