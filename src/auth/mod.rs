//! SigV4 authentication (temporary stub; replaced by the real module).
#![allow(missing_docs, unreachable_pub, dead_code)]
use crate::config::Credential;
use crate::xks::XksError;
use std::time::SystemTime;
pub struct CredentialStore;
impl CredentialStore {
    pub fn new(_c: &[Credential], _r: Option<&[String]>) -> Self {
        Self
    }
    pub fn len(&self) -> usize {
        0
    }
}
pub struct Authenticated {
    pub access_key_id: String,
    pub region: String,
}
#[derive(Debug)]
pub enum AuthError {
    SignatureMismatch,
}
impl AuthError {
    pub fn reason(&self) -> &'static str {
        "bad_signature"
    }
}
impl From<AuthError> for XksError {
    fn from(_: AuthError) -> Self {
        XksError::authentication_failed("x")
    }
}
pub fn verify(
    _s: &CredentialStore,
    _p: &http::request::Parts,
    _b: &[u8],
    _n: SystemTime,
) -> Result<Authenticated, AuthError> {
    Err(AuthError::SignatureMismatch)
}
