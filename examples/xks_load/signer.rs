//! The SigV4 signer for every request (XKS spec Appendix A; AWS "Create a signed AWS API
//! request"): service `kms-xks-proxy`, signed headers `host` and `x-amz-date`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::args::Credential;

/// SigV4 service name of every XKS credential scope.
const SERVICE: &str = "kms-xks-proxy";

/// SigV4 signer (AWS Signature Version 4, "Create a signed AWS API request"), signing `host`
/// and `x-amz-date`. Caches the signing key for the current date.
#[derive(Default)]
pub(crate) struct Signer {
    /// `(yyyymmdd, kSigning)`.
    key: Option<(String, [u8; 32])>,
}

impl Signer {
    /// Returns the `x-amz-date` and `authorization` header values.
    pub(crate) fn sign(
        &mut self,
        credential: &Credential,
        method: &str,
        path: &str,
        host: &str,
        body: &[u8],
        when: OffsetDateTime,
    ) -> Result<(String, String), String> {
        let amz_date = when
            .format(format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .map_err(|e| format!("formatting x-amz-date: {e}"))?;
        let date = amz_date.get(..8).ok_or("x-amz-date too short")?;
        // Task 1: canonical request. No query string; canonical headers sorted by name.
        let signed_headers = "host;x-amz-date";
        let canonical_request = format!(
            "{method}\n{path}\n\nhost:{host}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{}",
            hex::encode(Sha256::digest(body))
        );
        // Task 2: string to sign.
        let scope = format!("{date}/{}/{SERVICE}/aws4_request", credential.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        // Task 3: signing key (per date) and signature.
        let signing_key = match &self.key {
            Some((d, key)) if d == date => *key,
            _ => {
                let k_date = hmac(
                    format!("AWS4{}", credential.secret).as_bytes(),
                    date.as_bytes(),
                )?;
                let k_region = hmac(&k_date, credential.region.as_bytes())?;
                let k_service = hmac(&k_region, SERVICE.as_bytes())?;
                let k_signing = hmac(&k_service, b"aws4_request")?;
                self.key = Some((date.to_owned(), k_signing));
                k_signing
            }
        };
        let signature = hex::encode(hmac(&signing_key, string_to_sign.as_bytes())?);
        // Task 4: the Authorization header.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            credential.access_key_id
        );
        Ok((amz_date, authorization))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Result<[u8; 32], String> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|e| format!("HMAC key: {e}"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}
