//! Custom key store operations for `EXTERNAL_KEY_STORE` with `PUBLIC_ENDPOINT` connectivity.
//!
//! Create and Update run GetHealthStatus against the proxy first and raise the developer
//! guide's exceptions (`XksProxyIncorrectAuthenticationCredentialException`, …) when it fails.
//! Connect also runs it, but, as in KMS, always answers `{}`: a failure shows as
//! `ConnectionState: FAILED` with a `ConnectionErrorCode` in DescribeCustomKeyStores. KMS
//! connects asynchronously (`CONNECTING` for a while); here the outcome is known when Connect
//! answers.

use serde_json::{Value, json};

use super::{Call, connection_error_code, endpoint, health_exception};
use crate::aws_layer;
use crate::error::{ErrorName, KmsError};
use crate::protocol::{Input, now_epoch};
use crate::state::{ConnectionState, CustomKeyStore, State};
use crate::xks_client::parse_endpoint;

/// CreateCustomKeyStore.
pub async fn create(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let name = store_name(input.req_str("CustomKeyStoreName")?)?;
    match input
        .opt_str("CustomKeyStoreType")?
        .unwrap_or("AWS_CLOUDHSM")
    {
        "EXTERNAL_KEY_STORE" => {}
        "AWS_CLOUDHSM" => {
            return Err(KmsError::new(
                ErrorName::UnsupportedOperation,
                "xks-kms-local supports only CustomKeyStoreType EXTERNAL_KEY_STORE",
            ));
        }
        _ => return Err(KmsError::validation("Invalid CustomKeyStoreType")),
    }
    connectivity(input.opt_str("XksProxyConnectivity")?.ok_or_else(|| {
        KmsError::validation("XksProxyConnectivity is required for an external key store")
    })?)?;
    let (access_key_id, secret) = credential(input)?.ok_or_else(|| {
        KmsError::validation(
            "XksProxyAuthenticationCredential is required for an external key store",
        )
    })?;
    let id = format!(
        "cks-{}",
        aws_layer::random(9)
            .map_err(|e| KmsError::internal(&e))?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .get(..17)
            .unwrap_or_default()
    );
    let store = CustomKeyStore {
        id: id.clone(),
        name: name.to_owned(),
        uri_endpoint: uri_endpoint(input.req_str("XksProxyUriEndpoint")?)?.to_owned(),
        uri_path: uri_path(input.req_str("XksProxyUriPath")?)?.to_owned(),
        access_key_id,
        secret,
        state: ConnectionState::Disconnected,
        error_code: None,
        creation_date: now_epoch(),
    };
    check_unique(&call.front.db.snapshot().await, &store)?;
    check_health(call, &store).await?;
    call.front
        .db
        .update(|state| {
            check_unique(state, &store)?;
            state.stores.insert(id.clone(), store);
            Ok::<_, KmsError>(())
        })
        .await?;
    Ok(json!({ "CustomKeyStoreId": id }))
}

/// ConnectCustomKeyStore.
pub async fn connect(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let id = input.req_str("CustomKeyStoreId")?;
    let store = find(&call.front.db.snapshot().await, id)?.clone();
    match store.state {
        ConnectionState::Connected => return Ok(json!({})),
        ConnectionState::Failed | ConnectionState::Connecting => {
            return Err(invalid_state(
                "ConnectCustomKeyStore needs a DISCONNECTED store: disconnect a FAILED one first",
            ));
        }
        ConnectionState::Disconnected => {}
    }
    let outcome = call
        .front
        .xks
        .health(&endpoint(&store), &call.metadata(None))
        .await;
    if let Err(failure) = &outcome {
        call.log_failure(failure);
    }
    call.front
        .db
        .update(|state| {
            let store = find_mut(state, id)?;
            match &outcome {
                Ok(()) => {
                    store.state = ConnectionState::Connected;
                    store.error_code = None;
                }
                Err(failure) => {
                    store.state = ConnectionState::Failed;
                    store.error_code = Some(connection_error_code(failure).to_owned());
                }
            }
            Ok::<_, KmsError>(())
        })
        .await?;
    Ok(json!({}))
}

/// DisconnectCustomKeyStore.
pub async fn disconnect(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let id = input.req_str("CustomKeyStoreId")?;
    call.front
        .db
        .update(|state| {
            let store = find_mut(state, id)?;
            if store.state == ConnectionState::Disconnected {
                return Err(invalid_state(
                    "The custom key store is already DISCONNECTED",
                ));
            }
            store.state = ConnectionState::Disconnected;
            store.error_code = None;
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

/// UpdateCustomKeyStore: name, credential and path may change while connected; endpoint and
/// connectivity only while disconnected. A change of endpoint, path or credential is checked
/// against the proxy before it is saved.
pub async fn update(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let id = input.req_str("CustomKeyStoreId")?;
    for cloudhsm_only in ["KeyStorePassword", "CloudHsmClusterId"] {
        if input.opt_str(cloudhsm_only)?.is_some() {
            return Err(KmsError::validation(format!(
                "{cloudhsm_only} is not valid for an external key store"
            )));
        }
    }
    let current = find(&call.front.db.snapshot().await, id)?.clone();
    let mut next = current.clone();
    if let Some(name) = input.opt_str("NewCustomKeyStoreName")? {
        next.name = store_name(name)?.to_owned();
    }
    if let Some(path) = input.opt_str("XksProxyUriPath")? {
        next.uri_path = uri_path(path)?.to_owned();
    }
    if let Some((access_key_id, secret)) = credential(input)? {
        next.access_key_id = access_key_id;
        next.secret = secret;
    }
    let endpoint_given = input.opt_str("XksProxyUriEndpoint")?;
    if let Some(uri) = endpoint_given {
        next.uri_endpoint = uri_endpoint(uri)?.to_owned();
    }
    if let Some(c) = input.opt_str("XksProxyConnectivity")? {
        connectivity(c)?;
    }
    let needs_disconnected =
        endpoint_given.is_some() || input.opt_str("XksProxyConnectivity")?.is_some();
    if needs_disconnected && current.state != ConnectionState::Disconnected {
        return Err(invalid_state(
            "XksProxyUriEndpoint and XksProxyConnectivity can change only while DISCONNECTED",
        ));
    }
    let connection_changed = next.uri_endpoint != current.uri_endpoint
        || next.uri_path != current.uri_path
        || next.access_key_id != current.access_key_id
        || *next.secret != *current.secret;
    check_unique(&call.front.db.snapshot().await, &next)?;
    if connection_changed {
        check_health(call, &next).await?;
    }
    call.front
        .db
        .update(|state| {
            check_unique(state, &next)?;
            let store = find_mut(state, id)?;
            // Keep the state as it is now: a Disconnect may have happened meanwhile.
            next.state = store.state;
            next.error_code = store.error_code.take();
            *store = next;
            Ok::<_, KmsError>(())
        })
        .await?;
    Ok(json!({}))
}

/// DescribeCustomKeyStores, filtered by id or name, paginated by `Limit`/`Marker`.
pub async fn describe(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let state = call.front.db.snapshot().await;
    let by_id = input.opt_str("CustomKeyStoreId")?;
    let by_name = input.opt_str("CustomKeyStoreName")?;
    let stores: Vec<&CustomKeyStore> = state
        .stores
        .values()
        .filter(|s| by_id.is_none_or(|id| s.id == id))
        .filter(|s| by_name.is_none_or(|name| s.name == name))
        .collect();
    if stores.is_empty() && (by_id.is_some() || by_name.is_some()) {
        return Err(KmsError::new(
            ErrorName::CustomKeyStoreNotFound,
            "No custom key store matches the id or name",
        ));
    }
    let page = super::keys::paginate(input, &stores)?;
    let entries: Vec<Value> = page.items.iter().map(|s| describe_store(s)).collect();
    let mut out = json!({ "CustomKeyStores": entries, "Truncated": page.next.is_some() });
    if let Some(next) = page.next {
        out["NextMarker"] = Value::String(next);
    }
    Ok(out)
}

/// DeleteCustomKeyStore: only a DISCONNECTED store without KMS keys.
pub async fn delete(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    let id = input.req_str("CustomKeyStoreId")?;
    call.front
        .db
        .update(|state| {
            let store = find(state, id)?;
            if store.state != ConnectionState::Disconnected {
                return Err(invalid_state(
                    "Disconnect the custom key store before deleting it",
                ));
            }
            if state
                .keys
                .values()
                .any(|k| k.custom_key_store_id.as_deref() == Some(id))
            {
                return Err(KmsError::new(
                    ErrorName::CustomKeyStoreHasCmks,
                    "The custom key store still has KMS keys",
                ));
            }
            state.stores.remove(id);
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

fn describe_store(store: &CustomKeyStore) -> Value {
    let mut out = json!({
        "CustomKeyStoreId": store.id,
        "CustomKeyStoreName": store.name,
        "ConnectionState": store.state.as_str(),
        "CreationDate": store.creation_date,
        "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
        "XksProxyConfiguration": {
            "Connectivity": "PUBLIC_ENDPOINT",
            "AccessKeyId": store.access_key_id,
            "UriEndpoint": store.uri_endpoint,
            "UriPath": store.uri_path,
        },
    });
    if let Some(code) = &store.error_code {
        out["ConnectionErrorCode"] = Value::String(code.clone());
    }
    out
}

async fn check_health(call: &Call<'_>, store: &CustomKeyStore) -> Result<(), KmsError> {
    call.front
        .xks
        .health(&endpoint(store), &call.metadata(None))
        .await
        .map_err(|failure| {
            call.log_failure(&failure);
            health_exception(&failure)
        })
}

/// The store by id.
pub fn find<'s>(state: &'s State, id: &str) -> Result<&'s CustomKeyStore, KmsError> {
    state
        .stores
        .get(id)
        .ok_or_else(|| KmsError::store_not_found(id))
}

fn find_mut<'s>(state: &'s mut State, id: &str) -> Result<&'s mut CustomKeyStore, KmsError> {
    state
        .stores
        .get_mut(id)
        .ok_or_else(|| KmsError::store_not_found(id))
}

fn invalid_state(message: &str) -> KmsError {
    KmsError::new(ErrorName::CustomKeyStoreInvalidState, message)
}

/// Names and endpoint + path are unique across the other stores.
fn check_unique(state: &State, store: &CustomKeyStore) -> Result<(), KmsError> {
    for other in state.stores.values().filter(|o| o.id != store.id) {
        if other.name == store.name {
            return Err(KmsError::new(
                ErrorName::CustomKeyStoreNameInUse,
                format!("Custom key store name '{}' is in use", store.name),
            ));
        }
        if other.uri_endpoint == store.uri_endpoint && other.uri_path == store.uri_path {
            return Err(KmsError::new(
                ErrorName::XksProxyUriInUse,
                "Another custom key store uses this XksProxyUriEndpoint and XksProxyUriPath",
            ));
        }
    }
    Ok(())
}

fn store_name(name: &str) -> Result<&str, KmsError> {
    if name.chars().count() > 256 {
        return Err(KmsError::validation(
            "CustomKeyStoreName is longer than 256",
        ));
    }
    Ok(name)
}

fn connectivity(value: &str) -> Result<(), KmsError> {
    match value {
        "PUBLIC_ENDPOINT" => Ok(()),
        "VPC_ENDPOINT_SERVICE" => Err(KmsError::new(
            ErrorName::UnsupportedOperation,
            "xks-kms-local supports only PUBLIC_ENDPOINT connectivity",
        )),
        _ => Err(KmsError::validation("Invalid XksProxyConnectivity")),
    }
}

/// `https://host[:port]`, 10–128 characters (KMS takes no port; one is allowed here).
fn uri_endpoint(value: &str) -> Result<&str, KmsError> {
    if !(10..=128).contains(&value.len()) || parse_endpoint(value).is_err() {
        return Err(KmsError::validation(
            "XksProxyUriEndpoint must be https://host or https://host:port",
        ));
    }
    Ok(value)
}

/// botocore's pattern `^(/[a-zA-Z0-9\/_-]+/kms/xks/v\d{1,2})$|^(/kms/xks/v\d{1,2})$`, 10–128.
pub fn uri_path(value: &str) -> Result<&str, KmsError> {
    let bad = || KmsError::validation("XksProxyUriPath must be [/prefix]/kms/xks/v<1-2 digits>");
    if !(10..=128).contains(&value.len()) {
        return Err(bad());
    }
    let (prefix, version) = value.rsplit_once("/kms/xks/v").ok_or_else(bad)?;
    let version_ok =
        (1..=2).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_digit());
    let prefix_ok = prefix.is_empty()
        || (prefix.len() >= 2
            && prefix.starts_with('/')
            && prefix[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b)));
    if version_ok && prefix_ok {
        Ok(value)
    } else {
        Err(bad())
    }
}

/// `XksProxyAuthenticationCredential`, validated as botocore's model constrains it.
fn credential(input: &Input) -> Result<Option<(String, zeroize::Zeroizing<String>)>, KmsError> {
    let Some(credential) = input.opt_object("XksProxyAuthenticationCredential")? else {
        return Ok(None);
    };
    let access_key_id = credential.req_str("AccessKeyId")?;
    let secret = zeroize::Zeroizing::new(credential.req_str("RawSecretAccessKey")?.to_owned());
    let id_ok = (20..=30).contains(&access_key_id.len())
        && access_key_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    let secret_ok = (43..=64).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/+=".contains(&b));
    if !id_ok || !secret_ok {
        return Err(KmsError::validation(
            "XksProxyAuthenticationCredential: AccessKeyId must be 20-30 of A-Z2-7 and \
             RawSecretAccessKey 43-64 of a-zA-Z0-9/+=",
        ));
    }
    Ok(Some((access_key_id.to_owned(), secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_follow_the_model_pattern() {
        for good in ["/kms/xks/v1", "/tenant-a/kms/xks/v1", "/a/b_c/kms/xks/v12"] {
            assert!(uri_path(good).is_ok(), "{good}");
        }
        for bad in [
            "/kms/xks/v",
            "kms/xks/v1",
            "/kms/xks/v123",
            "/a b/kms/xks/v1",
            "/kms/xks/v1/",
            "//kms/xks/v1x",
        ] {
            assert!(uri_path(bad).is_err(), "{bad}");
        }
    }
}
