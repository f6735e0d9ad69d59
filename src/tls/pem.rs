//! PEM loading for the server chain, its private key and the mTLS CA bundle (TR-7, MT-2).
//!
//! Uses `rustls_pki_types::pem::PemObject`; every error names the file and what is wrong.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Reads every `CERTIFICATE` section of `path`, in file order; at least one.
pub(super) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Loads the server chain and key and checks that the key belongs to the leaf.
pub(super) fn certified_key(
    chain_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(chain_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: key_path.to_owned(),
        },
        other => pem_error(key_path, other),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedPrivateKey {
            path: key_path.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Like `CertifiedKey::from_der`: a key type that cannot report its public key is not
        // a mismatch (ring's and aws-lc-rs's keys all can).
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(source) => Err(TlsError::KeyMismatch {
            certificate_chain: chain_path.to_owned(),
            private_key: key_path.to_owned(),
            source,
        }),
    }
}

/// Loads the trusted client CAs; at least one, each a valid trust anchor.
pub(super) fn ca_bundle(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = certificates(path).map_err(|e| match e {
        TlsError::NoCertificate { path } => TlsError::EmptyCaBundle { path },
        other => other,
    })?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| TlsError::InvalidCaCertificate {
                path: path.to_owned(),
                index,
                source,
            })?;
    }
    Ok(roots)
}

/// The `notAfter` of `leaf`, which was read from `path`.
pub(super) fn not_after(path: &Path, leaf: &CertificateDer<'_>) -> Result<SystemTime, TlsError> {
    let invalid = |reason: String| TlsError::InvalidCertificate {
        path: path.to_owned(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| invalid(format!("leaf certificate does not parse: {e}")))?;
    let seconds = cert.validity().not_after.timestamp();
    let since_epoch = u64::try_from(seconds)
        .map_err(|_| invalid(format!("leaf notAfter {seconds} is before 1970")))?;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(since_epoch))
        .ok_or_else(|| invalid(format!("leaf notAfter {seconds} is out of range")))
}

fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    match error {
        pem::Error::Io(source) => TlsError::Unreadable {
            path: path.to_owned(),
            source,
        },
        source => TlsError::InvalidPem {
            path: path.to_owned(),
            source,
        },
    }
}
