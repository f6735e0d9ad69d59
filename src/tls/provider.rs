//! The TLS crypto provider, chosen at build time by one cargo feature (XKS spec §1.1 TR-5).
//!
//! * `ring` (default): rustls on ring.
//! * `aws-lc-rs`: rustls on AWS-LC.
//! * `fips`: aws-lc-rs built from AWS-LC's FIPS 140-3 validated module; [`super::load`] refuses
//!   a configuration for which `ServerConfig::fips()` is false.
//!
//! Whatever the provider, the listener offers the spec's suites ([`CIPHER_SUITES`]) and the
//! ECDHE groups X25519, P-256 and P-384 ([`KX_GROUPS`]); no post-quantum hybrid, no finite
//! field groups. FIPS 140-3 approves neither ChaCha20-Poly1305 nor X25519, so a `fips` build
//! drops both: three suites, two groups (KMS negotiates AES-256-GCM over P-256 either way).

use std::sync::Arc;

use rustls::SupportedCipherSuite;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::ProducesTickets;

#[cfg(all(feature = "ring", feature = "aws-lc-rs"))]
compile_error!(
    "features `ring` (the default) and `aws-lc-rs`/`fips` select different TLS providers; \
     build one of the latter with --no-default-features, e.g. `--no-default-features \
     --features fips`"
);
#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("no TLS crypto provider: enable one of the features `ring`, `aws-lc-rs`, `fips`");

#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as imp;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use rustls::crypto::ring as imp;

/// The provider's name, as logged at startup and in `xks_build_info{tls_provider}`.
pub const NAME: &str = if cfg!(feature = "fips") {
    "aws-lc-rs-fips"
} else if cfg!(feature = "aws-lc-rs") {
    "aws-lc-rs"
} else {
    "ring"
};

/// Whether this build must serve in FIPS mode (feature `fips`).
pub const FIPS_REQUIRED: bool = cfg!(feature = "fips");

/// The cipher suites we enable: the four the spec lists (TR-5), TLS 1.3 first; without
/// ChaCha20-Poly1305 in a `fips` build.
pub const CIPHER_SUITES: &[SupportedCipherSuite] = &[
    imp::cipher_suite::TLS13_AES_256_GCM_SHA384,
    #[cfg(not(feature = "fips"))]
    imp::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    imp::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    imp::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// The key exchange groups, in preference order; without X25519 in a `fips` build.
pub const KX_GROUPS: &[&dyn SupportedKxGroup] = &[
    #[cfg(not(feature = "fips"))]
    imp::kx_group::X25519,
    imp::kx_group::SECP256R1,
    imp::kx_group::SECP384R1,
];

/// The provider with only [`CIPHER_SUITES`] and [`KX_GROUPS`]; signature algorithms, key
/// loading and RNG are the provider's defaults.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        kx_groups: KX_GROUPS.to_vec(),
        ..imp::default_provider()
    }
}

/// The provider's session ticketer: ChaCha20-Poly1305 (ring) or AES-256-CBC + HMAC-SHA256
/// (aws-lc-rs), keys rotated every 6 hours.
pub fn ticketer() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    imp::Ticketer::new()
}
