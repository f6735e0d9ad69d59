//! Key operations. Keys are always `SYMMETRIC_DEFAULT` / `ENCRYPT_DECRYPT`; their origin is
//! `AWS_KMS` (material held here alone) or `EXTERNAL_KEY_STORE` (an AWS-side key here and an
//! external key in the proxy's HSM).
//!
//! CreateKey for an external key checks GetKeyMetadata as KMS does: the key must exist
//! (`XksKeyNotFoundException`), be `AES_256`, allow `ENCRYPT` and `DECRYPT` and be `ENABLED`
//! (`XksKeyInvalidConfigurationException`).

use serde_json::{Value, json};

use super::{Call, endpoint, key_state, resolve_key};
use crate::aws_layer::{self, KEY_LEN};
use crate::error::{ErrorName, KmsError};
use crate::protocol::{Input, now_epoch};
use crate::state::{ConnectionState, Key, KeyOrigin, State};
use crate::xks_client::XksFailure;

/// CreateKey.
pub async fn create(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let unsupported = |what: &str| {
        KmsError::new(
            ErrorName::UnsupportedOperation,
            format!("xks-kms-local does not support {what}"),
        )
    };
    if input.opt_str("KeyUsage")?.unwrap_or("ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT" {
        return Err(unsupported("KeyUsage other than ENCRYPT_DECRYPT"));
    }
    for spec in ["KeySpec", "CustomerMasterKeySpec"] {
        if input.opt_str(spec)?.unwrap_or("SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT" {
            return Err(unsupported("key specs other than SYMMETRIC_DEFAULT"));
        }
    }
    if input.opt_bool("MultiRegion")? == Some(true) {
        return Err(unsupported("multi-Region keys"));
    }
    let origin = match input.opt_str("Origin")?.unwrap_or("AWS_KMS") {
        "AWS_KMS" => KeyOrigin::AwsKms,
        "EXTERNAL_KEY_STORE" => KeyOrigin::ExternalKeyStore,
        "EXTERNAL" | "AWS_CLOUDHSM" => return Err(unsupported("this Origin")),
        _ => return Err(KmsError::validation("Invalid Origin")),
    };
    let description = input.opt_str("Description")?.unwrap_or_default().to_owned();
    let mut key = Key {
        id: aws_layer::uuid_v4().map_err(|e| KmsError::internal(&e))?,
        description,
        enabled: true,
        origin,
        custom_key_store_id: None,
        xks_key_id: None,
        aws_key: aws_layer::random(KEY_LEN).map_err(|e| KmsError::internal(&e))?,
        creation_date: now_epoch(),
    };
    if origin == KeyOrigin::ExternalKeyStore {
        let store_id = input.opt_str("CustomKeyStoreId")?.ok_or_else(|| {
            KmsError::validation("CustomKeyStoreId is required for Origin EXTERNAL_KEY_STORE")
        })?;
        let xks_key_id = xks_key_id(input.opt_str("XksKeyId")?.ok_or_else(|| {
            KmsError::validation("XksKeyId is required for Origin EXTERNAL_KEY_STORE")
        })?)?;
        key.custom_key_store_id = Some(store_id.to_owned());
        key.xks_key_id = Some(xks_key_id.to_owned());
        let state = call.front.db.snapshot().await;
        check_xks_key_free(&state, store_id, xks_key_id)?;
        check_external_key(call, &state, &key, store_id, xks_key_id).await?;
    } else if input.opt_str("CustomKeyStoreId")?.is_some() || input.opt_str("XksKeyId")?.is_some() {
        return Err(KmsError::validation(
            "CustomKeyStoreId and XksKeyId need Origin EXTERNAL_KEY_STORE",
        ));
    }
    let metadata = call
        .front
        .db
        .update(|state| {
            if let (Some(store), Some(xks)) = (&key.custom_key_store_id, &key.xks_key_id) {
                check_xks_key_free(state, store, xks)?;
            }
            state.keys.insert(key.id.clone(), key.clone());
            Ok::<_, KmsError>(key_metadata(call, state, &key))
        })
        .await?;
    Ok(json!({ "KeyMetadata": metadata }))
}

/// The connected store must hold the external key, AES-256, ENCRYPT+DECRYPT, ENABLED.
async fn check_external_key(
    call: &Call<'_>,
    state: &State,
    key: &Key,
    store_id: &str,
    xks_key_id: &str,
) -> Result<(), KmsError> {
    let store = super::stores::find(state, store_id)?;
    if store.state != ConnectionState::Connected {
        return Err(KmsError::new(
            ErrorName::CustomKeyStoreInvalidState,
            "CreateKey needs a CONNECTED custom key store",
        ));
    }
    let invalid = |why: &str| {
        KmsError::new(
            ErrorName::XksKeyInvalidConfiguration,
            format!("External key '{xks_key_id}' {why}"),
        )
    };
    let metadata = call
        .front
        .xks
        .metadata(&endpoint(store), xks_key_id, &call.metadata(Some(key)))
        .await
        .map_err(|failure| {
            call.log_failure(&failure);
            match failure {
                XksFailure::KeyNotFound => KmsError::new(
                    ErrorName::XksKeyNotFound,
                    format!("The external key store proxy has no key '{xks_key_id}'"),
                ),
                other => KmsError::new(
                    ErrorName::CustomKeyStoreInvalidState,
                    format!("GetKeyMetadata through the external key store proxy failed: {other}"),
                ),
            }
        })?;
    if metadata.key_spec != "AES_256" {
        return Err(invalid("is not AES_256"));
    }
    for usage in ["ENCRYPT", "DECRYPT"] {
        if !metadata.key_usage.iter().any(|u| u == usage) {
            return Err(invalid(&format!("does not allow {usage}")));
        }
    }
    if metadata.key_status != "ENABLED" {
        return Err(invalid("is not ENABLED"));
    }
    Ok(())
}

fn check_xks_key_free(state: &State, store_id: &str, xks_key_id: &str) -> Result<(), KmsError> {
    let taken = state.keys.values().any(|k| {
        k.custom_key_store_id.as_deref() == Some(store_id)
            && k.xks_key_id.as_deref() == Some(xks_key_id)
    });
    if taken {
        return Err(KmsError::new(
            ErrorName::XksKeyAlreadyInUse,
            format!("XksKeyId '{xks_key_id}' is used by another KMS key of this store"),
        ));
    }
    Ok(())
}

/// botocore's `XksKeyIdType`: 1–128 of `[a-zA-Z0-9-_.]`.
fn xks_key_id(id: &str) -> Result<&str, KmsError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(id)
    } else {
        Err(KmsError::validation(
            "XksKeyId must be 1-128 of a-zA-Z0-9-_.",
        ))
    }
}

/// DescribeKey.
pub async fn describe(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let state = call.front.db.snapshot().await;
    let key = resolve_key(&state, &call.front.settings, input.req_str("KeyId")?)?;
    Ok(json!({ "KeyMetadata": key_metadata(call, &state, key) }))
}

/// ListKeys, paginated by `Limit`/`Marker`.
pub async fn list(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let state = call.front.db.snapshot().await;
    let keys: Vec<&Key> = state.keys.values().collect();
    let page = paginate(input, &keys)?;
    let entries: Vec<Value> = page
        .items
        .iter()
        .map(|k| json!({ "KeyId": k.id, "KeyArn": call.front.settings.key_arn(&k.id) }))
        .collect();
    let mut out = json!({ "Keys": entries, "Truncated": page.next.is_some() });
    if let Some(next) = page.next {
        out["NextMarker"] = Value::String(next);
    }
    Ok(out)
}

/// EnableKey / DisableKey.
pub async fn set_enabled(call: &Call<'_>, input: &Input, enabled: bool) -> Result<Value, KmsError> {
    let key_id = input.req_str("KeyId")?;
    let settings = &call.front.settings;
    call.front
        .db
        .update(|state| {
            let id = resolve_key(state, settings, key_id)?.id.clone();
            if let Some(key) = state.keys.get_mut(&id) {
                key.enabled = enabled;
            }
            Ok::<_, KmsError>(())
        })
        .await?;
    Ok(json!({}))
}

/// The `KeyMetadata` structure.
pub fn key_metadata(call: &Call<'_>, state: &State, key: &Key) -> Value {
    let settings = &call.front.settings;
    let mut out = json!({
        "AWSAccountId": settings.account_id,
        "KeyId": key.id,
        "Arn": settings.key_arn(&key.id),
        "CreationDate": key.creation_date,
        "Enabled": key.enabled,
        "Description": key.description,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyState": key_state(state, key),
        "Origin": key.origin.as_str(),
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "KeySpec": "SYMMETRIC_DEFAULT",
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": false,
    });
    if let Some(store) = &key.custom_key_store_id {
        out["CustomKeyStoreId"] = Value::String(store.clone());
    }
    if let Some(xks) = &key.xks_key_id {
        out["XksKeyConfiguration"] = json!({ "Id": xks });
    }
    out
}

/// One page of a listing.
pub struct Page<'a, T> {
    /// The items of this page.
    pub items: &'a [T],
    /// `NextMarker` when more follow.
    pub next: Option<String>,
}

/// `Limit` (1–1000, default 100) and `Marker` (the offset this front handed out).
pub fn paginate<'a, T>(input: &Input, all: &'a [T]) -> Result<Page<'a, T>, KmsError> {
    let limit = match input.opt_u64("Limit")? {
        None => 100,
        Some(n @ 1..=1000) => usize::try_from(n).unwrap_or(1000),
        Some(_) => return Err(KmsError::validation("Limit must be between 1 and 1000")),
    };
    let start = match input.opt_str("Marker")? {
        None => 0,
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= all.len())
            .ok_or_else(|| KmsError::new(ErrorName::Validation, "Invalid Marker"))?,
    };
    let end = all.len().min(start.saturating_add(limit));
    Ok(Page {
        items: &all[start..end],
        next: (end < all.len()).then(|| end.to_string()),
    })
}
