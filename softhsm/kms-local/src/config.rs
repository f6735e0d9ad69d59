//! Command-line configuration, turned into validated [`Settings`] and the TLS configurations
//! before anything listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// `xks-kms-local`: a local KMS front for external key stores (test tooling).
#[derive(Debug, clap::Parser)]
#[command(name = "xks-kms-local", version, about)]
pub struct Args {
    /// Address to serve the KMS API on.
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub listen: SocketAddr,
    /// Persist stores and keys to this JSON file (created if absent; holds key material).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// PEM CA bundle trusted for the XKS proxies' certificates (default: the system bundle).
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// PEM client certificate chain presented to the proxies (mTLS).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The region in ARNs and in the SigV4 scope of XKS calls.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// The account id in ARNs.
    #[arg(long, default_value = "111122223333")]
    pub account_id: String,
    /// Require SigV4 (service `kms`) on inbound calls with this credential, `AKID:SECRET`.
    /// Without it, signatures are accepted as they are. The environment variable keeps the
    /// secret out of `ps`.
    #[arg(long, env = "XKS_KMS_LOCAL_CREDENTIALS", hide_env_values = true)]
    pub credentials: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (needs `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Deadline of each XKS call in milliseconds (KMS allows 250).
    #[arg(long, default_value_t = 250)]
    pub xks_timeout_ms: u64,
    /// `tracing` filter for the log on stderr.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// An inbound SigV4 credential. `Debug` shows the access key id only.
#[derive(Clone)]
pub struct InboundCredential {
    /// Access key id.
    pub access_key_id: String,
    /// Secret.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for InboundCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundCredential")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What the operations need to know about the front itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Region in ARNs.
    pub region: String,
    /// Account id in ARNs.
    pub account_id: String,
    /// Inbound SigV4 credential; `None` accepts any request.
    pub inbound: Option<InboundCredential>,
    /// Deadline of each XKS call.
    pub xks_timeout: Duration,
}

impl Settings {
    /// The principal sent to the proxy as `awsPrincipalArn`.
    pub fn principal_arn(&self) -> String {
        match &self.inbound {
            Some(c) => format!("arn:aws:iam::{}:user/{}", self.account_id, c.access_key_id),
            None => format!("arn:aws:iam::{}:root", self.account_id),
        }
    }

    /// A key's ARN.
    pub fn key_arn(&self, key_id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{key_id}",
            self.region, self.account_id
        )
    }
}

/// A configuration problem found at startup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--credentials` is not `AKID:SECRET`.
    #[error("--credentials must be AKID:SECRET")]
    Credentials,
    /// A PEM file could not be read.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The account id is not 12 digits or the region is empty.
    #[error("--account-id must be 12 digits and --region non-empty")]
    Identity,
}

impl Args {
    /// The validated settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        if self.account_id.len() != 12
            || !self.account_id.bytes().all(|b| b.is_ascii_digit())
            || self.region.is_empty()
        {
            return Err(ConfigError::Identity);
        }
        let inbound = self
            .credentials
            .as_deref()
            .map(|c| {
                c.split_once(':')
                    .filter(|(id, secret)| !id.is_empty() && !secret.is_empty())
                    .map(|(id, secret)| InboundCredential {
                        access_key_id: id.to_owned(),
                        secret: Zeroizing::new(secret.to_owned()),
                    })
                    .ok_or(ConfigError::Credentials)
            })
            .transpose()?;
        Ok(Settings {
            region: self.region.clone(),
            account_id: self.account_id.clone(),
            inbound,
            xks_timeout: Duration::from_millis(self.xks_timeout_ms),
        })
    }

    /// The TLS client configuration for calls to proxies.
    pub fn client_tls(&self) -> Result<Arc<ClientConfig>, ConfigError> {
        let bundle = self
            .ca_bundle
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        let mut roots = RootCertStore::empty();
        for cert in certificates(&bundle)? {
            roots.add(cert)?;
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The TLS server configuration when `--tls-cert` is given.
    pub fn server_tls(&self) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certificates(cert)?, private_key(key)?)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem_error = |e: rustls_pki_types::pem::Error| ConfigError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(ConfigError::Pem {
            path: path.to_owned(),
            message: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| ConfigError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
