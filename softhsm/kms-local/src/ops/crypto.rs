//! Encrypt, Decrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext and ReEncrypt.
//!
//! For an `EXTERNAL_KEY_STORE` key this is KMS's double encryption: the plaintext is sealed
//! under the key's AWS-side key first, and that envelope is what the proxy encrypts; Decrypt
//! reverses both. The encryption context is bound into both layers through the same
//! additional data ([`binding_aad`]): a wrong context makes the proxy's HSM refuse the
//! ciphertext (`InvalidCiphertextException`) before the AWS-side layer is even tried. An
//! `AWS_KMS` key has the AWS-side layer only. The blob layout is in [`crate::blob`].

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Call, crypto_exception, endpoint, key_state, resolve_key};
use crate::aws_layer::{self, format_uuid, parse_uuid};
use crate::blob::{Blob, Header, MAX_BLOB_LEN, Origin, binding_aad};
use crate::error::{ErrorName, KmsError};
use crate::protocol::{EncryptionContext, Input, b64};
use crate::state::{CustomKeyStore, Key, KeyOrigin, State};

/// KMS's limit on `Plaintext`.
const MAX_PLAINTEXT: usize = 4096;
/// The only algorithm of symmetric keys.
const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// Encrypt.
pub async fn encrypt(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    refuse_unsupported(input)?;
    check_algorithm(input, "EncryptionAlgorithm")?;
    let plaintext = input.req_blob("Plaintext", 1, MAX_PLAINTEXT)?;
    let context = input.context("EncryptionContext")?;
    let state = call.front.db.snapshot().await;
    let (key, store) = usable(call, &state, input.req_str("KeyId")?)?;
    let blob = seal(call, key, store, &context, &plaintext).await?;
    Ok(json!({
        "CiphertextBlob": b64(&blob),
        "KeyId": call.front.settings.key_arn(&key.id),
        "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
    }))
}

/// Decrypt; `KeyId` is optional (the blob names its key) but must match when given.
pub async fn decrypt(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    refuse_unsupported(input)?;
    check_algorithm(input, "EncryptionAlgorithm")?;
    let blob = input.req_blob("CiphertextBlob", 1, MAX_BLOB_LEN)?;
    let context = input.context("EncryptionContext")?;
    let state = call.front.db.snapshot().await;
    let (key, plaintext) = open(call, &state, &blob, input.opt_str("KeyId")?, &context).await?;
    Ok(json!({
        "KeyId": call.front.settings.key_arn(&key.id),
        "Plaintext": Zeroizing::new(b64(&plaintext)).as_str(),
        "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
    }))
}

/// GenerateDataKey (`with_plaintext`) or GenerateDataKeyWithoutPlaintext.
pub async fn generate_data_key(
    call: &Call<'_>,
    input: &Input,
    with_plaintext: bool,
) -> Result<Value, KmsError> {
    refuse_unsupported(input)?;
    let length = match (input.opt_u64("NumberOfBytes")?, input.opt_str("KeySpec")?) {
        (Some(n @ 1..=1024), None) => usize::try_from(n).unwrap_or(1024),
        (Some(_), None) => {
            return Err(KmsError::validation(
                "NumberOfBytes must be between 1 and 1024",
            ));
        }
        (None, Some("AES_256")) => 32,
        (None, Some("AES_128")) => 16,
        (None, Some(_)) => return Err(KmsError::validation("KeySpec must be AES_256 or AES_128")),
        _ => {
            return Err(KmsError::validation(
                "Specify exactly one of NumberOfBytes and KeySpec",
            ));
        }
    };
    let context = input.context("EncryptionContext")?;
    let state = call.front.db.snapshot().await;
    let (key, store) = usable(call, &state, input.req_str("KeyId")?)?;
    let data_key = aws_layer::random(length).map_err(|e| KmsError::internal(&e))?;
    let blob = seal(call, key, store, &context, &data_key).await?;
    let mut out = json!({
        "CiphertextBlob": b64(&blob),
        "KeyId": call.front.settings.key_arn(&key.id),
    });
    if with_plaintext {
        out["Plaintext"] = Value::String(b64(&data_key));
    }
    Ok(out)
}

/// ReEncrypt: decrypt under the source key and context, encrypt under the destination's.
pub async fn re_encrypt(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    refuse_unsupported(input)?;
    check_algorithm(input, "SourceEncryptionAlgorithm")?;
    check_algorithm(input, "DestinationEncryptionAlgorithm")?;
    let blob = input.req_blob("CiphertextBlob", 1, MAX_BLOB_LEN)?;
    let source_context = input.context("SourceEncryptionContext")?;
    let destination_context = input.context("DestinationEncryptionContext")?;
    let destination_id = input.req_str("DestinationKeyId")?;
    let state = call.front.db.snapshot().await;
    let (destination, store) = usable(call, &state, destination_id)?;
    let (source, plaintext) = open(
        call,
        &state,
        &blob,
        input.opt_str("SourceKeyId")?,
        &source_context,
    )
    .await?;
    let blob = seal(call, destination, store, &destination_context, &plaintext).await?;
    let settings = &call.front.settings;
    Ok(json!({
        "CiphertextBlob": b64(&blob),
        "SourceKeyId": settings.key_arn(&source.id),
        "KeyId": settings.key_arn(&destination.id),
        "SourceEncryptionAlgorithm": SYMMETRIC_DEFAULT,
        "DestinationEncryptionAlgorithm": SYMMETRIC_DEFAULT,
    }))
}

/// The key (and, for an external key, its store) if its state allows cryptography.
fn usable<'s>(
    call: &Call<'_>,
    state: &'s State,
    key_id: &str,
) -> Result<(&'s Key, Option<&'s CustomKeyStore>), KmsError> {
    let key = resolve_key(state, &call.front.settings, key_id)?;
    let arn = call.front.settings.key_arn(&key.id);
    match key_state(state, key) {
        "Disabled" => Err(KmsError::new(
            ErrorName::Disabled,
            format!("{arn} is disabled."),
        )),
        "Unavailable" => Err(KmsError::new(
            ErrorName::KmsInvalidState,
            format!("{arn} is unavailable: its custom key store is not connected."),
        )),
        _ => {
            let store = key
                .custom_key_store_id
                .as_ref()
                .and_then(|id| state.stores.get(id));
            Ok((key, store))
        }
    }
}

/// Both layers (one for `AWS_KMS`), then the blob.
async fn seal(
    call: &Call<'_>,
    key: &Key,
    store: Option<&CustomKeyStore>,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let header = header(key)?;
    let aad = binding_aad(header, context);
    let envelope =
        aws_layer::seal(&key.aws_key, &aad, plaintext).map_err(|e| KmsError::internal(&e))?;
    let blob = match (key.origin, store, key.xks_key_id.as_deref()) {
        (KeyOrigin::AwsKms, _, _) => Blob::AwsKms { header, envelope },
        (KeyOrigin::ExternalKeyStore, Some(store), Some(xks_key_id)) => {
            let xks = call
                .front
                .xks
                .encrypt(
                    &endpoint(store),
                    xks_key_id,
                    &envelope,
                    &aad,
                    &call.metadata(Some(key)),
                )
                .await
                .map_err(|failure| {
                    call.log_failure(&failure);
                    crypto_exception(&failure)
                })?;
            Blob::External { header, xks }
        }
        (KeyOrigin::ExternalKeyStore, ..) => {
            return Err(KmsError::internal(
                &"external key without store or XksKeyId",
            ));
        }
    };
    Ok(blob.to_bytes())
}

/// Parses the blob, finds and checks its key, and removes both layers.
async fn open<'s>(
    call: &Call<'_>,
    state: &'s State,
    bytes: &[u8],
    key_id: Option<&str>,
    context: &EncryptionContext,
) -> Result<(&'s Key, Zeroizing<Vec<u8>>), KmsError> {
    let invalid = || {
        KmsError::new(
            ErrorName::InvalidCiphertext,
            "The ciphertext is invalid or its encryption context does not match",
        )
    };
    let blob = Blob::parse(bytes).map_err(|_| invalid())?;
    let header = blob.header();
    let blob_key_id = format_uuid(&header.key_id);
    if let Some(requested) = key_id {
        let requested = resolve_key(state, &call.front.settings, requested)?;
        if requested.id != blob_key_id {
            return Err(KmsError::new(
                ErrorName::IncorrectKey,
                "The key ID in the request does not identify the KMS key of the ciphertext",
            ));
        }
    }
    let (key, store) = usable(call, state, &blob_key_id)?;
    let aad = binding_aad(header, context);
    let decrypted;
    let envelope: &[u8] = match (&blob, key.origin, store, key.xks_key_id.as_deref()) {
        (Blob::AwsKms { envelope, .. }, KeyOrigin::AwsKms, _, _) => envelope,
        (Blob::External { xks, .. }, KeyOrigin::ExternalKeyStore, Some(store), Some(id)) => {
            decrypted = call
                .front
                .xks
                .decrypt(&endpoint(store), id, xks, &aad, &call.metadata(Some(key)))
                .await
                .map_err(|failure| {
                    call.log_failure(&failure);
                    crypto_exception(&failure)
                })?;
            &decrypted
        }
        _ => return Err(invalid()),
    };
    let plaintext = aws_layer::open(&key.aws_key, &aad, envelope).map_err(|_| invalid())?;
    Ok((key, plaintext))
}

fn header(key: &Key) -> Result<Header, KmsError> {
    let key_id = parse_uuid(&key.id).ok_or_else(|| KmsError::internal(&"key id is not a UUID"))?;
    let origin = match key.origin {
        KeyOrigin::AwsKms => Origin::AwsKms,
        KeyOrigin::ExternalKeyStore => Origin::ExternalKeyStore,
    };
    Ok(Header { origin, key_id })
}

/// Symmetric keys have one algorithm; an asymmetric one is the wrong usage.
fn check_algorithm(input: &Input, name: &str) -> Result<(), KmsError> {
    match input.opt_str(name)? {
        None | Some(SYMMETRIC_DEFAULT) => Ok(()),
        Some("RSAES_OAEP_SHA_1" | "RSAES_OAEP_SHA_256" | "SM2PKE") => Err(KmsError::new(
            ErrorName::InvalidKeyUsage,
            format!("{name} must be SYMMETRIC_DEFAULT for a symmetric key"),
        )),
        Some(_) => Err(KmsError::validation(format!("Invalid {name}"))),
    }
}

/// Dry runs and Nitro Enclave recipients are not implemented.
fn refuse_unsupported(input: &Input) -> Result<(), KmsError> {
    if input.opt_bool("DryRun")? == Some(true) || input.opt_object("Recipient")?.is_some() {
        return Err(KmsError::new(
            ErrorName::UnsupportedOperation,
            "xks-kms-local supports neither DryRun nor Recipient",
        ));
    }
    Ok(())
}
