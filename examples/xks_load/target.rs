//! Where requests go and how the connection is trusted: `--url` parsed into a loopback
//! [`Target`] (authority, TLS server name, addresses, and the encrypt, decrypt and health paths
//! derived from it), and the rustls client configuration built from `--cacert` and, for mTLS,
//! `--cert`/`--key`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper::Uri;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where requests go, parsed from `--url`.
pub(crate) struct Target {
    /// `host[:port]` as sent in `Host` / `:authority` and signed.
    pub(crate) authority: String,
    /// TLS server name.
    pub(crate) server_name: ServerName<'static>,
    /// Resolved loopback addresses.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) encrypt_path: String,
    pub(crate) decrypt_path: String,
    pub(crate) metadata_path: String,
    pub(crate) health_path: String,
    /// `/ping` (unsigned `GET`, outside the key store's prefix).
    pub(crate) ping_path: String,
}

/// The mTLS client identity: `--cert` (PEM chain, leaf first) and `--key` (PEM private key).
pub(crate) struct ClientIdentity<'a> {
    pub(crate) cert: &'a Path,
    pub(crate) key: &'a Path,
}

/// Parses `--url`, derives the decrypt and health paths and resolves the host, which must be
/// loopback: this tool is for measuring a local proxy, not for loading remote services.
pub(crate) async fn parse_target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid --url: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("--url must start with https://".into());
    }
    if uri.query().is_some() {
        return Err("--url must not have a query".into());
    }
    let authority = uri
        .authority()
        .ok_or("--url has no host")?
        .as_str()
        .to_owned();
    if authority.contains('@') {
        return Err("--url must not contain user info".into());
    }
    let host = uri.host().ok_or("--url has no host")?;
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path();
    // The canonical URI is the path as sent; with only these characters AWS's URI encoding
    // (single or double) leaves it unchanged, so signer and proxy agree.
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
    {
        return Err("--url path may only contain A-Z a-z 0-9 / - _ . ~".into());
    }
    let key_base = path
        .strip_suffix("/encrypt")
        .filter(|base| base.contains("/keys/"))
        .ok_or("--url must be a key's Encrypt URL, .../keys/KEY/encrypt")?;
    let api_base = key_base
        .rsplit_once("/keys/")
        .map(|(api, _)| api)
        .ok_or("--url must contain /keys/")?;

    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(bare_host.to_owned())
        .map_err(|e| format!("invalid TLS server name {bare_host:?}: {e}"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare_host, port))
        .await
        .map_err(|e| format!("cannot resolve {bare_host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{bare_host} resolves to no address"));
    }
    if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "{bare_host} resolves to {}, which is not loopback; xks_load only targets a local proxy",
            remote.ip()
        ));
    }
    Ok(Target {
        authority,
        server_name,
        addrs,
        encrypt_path: path.to_owned(),
        decrypt_path: format!("{key_base}/decrypt"),
        metadata_path: format!("{key_base}/metadata"),
        health_path: format!("{api_base}/health"),
        ping_path: "/ping".to_owned(),
    })
}

/// A TLS client configuration trusting `--cacert`, offering only `h2` or only `http/1.1`, and
/// presenting `identity` when the server asks for a client certificate.
pub(crate) fn tls_config(
    cacert: &Path,
    http2: bool,
    identity: Option<ClientIdentity<'_>>,
) -> Result<ClientConfig, String> {
    let pem =
        std::fs::read(cacert).map_err(|e| format!("cannot read {}: {e}", cacert.display()))?;
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", cacert.display()))?;
        pinned.push(cert.clone());
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate in {}: {e}", cacert.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {}", cacert.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| format!("TLS verifier: {e}"))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { pinned, webpki }));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let (chain, key) = read_identity(&identity)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate {}: {e}", identity.cert.display()))?
        }
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// The certificate chain and private key of `identity`, parsed with rustls-pki-types' PEM
/// reader.
fn read_identity(
    identity: &ClientIdentity<'_>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let (cert, key) = (identity.cert, identity.key);
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("no usable private key in {}: {e}", key.display()))?;
    Ok((chain, key))
}

/// Accepts a server certificate that is byte-for-byte one of the `--cacert` certificates (the
/// demo's self-signed certificate has `CA:TRUE`, which WebPKI rejects as an end entity even
/// when trusted; curl accepts it), and otherwise verifies normally against `--cacert` as
/// roots. Handshake signatures are always checked, so the server must hold the key.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
