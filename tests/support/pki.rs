//! A throwaway PKI made with rcgen at test time: CAs (roots and intermediates), server
//! certificates for `localhost`/127.0.0.1, and client certificates for the mTLS cases
//! (MT-1…8), plus [`Pki`], the fixture of the TLS front tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use xks_proxy::config::{ClientAuth, ClientSubjectName, TlsSettings};

/// The name KMS presents in eu-west-1 (MT-4).
pub const KMS_NAME: &str = "cks.kms.eu-west-1.amazonaws.com";

/// A CA that can issue certificates.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// An issued certificate with its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivatePkcs8KeyDer<'static>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// Writes `{name}-chain.pem` (leaf + `ca`) and `{name}-key.pem` into `dir`.
    pub fn write(&self, dir: &Path, ca: &Ca, name: &str) -> (PathBuf, PathBuf) {
        let chain = dir.join(format!("{name}-chain.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&chain, format!("{}{}", self.cert_pem, ca.cert_pem)).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (chain, key)
    }
}

impl AsRef<Self> for Ca {
    fn as_ref(&self) -> &Self {
        self
    }
}

impl Ca {
    /// A self-signed root.
    pub fn new(name: &str) -> Self {
        Self::issued(name, None)
    }

    /// An intermediate CA issued by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        Self::issued(name, Some(self))
    }

    fn issued(name: &str, parent: Option<&Self>) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = match parent {
            Some(parent) => params.signed_by(&key, &parent.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }

    /// A server certificate for `localhost` and 127.0.0.1 with a fresh ECDSA key.
    pub fn server(&self) -> Leaf {
        self.server_with_key(KeyPair::generate().unwrap())
    }

    /// A server certificate for `localhost` and 127.0.0.1 with `key` (e.g. an RSA key).
    pub fn server_with_key(&self, key: KeyPair) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name = dn("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, key)
    }

    /// A client certificate with subject CN `cn` and optional SAN dNSNames.
    pub fn client(&self, cn: &str, sans: &[&str]) -> Leaf {
        self.issue(client_params(cn, sans), KeyPair::generate().unwrap())
    }

    /// A client certificate that expired yesterday.
    pub fn expired_client(&self, cn: &str) -> Leaf {
        let mut params = client_params(cn, &[]);
        params.not_before = OffsetDateTime::now_utc() - Duration::days(30);
        params.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        self.issue(params, KeyPair::generate().unwrap())
    }

    /// A certificate with subject CN `cn` whose only EKU is serverAuth.
    pub fn server_auth_only_client(&self, cn: &str) -> Leaf {
        let mut params = client_params(cn, &[]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, KeyPair::generate().unwrap())
    }

    fn issue(&self, params: CertificateParams, key: KeyPair) -> Leaf {
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

fn client_params(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = dn(cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Every client certificate of [`Pki`].
pub struct Clients {
    /// Subject CN = [`KMS_NAME`], no SAN.
    pub right_cn: Leaf,
    /// Subject CN = something else, SAN dNSName = [`KMS_NAME`].
    pub right_san_only: Leaf,
    /// Subject CN = another region's name.
    pub wrong_cn: Leaf,
    /// Right CN, issued by a CA the server does not trust.
    pub wrong_ca: Leaf,
    /// Right CN, expired.
    pub expired: Leaf,
    /// Right CN, but EKU serverAuth only.
    pub server_auth_only: Leaf,
}

/// A root and an intermediate CA serving `localhost` (ECDSA and RSA keys), its files on disk,
/// and client certificates for every mTLS case, issued by the root.
pub struct Pki {
    _dir: tempfile::TempDir,
    chain: PathBuf,
    key: PathBuf,
    rsa_chain: PathBuf,
    rsa_key: PathBuf,
    client_ca: PathBuf,
    /// The server's root, which clients trust.
    pub root: Ca,
    pub clients: Clients,
}

impl AsRef<Ca> for Pki {
    fn as_ref(&self) -> &Ca {
        &self.root
    }
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::new("xks test root");
        let intermediate = root.intermediate("xks test intermediate");
        let rogue = Ca::new("rogue root");

        let (chain, key) = intermediate
            .server()
            .write(dir.path(), &intermediate, "server");
        // ring cannot generate RSA keys, so the RSA server key is a fixed test-only fixture.
        let rsa = KeyPair::from_pem(include_str!("rsa-2048.key.pem")).unwrap();
        let (rsa_chain, rsa_key) =
            intermediate
                .server_with_key(rsa)
                .write(dir.path(), &intermediate, "rsa-server");
        let client_ca = root.write(dir.path(), "client-ca");

        let clients = Clients {
            right_cn: root.client(KMS_NAME, &[]),
            right_san_only: root.client("some client", &["other.example", KMS_NAME]),
            wrong_cn: root.client("cks.kms.us-east-1.amazonaws.com", &[]),
            wrong_ca: rogue.client(KMS_NAME, &[]),
            expired: root.expired_client(KMS_NAME),
            server_auth_only: root.server_auth_only_client(KMS_NAME),
        };
        Self {
            _dir: dir,
            chain,
            key,
            rsa_chain,
            rsa_key,
            client_ca,
            root,
            clients,
        }
    }

    /// Server settings without client authentication.
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            certificate_chain: self.chain.clone(),
            private_key: self.key.clone(),
            client_auth: ClientAuth::Disabled,
        }
    }

    /// Server settings with an RSA server key, without client authentication.
    pub fn tls_rsa(&self) -> TlsSettings {
        TlsSettings {
            certificate_chain: self.rsa_chain.clone(),
            private_key: self.rsa_key.clone(),
            client_auth: ClientAuth::Disabled,
        }
    }

    /// Server settings requiring a client certificate from the root with [`KMS_NAME`].
    pub fn mtls(&self) -> TlsSettings {
        TlsSettings {
            client_auth: ClientAuth::Required {
                ca_bundle: self.client_ca.clone(),
                allowed_subject_names: vec![ClientSubjectName::parse(KMS_NAME).unwrap()],
            },
            ..self.tls()
        }
    }
}
