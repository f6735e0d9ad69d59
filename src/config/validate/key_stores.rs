//! `[[key_stores]]` and their credentials.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use secrecy::ExposeSecret;

use super::super::error::Errors;
use super::super::raw::RawKeyControl;
use super::super::raw::{RawCredential, RawKeyStore};
use super::super::{
    AwsSampleMigration, Credential, HsmSettings, KeyControl, KeyControls, KeyStoreSettings,
    RateLimit,
};

use super::super::types::{AccessKeyId, UriPrefix};

use super::{range, secret};
use crate::xks::framing::MAX_CIPHERTEXT_METADATA_LEN;
use crate::xks::{ExternalKeyId, KeyVersion};

/// `[[keys]]`: valid, distinct key ids, never the health-check key, versions from 1.
pub(super) fn validate_key_controls(
    raw: Vec<RawKeyControl>,
    hsm: Option<&HsmSettings>,
    errors: &mut Errors,
) -> KeyControls {
    let mut controls = KeyControls::default();
    for (i, key) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("keys[{i}].{field}");
        let Some(id) = errors.check(
            &at("id"),
            ExternalKeyId::parse(&key.id).map_err(|e| e.to_string()),
        ) else {
            continue;
        };
        if hsm.is_some_and(|h| h.health_key_label == id) {
            errors.push(at("id"), "the health-check key is never served to KMS");
            continue;
        }
        let mut disabled_versions = std::collections::BTreeSet::new();
        for (j, n) in key.disabled_versions.iter().enumerate() {
            match KeyVersion::new(*n) {
                Some(version) => {
                    disabled_versions.insert(version);
                }
                None => errors.push(
                    at(&format!("disabled_versions[{j}]")),
                    "key versions start at 1",
                ),
            }
        }
        let control = KeyControl {
            enabled: key.enabled,
            disabled_versions,
        };
        if controls.keys.insert(id, control).is_some() {
            errors.push(at("id"), "this key is listed twice in [[keys]]");
        }
    }
    controls
}

pub(super) fn validate_key_stores(
    raw: Vec<RawKeyStore>,
    hsm: Option<&HsmSettings>,
    errors: &mut Errors,
) -> Vec<KeyStoreSettings> {
    if raw.is_empty() {
        errors.push("key_stores", "configure at least one [[key_stores]]");
    }
    let mut prefixes = HashSet::new();
    let mut key_ids: HashMap<AccessKeyId, usize> = HashMap::new();
    let mut stores = Vec::new();
    for (i, store) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("key_stores[{i}].{field}");
        let prefix = errors.check(&at("path_prefix"), UriPrefix::parse(&store.path_prefix));
        if let Some(p) = &prefix
            && !prefixes.insert(p.clone())
        {
            errors.push(
                at("path_prefix"),
                format!("prefix {:?} is used by two key stores", p.as_str()),
            );
        }
        if store.credentials.is_empty() {
            errors.push(at("credentials"), "needs at least one credential");
        }
        let credentials: Vec<_> = store
            .credentials
            .into_iter()
            .enumerate()
            .filter_map(|(j, c)| {
                validate_credential(
                    c,
                    &format!("key_stores[{i}].credentials[{j}]"),
                    i,
                    &mut key_ids,
                    errors,
                )
            })
            .collect();
        let allowed_regions = store.allowed_regions.inspect(|regions| {
            for (j, r) in regions.iter().enumerate() {
                let ok = !r.is_empty()
                    && r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    errors.push(
                        at(&format!("allowed_regions[{j}]")),
                        "must be a region name such as us-east-1",
                    );
                }
            }
        });
        let allowed_keys = store.allowed_keys.map(|keys| {
            keys.iter()
                .enumerate()
                .filter_map(|(j, k)| {
                    let field = at(&format!("allowed_keys[{j}]"));
                    let id =
                        errors.check(&field, ExternalKeyId::parse(k).map_err(|e| e.to_string()))?;
                    if hsm.is_some_and(|h| h.health_key_label == id) {
                        errors.push(field, "the health-check key cannot be served to KMS");
                    }
                    Some(id)
                })
                .collect()
        });
        let name = store.name.unwrap_or_else(|| match &prefix {
            Some(p) if !p.as_str().is_empty() => p.as_str().trim_start_matches('/').to_owned(),
            _ => "default".to_owned(),
        });
        let rate_limit = store.rate_limit.and_then(|raw| {
            let rps = range(
                &at("rate_limit.requests_per_second"),
                raw.requests_per_second,
                1..=1_000_000,
                errors,
            )?;
            let burst = range(
                &at("rate_limit.burst"),
                raw.burst.unwrap_or(rps),
                1..=10_000_000,
                errors,
            )?;
            Some(RateLimit {
                requests_per_second: rps,
                burst,
            })
        });
        let aws_sample_migration = store.aws_sample_migration.and_then(|raw| {
            let field = at("aws_sample_migration.ciphertext_metadata_b64");
            let bytes = errors.check(
                &field,
                base64::engine::general_purpose::STANDARD
                    .decode(&raw.ciphertext_metadata_b64)
                    .map_err(|_| "must be standard Base64 (empty for none)".to_owned()),
            )?;
            if bytes.len() > MAX_CIPHERTEXT_METADATA_LEN {
                errors.push(field, "must decode to at most 20 bytes (E-8)");
                return None;
            }
            Some(AwsSampleMigration {
                ciphertext_metadata: bytes,
            })
        });
        let authorization = store
            .authorization
            .and_then(|raw| super::authorization(&at("authorization"), raw, errors));
        if let Some(prefix) = prefix {
            stores.push(KeyStoreSettings {
                name,
                prefix,
                credentials,
                allowed_regions,
                allowed_keys,
                enabled: store.enabled,
                rate_limit,
                aws_sample_migration,
                authorization,
            });
        }
    }
    stores
}

fn validate_credential(
    raw: RawCredential,
    at: &str,
    store: usize,
    seen: &mut HashMap<AccessKeyId, usize>,
    errors: &mut Errors,
) -> Option<Credential> {
    let id = errors.check(
        &format!("{at}.access_key_id"),
        AccessKeyId::parse(&raw.access_key_id),
    );
    if let Some(id) = &id
        && let Some(other) = seen.insert(id.clone(), store)
    {
        let msg = if other == store {
            "appears twice in this key store".to_owned()
        } else {
            format!(
                "is also used by key_stores[{other}]; an access key id must identify one secret (AU-13)"
            )
        };
        errors.push(format!("{at}.access_key_id"), msg);
    }
    let secret = secret(&format!("{at}.secret"), raw.secret, raw.secret_file, errors)?;
    let s = secret.expose_secret();
    let ok = (43..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !ok {
        errors.push(format!("{at}.secret"), "must be 43-64 characters of A-Z a-z 0-9 + / = (AU-14); `xks-proxy credentials new` makes one");
        return None;
    }
    Some(Credential {
        access_key_id: id?,
        secret,
    })
}
