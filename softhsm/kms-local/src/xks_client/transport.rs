//! The HTTP side of an XKS call: one TCP connection, TLS with the configured roots (and
//! client certificate), one HTTP/1.1 request signed with SigV4 (service `kms-xks-proxy`), all
//! under the client's deadline; then the status and `errorName` sorted into [`XksFailure`].

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::{Endpoint, MAX_ANSWER, SERVICE, XksClient, XksFailure, invalid};

impl XksClient {
    /// One signed call under the deadline; a 200 answer's JSON object, else the failure.
    pub(super) async fn call(
        &self,
        ep: &Endpoint<'_>,
        suffix: &str,
        body: &Value,
    ) -> Result<Value, XksFailure> {
        let path = format!("{}{suffix}", ep.uri_path);
        let body = Zeroizing::new(body.to_string().into_bytes());
        let (status, answer) = tokio::time::timeout(self.timeout, self.post(ep, &path, &body))
            .await
            .map_err(|_| XksFailure::TimedOut)??;
        let json = serde_json::from_slice::<Value>(&answer).ok();
        if status == 200 {
            return match json {
                Some(v @ Value::Object(_)) => Ok(v),
                _ => Err(invalid("the 200 answer is not a JSON object")),
            };
        }
        let error_name = json
            .as_ref()
            .and_then(|v| v.get("errorName"))
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("an error answer without errorName"))?;
        tracing::debug!(status, error_name, path, "XKS proxy error");
        Err(match (status, error_name) {
            (401, _) => XksFailure::Authentication,
            (403, _) => XksFailure::AccessDenied,
            (404, "InvalidUriPathException") => XksFailure::InvalidUriPath,
            (404, "KeyNotFoundException") => XksFailure::KeyNotFound,
            _ => XksFailure::Refused {
                status,
                error_name: error_name.to_owned(),
            },
        })
    }

    /// Connects, handshakes, sends one signed HTTP/1.1 request and reads the answer.
    async fn post(
        &self,
        ep: &Endpoint<'_>,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Bytes), XksFailure> {
        let (host, port) = parse_endpoint(ep.uri_endpoint)?;
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| XksFailure::Unreachable(e.to_string()))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| XksFailure::Unreachable("invalid host name".into()))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| XksFailure::Tls(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| invalid(&e.to_string()))?;
        // The connection task ends when the request is done and `sender` is dropped.
        tokio::spawn(connection);
        let host_header = if port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let request = signed_request(ep, &self.region, &host_header, path, body)?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| invalid(&e.to_string()))?;
        let status = answer.status().as_u16();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| invalid(&e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The request with `Host`, `Content-Type`, `X-Amz-Date` and `Authorization` (SigV4).
fn signed_request(
    ep: &Endpoint<'_>,
    region: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> Result<http::Request<Full<Bytes>>, XksFailure> {
    let signer_failed = |_| XksFailure::Unreachable("could not sign the request".into());
    let identity: Identity =
        Credentials::new(ep.access_key_id, ep.secret, None, None, "xks-kms-local").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| XksFailure::Unreachable("could not sign the request".into()))?
        .into();
    let headers = [("host", host), ("content-type", "application/json")];
    let signable = SignableRequest::new(
        "POST",
        path,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(signer_failed)?;
    let (instructions, _signature) = sign(signable, &params).map_err(signer_failed)?.into_parts();
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|_| XksFailure::Unreachable("invalid request URI".into()))?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request)
}

/// `https://host[:port]` → `(host, port)`. Real KMS takes no port (always 443); a port is
/// accepted here so tests can use ephemeral ones.
pub fn parse_endpoint(endpoint: &str) -> Result<(&str, u16), XksFailure> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| XksFailure::Unreachable("the endpoint must start with https://".into()))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| XksFailure::Unreachable("invalid port".into()))?,
        ),
        None => (rest, 443),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if valid {
        Ok((host, port))
    } else {
        Err(XksFailure::Unreachable("invalid host".into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("https://localhost:8443").unwrap(),
            ("localhost", 8443)
        );
        assert_eq!(
            parse_endpoint("https://xks.example.com").unwrap(),
            ("xks.example.com", 443)
        );
        for bad in [
            "http://x",
            "https://",
            "https://a:b",
            "https://a/b",
            "https://a:99999",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
