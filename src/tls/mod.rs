//! TLS front end: the rustls `ServerConfig` the listener uses (XKS spec §1.1 TR-1…9, §1.2
//! MT-1…8; checklist §7 items 22, 23, 33).
//!
//! * TLS 1.2 and 1.3 only (TR-4), with exactly the spec's four suites (TR-5, [`CIPHER_SUITES`])
//!   and the ECDHE groups X25519, P-256 and P-384, from the crypto provider chosen at build
//!   time ([`provider`]: ring, aws-lc-rs, or aws-lc-rs FIPS, which drops ChaCha20 and X25519
//!   and must report FIPS mode or the configuration is refused).
//! * ALPN `h2` then `http/1.1` (TR-2, TR-3): HTTP/1.1 is always available.
//! * The whole chain from the PEM file is served, leaf first (TR-7).
//! * Session resumption is on (TR-9): stateless tickets (TLS 1.2 and 1.3, keys rotated every
//!   6 hours) and a server-side session cache. 0-RTT stays off. Tickets and cache belong to one
//!   `ServerConfig`, so a rebuilt config (reload) never resumes sessions of the old one.
//! * mTLS ([`ClientAuth::Required`]) uses [`NamePinnedClientVerifier`]: chain to the CA bundle
//!   plus a subject name pin, every rejection ending in `handshake_failure` (MT-7).

mod client_auth;
mod pem;
pub mod provider;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;

pub use client_auth::{NamePinnedClientVerifier, certificate_subject};
pub use provider::CIPHER_SUITES;

use crate::config::{ClientAuth, ClientSubjectName, TlsSettings};
use crate::metrics::Metrics;

/// ALPN protocols offered, in server preference order (TR-3).
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Server-side session cache entries (TLS 1.2 session ids and TLS 1.3 stateful resumption).
const SESSION_CACHE_SIZE: usize = 1024;

/// Why the TLS configuration could not be built. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{}: malformed PEM: {source}", path.display())]
    InvalidPem {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate chain file holds no `CERTIFICATE` section.
    #[error("{}: no CERTIFICATE found in PEM file", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate cannot be parsed or has out-of-range fields.
    #[error("{}: invalid certificate: {reason}", path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 private key.
    #[error("{}: no private key (PKCS#8, PKCS#1 or SEC1) found in PEM file", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a type or curve rustls cannot sign with (the build's provider).
    #[error("{}: unsupported private key: {source}", path.display())]
    UnsupportedPrivateKey {
        /// The file.
        path: PathBuf,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The private key does not belong to the leaf (first) certificate of the chain.
    #[error(
        "{}: private key does not match the first certificate of {}: {source}",
        private_key.display(),
        certificate_chain.display()
    )]
    KeyMismatch {
        /// The chain file.
        certificate_chain: PathBuf,
        /// The key file.
        private_key: PathBuf,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The mTLS CA bundle holds no certificate.
    #[error("{}: CA bundle contains no CERTIFICATE", path.display())]
    EmptyCaBundle {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA bundle is not a usable trust anchor.
    #[error("{}: CA certificate #{index} is invalid: {source}", path.display())]
    InvalidCaCertificate {
        /// The file.
        path: PathBuf,
        /// Zero-based position in the file.
        index: usize,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built from the CA bundle.
    #[error("{}: cannot build the client certificate verifier: {source}", path.display())]
    ClientVerifier {
        /// The CA bundle file.
        path: PathBuf,
        /// The rustls error.
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the protocol settings or the session ticketer (not file-related).
    #[error("TLS configuration rejected by rustls: {0}")]
    Rustls(#[source] rustls::Error),
    /// A `fips` build whose configuration rustls does not report as FIPS (`ServerConfig::fips()`
    /// false: the AWS-LC module is not in FIPS mode, or a non-approved algorithm slipped in).
    #[error(
        "this build requires FIPS mode, but the TLS configuration (provider {}) is not FIPS \
         compliant; refusing to serve",
        provider::NAME
    )]
    NotFips,
}

/// A built TLS configuration plus facts about it that metrics need.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The server configuration, ready for `tokio_rustls::TlsAcceptor::from`.
    pub config: Arc<ServerConfig>,
    /// `notAfter` of the served leaf certificate (for a seconds-until-expiry gauge).
    pub leaf_not_after: SystemTime,
}

/// Loads certificate chain, key and (for mTLS) CA bundle once and builds the configuration.
///
/// With `metrics`, the mTLS verifier counts every rejected client certificate there
/// (`xks_authentication_failures_total{reason="mtls"}`). The caller records
/// [`TlsMaterial::leaf_not_after`] with [`Metrics::set_tls_not_after`] once it serves the
/// configuration.
pub fn load(
    settings: &TlsSettings,
    metrics: Option<Arc<Metrics>>,
) -> Result<TlsMaterial, TlsError> {
    let provider = Arc::new(provider::provider());
    let chain_path = &settings.certificate_chain;
    let certified = pem::certified_key(chain_path, &settings.private_key, &provider)?;
    let leaf_not_after = leaf_expiry(chain_path, &certified.cert)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?;
    let builder = match &settings.client_auth {
        ClientAuth::Disabled => builder.with_no_client_auth(),
        ClientAuth::Required {
            ca_bundle,
            allowed_subject_names,
        } => builder.with_client_cert_verifier(client_verifier(
            ca_bundle,
            allowed_subject_names,
            provider,
            metrics,
        )?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = provider::ticketer().map_err(TlsError::Rustls)?;
    if provider::FIPS_REQUIRED && !config.fips() {
        return Err(TlsError::NotFips);
    }
    Ok(TlsMaterial {
        config: Arc::new(config),
        leaf_not_after,
    })
}

/// Builds the server configuration described in the module docs from `settings`, without
/// metrics (configuration checks, tests); [`load`] is the serving path.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    load(settings, None).map(|material| material.config)
}

/// The `notAfter` of the leaf (first) certificate of `settings.certificate_chain`, reading
/// only that file. Prefer [`load`] when the configuration is built as well.
pub fn leaf_not_after(settings: &TlsSettings) -> Result<SystemTime, TlsError> {
    leaf_expiry(
        &settings.certificate_chain,
        &pem::certificates(&settings.certificate_chain)?,
    )
}

/// The leaf's `notAfter`; warns when it has passed. Serving an expired certificate anyway
/// keeps a reload from taking the listener down; KMS will refuse it.
fn leaf_expiry(path: &Path, chain: &[CertificateDer<'_>]) -> Result<SystemTime, TlsError> {
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    };
    let not_after = pem::not_after(path, leaf)?;
    if not_after <= SystemTime::now() {
        tracing::warn!(path = %path.display(), "the server certificate has expired");
    }
    Ok(not_after)
}

/// Chain validation against `ca_bundle` (client auth mandatory, no CRLs, the CA subjects sent
/// as hints) wrapped in the name pin.
fn client_verifier(
    ca_bundle: &Path,
    allowed: &[ClientSubjectName],
    provider: Arc<CryptoProvider>,
    metrics: Option<Arc<Metrics>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(pem::ca_bundle(ca_bundle)?);
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|source| TlsError::ClientVerifier {
            path: ca_bundle.to_owned(),
            source,
        })?;
    let verifier = NamePinnedClientVerifier::new(webpki, allowed.to_vec());
    Ok(Arc::new(match metrics {
        Some(metrics) => verifier.with_metrics(metrics),
        None => verifier,
    }))
}

#[cfg(test)]
mod tests;
