//! Optional SigV4 on inbound calls (service `kms`), as KMS requires of every SDK call.
//!
//! The proxy's own verifier does the work (`xks_proxy::auth`, with the service `kms` instead
//! of `kms-xks-proxy`): the same canonicalisation, clock-skew window, decoy signing for
//! unknown access key ids and constant-time comparison. This module only maps its failures to
//! the exceptions KMS answers: `MissingAuthenticationTokenException`,
//! `UnrecognizedClientException` (unknown access key id), `InvalidSignatureException` (wrong
//! signature or an expired one) and `IncompleteSignatureException` for the rest.

use std::time::SystemTime;

use http::request::Parts;
use xks_proxy::auth::{AuthError, CredentialStore};

use crate::config::InboundCredential;
use crate::error::{ErrorName, KmsError};

/// The SigV4 service of the KMS API.
const SERVICE: &str = "kms";

/// Checks the request's signature against `credential`.
pub fn verify(credential: &InboundCredential, parts: &Parts, body: &[u8]) -> Result<(), KmsError> {
    let store = CredentialStore::for_service(
        SERVICE,
        [(
            credential.access_key_id.as_str(),
            credential.secret.as_str(),
        )],
        None,
    );
    xks_proxy::auth::verify(&store, parts, body, SystemTime::now())
        .map(|_| ())
        .map_err(|err| kms_error(&err))
}

/// The KMS exception for a verification failure.
fn kms_error(err: &AuthError) -> KmsError {
    match err {
        AuthError::MissingAuthorization => KmsError::new(
            ErrorName::MissingAuthenticationToken,
            "Missing Authentication Token",
        ),
        AuthError::UnknownAccessKeyId => KmsError::new(
            ErrorName::UnrecognizedClient,
            "The security token included in the request is invalid.",
        ),
        AuthError::SignatureMismatch => KmsError::new(
            ErrorName::InvalidSignature,
            "The request signature we calculated does not match the signature you provided.",
        ),
        AuthError::ClockSkew => KmsError::new(ErrorName::InvalidSignature, "Signature expired"),
        other => KmsError::new(ErrorName::IncompleteSignature, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    use aws_smithy_runtime_api::client::identity::Identity;

    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn credential() -> InboundCredential {
        InboundCredential {
            access_key_id: "AKIDEXAMPLE".into(),
            secret: zeroize::Zeroizing::new(SECRET.into()),
        }
    }

    /// A request signed by `aws-sigv4` as an SDK would, at `time`, for `service`.
    fn signed(secret: &str, body: &[u8], service: &str, time: SystemTime) -> Parts {
        let identity: Identity = Credentials::new("AKIDEXAMPLE", secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name(service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers = [
            ("host", "localhost:8444"),
            ("x-amz-target", "TrentService.ListKeys"),
        ];
        let signable = SignableRequest::new(
            "POST",
            "/",
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut request = http::Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "localhost:8444")
            .header("x-amz-target", "TrentService.ListKeys")
            .body(())
            .unwrap();
        instructions.apply_to_request_http1x(&mut request);
        request.into_parts().0
    }

    #[test]
    fn accepts_a_good_signature_and_names_each_failure() {
        let now = SystemTime::now();
        let good = signed(SECRET, b"{}", SERVICE, now);
        verify(&credential(), &good, b"{}").unwrap();
        let name = |parts: &Parts, body: &[u8], credential: &InboundCredential| {
            verify(credential, parts, body).unwrap_err().name
        };
        assert_eq!(
            name(&good, b"{ }", &credential()),
            ErrorName::InvalidSignature
        );
        let wrong = signed("another secret", b"{}", SERVICE, now);
        assert_eq!(
            name(&wrong, b"{}", &credential()),
            ErrorName::InvalidSignature
        );
        let unknown = InboundCredential {
            access_key_id: "OTHER".into(),
            ..credential()
        };
        assert_eq!(name(&good, b"{}", &unknown), ErrorName::UnrecognizedClient);
        let (bare, ()) = http::Request::builder().body(()).unwrap().into_parts();
        assert_eq!(
            name(&bare, b"{}", &credential()),
            ErrorName::MissingAuthenticationToken
        );
        // Signed for the XKS API instead of KMS, or an hour ago.
        let xks = signed(SECRET, b"{}", "kms-xks-proxy", now);
        assert_eq!(
            name(&xks, b"{}", &credential()),
            ErrorName::IncompleteSignature
        );
        let old = signed(SECRET, b"{}", SERVICE, now - Duration::from_secs(3600));
        assert_eq!(
            name(&old, b"{}", &credential()),
            ErrorName::InvalidSignature
        );
    }
}
