//! A throwaway PKI generated per test with rcgen: a root and an intermediate CA serving
//! `localhost`, and client certificates for every mTLS case.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use xks_proxy::config::{ClientAuth, ClientSubjectName, TlsSettings};

/// The name KMS presents in eu-west-1 (MT-4).
pub(crate) const KMS_NAME: &str = "cks.kms.eu-west-1.amazonaws.com";

/// A client certificate chain and its key.
pub(crate) struct ClientCert {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

/// Every client certificate the tests use.
pub(crate) struct Clients {
    /// Subject CN = [`KMS_NAME`], no SAN.
    pub(crate) right_cn: ClientCert,
    /// Subject CN = something else, SAN dNSName = [`KMS_NAME`].
    pub(crate) right_san_only: ClientCert,
    /// Subject CN = another region's name.
    pub(crate) wrong_cn: ClientCert,
    /// Right CN, issued by a CA the server does not trust.
    pub(crate) wrong_ca: ClientCert,
    /// Right CN, expired in 2021.
    pub(crate) expired: ClientCert,
    /// Right CN, but EKU serverAuth only.
    pub(crate) server_auth_only: ClientCert,
}

/// Files on disk plus the client side's trust and certificates.
pub(crate) struct Pki {
    _dir: tempfile::TempDir,
    chain: PathBuf,
    key: PathBuf,
    rsa_chain: PathBuf,
    rsa_key: PathBuf,
    client_ca: PathBuf,
    /// The server's root, which clients trust.
    pub(crate) root: CertificateDer<'static>,
    pub(crate) clients: Clients,
}

struct Ca {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = match parent {
        Some(parent) => params.signed_by(&key, &parent.issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    Ca {
        cert: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf(
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    expired: bool,
    issuer: &Ca,
    key: KeyPair,
) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![eku];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    (params.signed_by(&key, &issuer.issuer).unwrap(), key)
}

fn client(
    cn: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
    expired: bool,
    ca: &Ca,
) -> ClientCert {
    let sans = sans
        .iter()
        .map(|s| SanType::DnsName((*s).try_into().unwrap()))
        .collect();
    let (cert, key) = leaf(cn, sans, eku, expired, ca, KeyPair::generate().unwrap());
    ClientCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = ca("xks test root", None);
        let intermediate = ca("xks test intermediate", Some(&root));
        let rogue = ca("rogue root", None);

        let sans = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        let ecdsa = KeyPair::generate().unwrap();
        let (server, ecdsa) = leaf(
            "localhost",
            sans.clone(),
            ServerAuth,
            false,
            &intermediate,
            ecdsa,
        );
        let chain = write(dir.path(), "chain.pem", &(server.pem() + &intermediate.pem));
        let key = write(dir.path(), "key.pem", &ecdsa.serialize_pem());
        // ring cannot generate RSA keys, so the RSA server key is a fixed test-only fixture.
        let rsa = KeyPair::from_pem(include_str!("rsa-2048.key.pem")).unwrap();
        let (server, rsa) = leaf("localhost", sans, ServerAuth, false, &intermediate, rsa);
        let rsa_chain = write(
            dir.path(),
            "rsa-chain.pem",
            &(server.pem() + &intermediate.pem),
        );
        let rsa_key = write(dir.path(), "rsa-key.pem", &rsa.serialize_pem());
        let client_ca = write(dir.path(), "client-ca.pem", &root.pem);

        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let clients = Clients {
            right_cn: client(KMS_NAME, &[], ClientAuth, false, &root),
            right_san_only: client(
                "some client",
                &["other.example", KMS_NAME],
                ClientAuth,
                false,
                &root,
            ),
            wrong_cn: client(
                "cks.kms.us-east-1.amazonaws.com",
                &[],
                ClientAuth,
                false,
                &root,
            ),
            wrong_ca: client(KMS_NAME, &[], ClientAuth, false, &rogue),
            expired: client(KMS_NAME, &[], ClientAuth, true, &root),
            server_auth_only: client(KMS_NAME, &[], ServerAuth, false, &root),
        };
        Self {
            _dir: dir,
            chain,
            key,
            rsa_chain,
            rsa_key,
            client_ca,
            root: root.cert,
            clients,
        }
    }

    /// Server settings without client authentication.
    pub(crate) fn tls(&self) -> TlsSettings {
        TlsSettings {
            certificate_chain: self.chain.clone(),
            private_key: self.key.clone(),
            client_auth: ClientAuth::Disabled,
        }
    }

    /// Server settings with an RSA server key, without client authentication.
    pub(crate) fn tls_rsa(&self) -> TlsSettings {
        TlsSettings {
            certificate_chain: self.rsa_chain.clone(),
            private_key: self.rsa_key.clone(),
            client_auth: ClientAuth::Disabled,
        }
    }

    /// Server settings requiring a client certificate from the root with [`KMS_NAME`].
    pub(crate) fn mtls(&self) -> TlsSettings {
        TlsSettings {
            client_auth: ClientAuth::Required {
                ca_bundle: self.client_ca.clone(),
                allowed_subject_names: vec![ClientSubjectName::parse(KMS_NAME).unwrap()],
            },
            ..self.tls()
        }
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
