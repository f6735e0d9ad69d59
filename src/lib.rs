//! xks-proxy: an AWS KMS External Key Store (XKS) proxy.
//!
//! A request flows socket → [`server`] (TCP, TLS via [`tls`]) → [`http`] (routing, body cap,
//! the one error → response mapping) → [`auth`] (SigV4) → [`xks`] (wire types, AAD framing,
//! CDIV) → [`hsm`] (the `KeyBackend` trait; PKCS#11 via cryptoki on dedicated threads).
//! [`health`] answers GetHealthStatus; [`config`] turns TOML and environment into validated
//! [`config::Settings`]; [`cli`] implements the `xks-proxy` subcommands.
//! Every XKS request leaves one audit line ([`http::audit`]) and is counted in [`metrics`],
//! which the [`admin`] listener serves to Prometheus.

// `deny`, not `forbid`: `hsm::pkcs11::single_part` is the one module that allows it (see
// Cargo.toml's lints).
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod config;
pub mod health;
pub mod hsm;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod tls;
pub mod xks;
