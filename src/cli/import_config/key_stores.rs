//! `[[external_key_stores]]` → `[[key_stores]]`: prefix, the sample's region, key ids, the
//! sample's ciphertext metadata (`[key_stores.aws_sample_migration]`) and the credential.

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine;
use secrecy::ExposeSecret;

use super::render::{Notes, quoted};
use super::sample::{ExternalKeyStore, Sample};
use crate::config::{AccessKeyId, UriPrefix};
use crate::xks::ExternalKeyId;

/// Every store, plus the notes on values our validation will refuse.
pub(super) fn key_stores(sample: &Sample, out: &mut String, notes: &mut Notes) {
    let stores = &sample.external_key_stores;
    if stores.is_empty() {
        notes.attention(
            "external_key_stores",
            "none in the sample; check-config requires at least one [[key_stores]]",
        );
        return;
    }
    let region = sample.server.region.as_deref().map(str::trim);
    let region = region.filter(|r| {
        let ok = !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            notes.drop(
                "server.region",
                format!("{r:?} is not a region name; allowed_regions left out (any region)"),
            );
        }
        ok
    });
    let metadata = sample
        .server
        .ciphertext_metadata_b64
        .as_deref()
        .unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD.decode(metadata);
    if !decoded.is_ok_and(|b| b.len() <= 20) {
        notes.attention(
            "server.ciphertext_metadata_b64",
            "not Base64 of at most 20 bytes; written as is, check-config refuses it",
        );
    }
    let mut seen_ids = HashMap::new();
    for (i, store) in stores.iter().enumerate() {
        let at = format!("external_key_stores[{i}]");
        let _ = writeln!(
            out,
            "\n[[key_stores]]\npath_prefix = {}",
            quoted(&store.uri_path_prefix)
        );
        if let Err(e) = UriPrefix::parse(&store.uri_path_prefix) {
            notes.attention(format!("{at}.uri_path_prefix"), format!("{e} (URI-2)"));
        }
        if let Some(region) = region {
            let _ = writeln!(
                out,
                "# server.region of the sample: the only SigV4 region it accepted.\n\
                 allowed_regions = [{}]",
                quoted(region)
            );
        }
        let keys: Vec<_> = store.xks_key_id_set.iter().map(|k| quoted(k)).collect();
        let _ = writeln!(out, "allowed_keys = [{}]", keys.join(", "));
        for key in &store.xks_key_id_set {
            if let Err(e) = ExternalKeyId::parse(key) {
                notes.attention(format!("{at}.xks_key_id_set {key:?}"), e.to_string());
            }
        }
        let _ = writeln!(
            out,
            "# Decrypt also accepts ciphertexts the sample made with this metadata.\n\
             [key_stores.aws_sample_migration]\nciphertext_metadata_b64 = {}",
            quoted(metadata)
        );
        credential(store, &at, i, &mut seen_ids, out, notes);
    }
    notes.attention(
        "external_key_stores[].xks_key_id_set",
        "keys are served only if private, sensitive and non-extractable; `xks-proxy keys list` \
         marks any other key REFUSED",
    );
}

fn credential(
    store: &ExternalKeyStore,
    at: &str,
    index: usize,
    seen: &mut HashMap<String, usize>,
    out: &mut String,
    notes: &mut Notes,
) {
    let id = &store.sigv4_access_key_id;
    let secret = store.sigv4_secret_access_key.0.expose_secret();
    out.push_str(
        "# The secret is inline, as in the sample's file: this file is as secret as that one.\n\
         [[key_stores.credentials]]\naccess_key_id = ",
    );
    out.push_str(&quoted(id));
    out.push_str("\nsecret = ");
    out.push_str(&quoted(secret));
    out.push('\n');
    let renew = "written as is, so check-config fails on it: make a new one with \
                 `xks-proxy credentials new` and give it to KMS (UpdateCustomKeyStore)";
    if let Err(rule) = AccessKeyId::parse(id) {
        notes.attention(
            format!("{at}.sigv4_access_key_id"),
            format!("{rule}; {renew}"),
        );
    } else if let Some(other) = seen.insert(id.clone(), index) {
        notes.attention(
            format!("{at}.sigv4_access_key_id"),
            format!(
                "also used by external_key_stores[{other}]; here an access key id \
                 authenticates one key store only (AU-13): {renew}"
            ),
        );
    }
    let ok = (43..=64).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !ok {
        notes.attention(
            format!("{at}.sigv4_secret_access_key"),
            format!("must be 43-64 characters of A-Z a-z 0-9 + / = (AU-14); {renew}"),
        );
    }
}
