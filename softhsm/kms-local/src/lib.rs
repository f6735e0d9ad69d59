//! `xks-kms-local`: a local stand-in for the part of AWS KMS that uses an external key store.
//!
//! It speaks KMS's own JSON 1.1 protocol (botocore's `kms/2014-11-01/service-2.json`) to the
//! AWS SDKs and calls an XKS proxy exactly as KMS does (XKS Proxy API spec v1.0.3), so the
//! proxy can be tested end to end with clients nobody here wrote, without an AWS account.
//! It is test tooling: it keeps its AWS-side keys in memory or in a plain JSON file and is
//! never part of the production image.
//!
//! The modules follow a request: [`server`] (HTTP/HTTPS listener) → [`protocol`] (the JSON 1.1
//! envelope, errors as `{"__type", "message"}`) → [`inbound_auth`] (optional SigV4, service
//! `kms`) → [`ops`] (the operations) → [`state`] (stores and keys, persisted) and, for external
//! key store keys, [`xks_client`] (SigV4 service `kms-xks-proxy`, CDIV, 250 ms timeout) with
//! the ciphertext [`blob`] format and the AWS-side layer in [`aws_layer`].

pub mod aws_layer;
pub mod blob;
pub mod config;
pub mod error;
pub mod inbound_auth;
pub mod ops;
pub mod protocol;
pub mod server;
pub mod state;
pub mod xks_client;
