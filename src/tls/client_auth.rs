//! The mTLS client certificate verifier (XKS spec §1.2, MT-1…8; checklist §7 items 22, 23).
//!
//! [`NamePinnedClientVerifier`] wraps rustls's `WebPkiClientVerifier` (chain to the configured
//! CA bundle: signatures, validity period, CA constraints, EKU clientAuth when present) and then
//! requires the leaf's subject CN or one of its SAN dNSNames to equal one of the configured
//! names (MT-6: exact, ASCII case-insensitive, no wildcards).
//!
//! Every rejection is returned to rustls as `rustls::Error::General`, never as
//! `InvalidCertificate` or `PeerMisbehaved`, so rustls ends the handshake with the fatal alert
//! `handshake_failure` (40) whatever the reason (MT-7): a conformance client greps for exactly
//! that alert. The reason is logged here at `warn`, with the certificate's subject only, and
//! counted in `xks_authentication_failures_total{key_store="none",reason="mtls"}` (the
//! handshake happens before any key store is known).
//!
//! A client that sends no certificate at all is refused by rustls itself before this verifier
//! runs, with the alert `certificate_required` (116), in TLS 1.3 and TLS 1.2 alike (MT-8).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::config::ClientSubjectName;
use crate::metrics::Metrics;

/// `key_store` label of an mTLS rejection: the handshake precedes routing.
const NO_KEY_STORE: &str = "none";

/// Longest subject string written to the log; longer ones are cut.
const MAX_LOGGED_SUBJECT: usize = 256;

/// A client certificate verifier that validates the chain with `WebPkiClientVerifier` and
/// then pins the client's name (MT-3, MT-6), rejecting with `handshake_failure` (MT-7).
#[derive(Debug)]
pub struct NamePinnedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ClientSubjectName>,
    metrics: Option<Arc<Metrics>>,
}

impl NamePinnedClientVerifier {
    /// Wraps `inner`, a verifier with mandatory client auth, accepting only certificates that
    /// carry one of `allowed` as subject CN or SAN dNSName.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, allowed: Vec<ClientSubjectName>) -> Self {
        Self {
            inner,
            allowed,
            metrics: None,
        }
    }

    /// Counts every rejection in `metrics` (reason `mtls`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Logs the rejection and turns it into the error that makes rustls send
    /// `handshake_failure`.
    fn reject(&self, end_entity: &CertificateDer<'_>, reason: Rejection) -> rustls::Error {
        let subject = subject_for_log(end_entity);
        tracing::warn!(subject = ?subject, reason = %reason, "mTLS client certificate rejected");
        if let Some(metrics) = &self.metrics {
            metrics.auth_failed(NO_KEY_STORE, "mtls");
        }
        rustls::Error::General(format!("client certificate rejected: {reason}"))
    }
}

impl ClientCertVerifier for NamePinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Chain first: x509-parser then only sees certificates our CA vouches for.
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| self.reject(end_entity, Rejection::Chain(e)))?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| self.reject(end_entity, Rejection::Unparsable(e.to_string())))?;
        let name = matching_name(&cert, &self.allowed)
            .map_err(|reason| self.reject(end_entity, reason))?;
        tracing::debug!(client_name = ?name, "mTLS client certificate accepted");
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .map_err(|e| self.reject(cert, Rejection::Signature(e)))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .map_err(|e| self.reject(cert, Rejection::Signature(e)))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a client certificate was refused; only ever logged.
#[derive(Debug)]
enum Rejection {
    /// Chain validation failed: unknown CA, expired, wrong EKU, bad signature, ...
    Chain(rustls::Error),
    /// The leaf passed webpki but x509-parser cannot read it.
    Unparsable(String),
    /// The SAN extension is malformed or duplicated.
    InvalidSan(String),
    /// No CN or SAN dNSName equals an allowed name.
    NameNotAllowed {
        /// The CNs and SAN dNSNames the certificate carries.
        presented: Vec<String>,
    },
    /// The CertificateVerify signature does not verify.
    Signature(rustls::Error),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chain(e) => write!(f, "chain validation failed: {e}"),
            Self::Unparsable(e) => write!(f, "certificate does not parse: {e}"),
            Self::InvalidSan(e) => write!(f, "invalid subjectAltName extension: {e}"),
            Self::NameNotAllowed { presented } => {
                write!(
                    f,
                    "no allowed subject name among CN/SAN dNSName {presented:?}"
                )
            }
            Self::Signature(e) => write!(f, "CertificateVerify signature invalid: {e}"),
        }
    }
}

/// The first name of the certificate (subject CNs, then SAN dNSNames) that one of `allowed`
/// matches exactly and ASCII case-insensitively (MT-6). Wildcards are never expanded: a
/// presented `*.example.com` only matches itself, and allowed names cannot contain `*`.
fn matching_name<'a>(
    cert: &'a X509Certificate<'a>,
    allowed: &[ClientSubjectName],
) -> Result<&'a str, Rejection> {
    let common_names = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok());
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Rejection::InvalidSan(e.to_string()))?;
    let dns_names = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|gn| match gn {
            GeneralName::DNSName(name) => Some(*name),
            _ => None,
        });
    let presented: Vec<&'a str> = common_names.chain(dns_names).collect();
    presented
        .iter()
        .copied()
        .find(|name| allowed.iter().any(|a| a.matches(name)))
        .ok_or_else(|| Rejection::NameNotAllowed {
            presented: presented.iter().map(|s| (*s).to_owned()).collect(),
        })
}

/// The subject DN of a certificate (e.g. `CN=cks.kms.eu-west-1.amazonaws.com`), cut to a sane
/// length; `None` if it does not parse.
pub fn certificate_subject(end_entity: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(end_entity)
        .ok()
        .map(|(_, cert)| {
            cert.subject()
                .to_string()
                .chars()
                .take(MAX_LOGGED_SUBJECT)
                .collect()
        })
}

/// The subject DN for logs (never the whole certificate), cut to a sane length.
fn subject_for_log(end_entity: &CertificateDer<'_>) -> String {
    certificate_subject(end_entity).unwrap_or_else(|| "<unparsable>".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::DnsName((*s).try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn check(der: &[u8], allowed: &[&str]) -> Result<String, String> {
        let allowed: Vec<_> = allowed
            .iter()
            .map(|a| ClientSubjectName::parse(a).unwrap())
            .collect();
        let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
        matching_name(&parsed, &allowed)
            .map(str::to_owned)
            .map_err(|e| e.to_string())
    }

    const KMS: &str = "cks.kms.eu-west-1.amazonaws.com";

    #[test]
    fn mt_6_cn_or_san_dns_name_matches_case_insensitively() {
        assert_eq!(check(&cert(Some(KMS), &[]), &[KMS]), Ok(KMS.to_owned()));
        let upper = KMS.to_ascii_uppercase();
        assert_eq!(check(&cert(Some(&upper), &[]), &[KMS]), Ok(upper));
        assert_eq!(
            check(&cert(Some("other"), &[KMS]), &[KMS]),
            Ok(KMS.to_owned())
        );
        assert_eq!(
            check(&cert(None, &["x.example", KMS]), &["a.example", KMS]),
            Ok(KMS.into())
        );
    }

    #[test]
    fn mt_3_other_names_and_wildcards_are_refused() {
        let wrong = check(&cert(Some("cks.kms.us-east-1.amazonaws.com"), &[]), &[KMS]);
        assert!(
            wrong
                .unwrap_err()
                .contains("cks.kms.us-east-1.amazonaws.com")
        );
        assert!(check(&cert(Some("*.kms.eu-west-1.amazonaws.com"), &[]), &[KMS]).is_err());
        assert!(check(&cert(None, &["*.kms.eu-west-1.amazonaws.com"]), &[KMS]).is_err());
        assert!(check(&cert(Some(&format!("{KMS}.evil")), &[]), &[KMS]).is_err());
        assert!(check(&cert(None, &[]), &[KMS]).is_err());
    }

    #[test]
    fn subject_for_log_is_the_dn_only() {
        let der = cert(Some(KMS), &[]);
        assert_eq!(
            subject_for_log(&CertificateDer::from(der)),
            format!("CN={KMS}")
        );
        assert_eq!(
            subject_for_log(&CertificateDer::from(vec![1, 2, 3])),
            "<unparsable>"
        );
    }
}
