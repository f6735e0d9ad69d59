//! Request bodies shaped like KMS's (spec examples, checklist §2).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(value: &Value) -> Vec<u8> {
    STANDARD
        .decode(value.as_str().expect("base64 string"))
        .expect("standard base64")
}

pub fn health() -> Vec<u8> {
    json!({"requestMetadata": {"kmsRequestId": "6f0a8a5e-health", "kmsOperation": "KmsHealthCheck"}})
        .to_string()
        .into_bytes()
}

pub fn metadata() -> Vec<u8> {
    json!({"requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsOperation": "CreateKey",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae"
    }})
    .to_string()
    .into_bytes()
}

pub fn crypto_metadata(operation: &str) -> Value {
    json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
        "kmsOperation": operation,
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
        "kmsViaService": "ebs"
    })
}

pub fn encrypt(plaintext: &[u8], aad: Option<&[u8]>, cdiv: bool) -> Vec<u8> {
    let mut body = json!({
        "requestMetadata": crypto_metadata("Encrypt"),
        "plaintext": b64(plaintext),
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = json!(b64(aad));
    }
    if cdiv {
        body["ciphertextDataIntegrityValueAlgorithm"] = json!("SHA_256");
    }
    body.to_string().into_bytes()
}

/// A Decrypt body from an Encrypt response, with the request AAD.
pub fn decrypt_from(encrypted: &Value, aad: Option<&[u8]>) -> Value {
    let mut body = json!({
        "requestMetadata": crypto_metadata("Decrypt"),
        "ciphertext": encrypted["ciphertext"],
        "encryptionAlgorithm": "AES_GCM",
        "initializationVector": encrypted["initializationVector"],
        "authenticationTag": encrypted["authenticationTag"],
    });
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = json!(b64(aad));
    }
    if let Some(ctm) = encrypted.get("ciphertextMetadata") {
        body["ciphertextMetadata"] = ctm.clone();
    }
    body
}
