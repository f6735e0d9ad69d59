//! Test fixtures for SigV4 verification (XKS spec Appendix A; checklist AU-6, AU-7): requests
//! signed by independent signers (curl, botocore), plus helpers to build more with `aws-sigv4`
//! acting as a client.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::request::Parts;
use http::{Request, Version};
use secrecy::SecretString;

use crate::auth::CredentialStore;
use crate::auth::header::parse_amz_date;
use crate::config::{AccessKeyId, Credential};

/// Credential of [`CURL_ENCRYPT`] and [`BOTO_H2_AUTHORIZATION`]. The secret looks like Base64 (44
/// characters ending in `=`) and is used raw (AU-5).
pub(super) const AKID_1: &str = "AKIA4GBY3I6JCE5M2HPM";
pub(super) const SECRET_1: &str = "2fh+uXuhA9Ix8c2wQJ0gIL4mAK9kC6OCQ0Qlb4wTwNc=";
/// Credential of [`CURL_HEALTH_PORT`].
pub(super) const AKID_2: &str = "XKSTESTAKIDB2345677ABCDEF";
pub(super) const SECRET_2: &str = "r7LcmJ0p4T3cGz3Cz8yJ0X+H7Kd2c9mQ6dTt/0vC1xE=";

/// Encrypt request captured byte for byte from curl 7.88.1 (OpenSSL 3.0.19), HTTP/1.1.
///
/// Captured with a one-shot Python socket server on 127.0.0.1:18080 that wrote the received
/// bytes (head + `Content-Length` body) to a file and answered 200:
///
/// ```text
/// curl -s --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AKID_1:$SECRET_1" \
///   -H "Content-Type: application/json" --data '<body below>' \
///   http://127.0.0.1:18080/kms/xks/v1/keys/foo/encrypt
/// ```
///
/// curl signs `content-type;host;x-amz-date` (AU-6).
pub(super) const CURL_ENCRYPT: &str = concat!(
    "POST /kms/xks/v1/keys/foo/encrypt HTTP/1.1\r\n",
    "Host: 127.0.0.1:18080\r\n",
    "Authorization: AWS4-HMAC-SHA256 ",
    "Credential=AKIA4GBY3I6JCE5M2HPM/20261122/us-east-1/kms-xks-proxy/aws4_request, ",
    "SignedHeaders=content-type;host;x-amz-date, ",
    "Signature=cd05051d2716dfc3770709490639f76352e9235cd5d69044b3a2faeb85e63d96\r\n",
    "X-Amz-Date: 20261122T104145Z\r\n",
    "User-Agent: curl/7.88.1\r\n",
    "Accept: */*\r\n",
    "Content-Type: application/json\r\n",
    "Content-Length: 220\r\n",
    "\r\n",
    r#"{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","#,
    r#""kmsOperation":"Encrypt","kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae"},"#,
    r#""plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM"}"#,
);

/// Health request with a path prefix and a non-default port in `Host`, captured from curl
/// 7.88.1 like [`CURL_ENCRYPT`], the server listening on 127.0.0.1:18081. `--connect-to` makes
/// curl sign and send `Host: localhost:8443` as a real client of `localhost:8443` would (AU-7):
///
/// ```text
/// curl -s --aws-sigv4 "aws:amz:eu-west-1:kms-xks-proxy" --user "$AKID_2:$SECRET_2" \
///   --connect-to localhost:8443:127.0.0.1:18081 -X POST \
///   -H "Content-Type:application/json" --data '<body below>' \
///   http://localhost:8443/tenant-a/kms/xks/v1/health
/// ```
pub(super) const CURL_HEALTH_PORT: &str = concat!(
    "POST /tenant-a/kms/xks/v1/health HTTP/1.1\r\n",
    "Host: localhost:8443\r\n",
    "Authorization: AWS4-HMAC-SHA256 ",
    "Credential=XKSTESTAKIDB2345677ABCDEF/20261122/eu-west-1/kms-xks-proxy/aws4_request, ",
    "SignedHeaders=content-type;host;x-amz-date, ",
    "Signature=65428d849487cfe677f26b5282a6abe914c13dda8d495aa355d3f3fa0d2c64d7\r\n",
    "X-Amz-Date: 20261122T104150Z\r\n",
    "User-Agent: curl/7.88.1\r\n",
    "Accept: */*\r\n",
    "Content-Type:application/json\r\n",
    "Content-Length: 113\r\n",
    "\r\n",
    r#"{"requestMetadata":{"kmsRequestId":"b6a2b1e8-2c3d-4f5a-9b8c-7d6e5f4a3b2c","#,
    r#""kmsOperation":"CreateCustomKeyStore"}}"#,
);

/// Decrypt request signed by botocore 1.43.11 (the AWS SDK for Python), to be presented as
/// HTTP/2: no `Host` header, authority `xks.example.com:8443` in the URI (AU-7). Made with:
///
/// ```text
/// req = AWSRequest(method="POST", data=BOTO_H2_BODY, headers={"Content-Type": "application/json"},
///                  url="https://xks.example.com:8443/kms/xks/v1/keys/k1/decrypt")
/// SigV4Auth(Credentials(AKID_1, SECRET_1), "kms-xks-proxy", "ap-southeast-2").add_auth(req)
/// ```
///
/// botocore signed `content-type;host;x-amz-date` with `host:xks.example.com:8443`.
pub(super) const BOTO_H2_URI: &str = "https://xks.example.com:8443/kms/xks/v1/keys/k1/decrypt";
pub(super) const BOTO_H2_DATE: &str = "20261122T104207Z";
pub(super) const BOTO_H2_AUTHORIZATION: &str = concat!(
    "AWS4-HMAC-SHA256 ",
    "Credential=AKIA4GBY3I6JCE5M2HPM/20261122/ap-southeast-2/kms-xks-proxy/aws4_request, ",
    "SignedHeaders=content-type;host;x-amz-date, ",
    "Signature=c8d06f05a0c266b6fe1b931ff5e7036c1ac7cdfe945bdca3bd0523e19b254083",
);
pub(super) const BOTO_H2_BODY: &str = concat!(
    r#"{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:role/Bob","#,
    r#""kmsOperation":"Decrypt","kmsRequestId":"0f8b5a5e-7c1d-4d8e-9a2b-3c4d5e6f7a8b"},"#,
    r#""ciphertext":"AAAA","encryptionAlgorithm":"AES_GCM","#,
    r#""initializationVector":"AAAAAAAAAAAAAAAA","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA=="}"#,
);

/// Parses a captured HTTP/1.1 request into what hyper hands the handler: origin-form URI,
/// header values with surrounding whitespace removed, and the raw body.
pub(super) fn parse_raw(raw: &str) -> (Parts, Vec<u8>) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let (method, target) = (request_line.next().unwrap(), request_line.next().unwrap());
    assert_eq!(request_line.next(), Some("HTTP/1.1"));
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .version(Version::HTTP_11);
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        builder = builder.header(name, value.trim_matches([' ', '\t']));
    }
    (
        builder.body(()).unwrap().into_parts().0,
        body.as_bytes().to_vec(),
    )
}

/// The botocore request ([`BOTO_H2_AUTHORIZATION`]) as hyper presents an HTTP/2 request: absolute URI, no `Host` header.
pub(super) fn boto_h2() -> (Parts, Vec<u8>) {
    let parts = Request::builder()
        .method("POST")
        .uri(BOTO_H2_URI)
        .version(Version::HTTP_2)
        .header("content-type", "application/json")
        .header("x-amz-date", BOTO_H2_DATE)
        .header("authorization", BOTO_H2_AUTHORIZATION)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    (parts, BOTO_H2_BODY.as_bytes().to_vec())
}

/// A store over `(access key id, secret)` pairs.
pub(super) fn store(creds: &[(&str, &str)], regions: Option<&[&str]>) -> CredentialStore {
    let creds: Vec<Credential> = creds
        .iter()
        .map(|(akid, secret)| Credential {
            access_key_id: AccessKeyId::parse(akid).unwrap(),
            secret: SecretString::from(secret.to_string()),
        })
        .collect();
    let regions: Option<Vec<String>> = regions.map(|r| r.iter().map(|s| s.to_string()).collect());
    CredentialStore::new(&creds, regions.as_deref())
}

/// An `X-Amz-Date` value as a time.
pub(super) fn at(amz_date: &str) -> SystemTime {
    parse_amz_date(amz_date).unwrap()
}

/// What a client signs with `aws-sigv4`: scope, time, and the request to sign.
pub(super) struct ClientRequest<'a> {
    pub(super) akid: &'a str,
    pub(super) secret: &'a str,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
    pub(super) amz_date: &'a str,
    /// Origin-form path (then `headers` should carry `host`) or an absolute URI (HTTP/2).
    pub(super) uri: &'a str,
    /// Headers passed to the signer, all of which it signs (unless `settings` excludes them).
    pub(super) headers: &'a [(&'a str, &'a str)],
    pub(super) body: &'a [u8],
    pub(super) settings: SigningSettings,
}

impl ClientRequest<'_> {
    /// A request for the typical case; adjust fields before calling [`Self::sign`].
    pub(super) fn new() -> Self {
        Self {
            akid: AKID_1,
            secret: SECRET_1,
            region: "us-east-1",
            service: "kms-xks-proxy",
            amz_date: "20240515T093000Z",
            uri: "/kms/xks/v1/keys/k1/encrypt",
            headers: &[
                ("host", "xks.example.com"),
                ("content-type", "application/json"),
            ],
            body: b"{}",
            settings: SigningSettings::default(),
        }
    }

    /// Signs with `aws-sigv4` as a client would, applies the result, and returns the head as
    /// the server receives it (HTTP/2 when `uri` is absolute).
    pub(super) fn sign(self) -> (Parts, Vec<u8>) {
        let identity: Identity =
            Credentials::new(self.akid, self.secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name(self.service)
            .time(at(self.amz_date))
            .settings(self.settings)
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            "POST",
            self.uri,
            self.headers.iter().copied(),
            SignableBody::Bytes(self.body),
        )
        .unwrap();
        let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
        let version = if self.uri.starts_with('/') {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        let mut builder = Request::builder()
            .method("POST")
            .uri(self.uri)
            .version(version);
        for (name, value) in self.headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(()).unwrap();
        instructions.apply_to_request_http1x(&mut request);
        (request.into_parts().0, self.body.to_vec())
    }
}
