//! Parsing tests for the request bodies (G-1…9, E-3, E-5, H-18, D-4) and response shapes.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::xks::ErrorName;

const META_CRYPTO: &str = r#""requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/k","kmsOperation":"Encrypt","kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae","kmsViaService":"ebs"}"#;

fn encrypt_body(rest: &str) -> Vec<u8> {
    format!("{{{META_CRYPTO},{rest}}}").into_bytes()
}

fn validation_message(result: Result<impl Sized, XksError>) -> String {
    let err = result.err().expect("expected an error");
    assert_eq!(err.name(), ErrorName::ValidationException, "{err}");
    err.message().to_owned()
}

#[test]
fn g_5_unknown_fields_and_g_4_unlisted_operations_are_accepted() {
    let body = br#"{"requestMetadata":{"awsPrincipalArn":"p","kmsOperation":"DescribeKey","kmsRequestId":"not-a-uuid","kmsKeyArn":"k","kmsViaService":"ebs","SourceIdentity":"x"},"extra":{"a":1}}"#;
    let req = KeyMetadataRequest::parse(body).unwrap();
    assert_eq!(req.metadata.kms_operation, "DescribeKey");
    assert_eq!(req.metadata.kms_request_id, "not-a-uuid");
    assert_eq!(req.metadata.kms_key_arn.as_deref(), Some("k"));
}

#[test]
fn g_7_h_18_missing_or_empty_request_metadata_is_a_validation_error() {
    for body in [
        &b"{}"[..],
        br#"{"requestMetadata":{}}"#,
        br#"{"requestMetadata":null}"#,
    ] {
        validation_message(HealthRequest::parse(body));
        validation_message(KeyMetadataRequest::parse(body));
    }
    let msg = validation_message(HealthRequest::parse(
        br#"{"requestMetadata":{"kmsRequestId":"r"}}"#,
    ));
    assert_eq!(msg, "requestMetadata.kmsOperation is required");
    let msg = validation_message(KeyMetadataRequest::parse(
        br#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"CreateKey"}}"#,
    ));
    assert_eq!(msg, "requestMetadata.awsPrincipalArn is required");
    let health = HealthRequest::parse(
        br#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"KmsHealthCheck"}}"#,
    );
    assert_eq!(health.unwrap().metadata.kms_operation, "KmsHealthCheck");
}

#[test]
fn g_8_wrong_types_and_malformed_json_are_validation_errors() {
    validation_message(HealthRequest::parse(b"not json"));
    validation_message(HealthRequest::parse(b"[]"));
    let msg = validation_message(HealthRequest::parse(
        br#"{"requestMetadata":{"kmsRequestId":5,"kmsOperation":"x"}}"#,
    ));
    assert_eq!(msg, "requestMetadata.kmsRequestId must be a string");
    let msg = validation_message(EncryptRequest::parse(&encrypt_body(
        r#""plaintext":7,"encryptionAlgorithm":"AES_GCM""#,
    )));
    assert_eq!(msg, "plaintext must be a string");
    // An explicit null in an optional field is treated as absent.
    let req = EncryptRequest::parse(&encrypt_body(
        r#""plaintext":"AA==","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":null"#,
    ))
    .unwrap();
    assert!(req.aad.is_empty());
}

#[test]
fn e_1_e_3_e_5_encrypt_fields() {
    let req = EncryptRequest::parse(&encrypt_body(
        r#""plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":"cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n","ciphertextDataIntegrityValueAlgorithm":"SHA_256""#,
    ))
    .unwrap();
    assert_eq!(&req.plaintext[..], b"Hello World!");
    assert_eq!(req.aad, b"project=nile,department=marketing");
    assert!(req.want_cdiv);
    let msg = validation_message(EncryptRequest::parse(&encrypt_body(
        r#""encryptionAlgorithm":"AES_GCM""#,
    )));
    assert_eq!(msg, "plaintext is required");
    let msg = validation_message(EncryptRequest::parse(&encrypt_body(
        r#""plaintext":"AA==","encryptionAlgorithm":"AES_CBC""#,
    )));
    assert_eq!(msg, "encryptionAlgorithm must be AES_GCM");
    let msg = validation_message(EncryptRequest::parse(&encrypt_body(
        r#""plaintext":"AA==""#,
    )));
    assert_eq!(msg, "encryptionAlgorithm is required");
    let msg = validation_message(EncryptRequest::parse(&encrypt_body(
        r#""plaintext":"AA==","encryptionAlgorithm":"AES_GCM","ciphertextDataIntegrityValueAlgorithm":"SHA_1""#,
    )));
    assert_eq!(msg, "ciphertextDataIntegrityValueAlgorithm must be SHA_256");
    let no_key_arn = br#"{"requestMetadata":{"awsPrincipalArn":"p","kmsOperation":"Encrypt","kmsRequestId":"r"},"plaintext":"AA==","encryptionAlgorithm":"AES_GCM"}"#;
    assert_eq!(
        validation_message(EncryptRequest::parse(no_key_arn)),
        "requestMetadata.kmsKeyArn is required"
    );
}

#[test]
fn g_6_only_standard_padded_base64_is_accepted() {
    for bad in ["SGVsbG8", "a-_b", "SGVsbG8=\\n", "%%%%"] {
        let body = encrypt_body(&format!(
            r#""plaintext":"{bad}","encryptionAlgorithm":"AES_GCM""#
        ));
        assert_eq!(
            validation_message(EncryptRequest::parse(&body)),
            "plaintext is not valid standard Base64",
            "{bad}"
        );
    }
    assert_eq!(b64(&[0xfb, 0xff]), "+/8=");
}

#[test]
fn decrypt_fields_are_decoded_and_required() {
    let body = format!(
        r#"{{{META_CRYPTO},"ciphertext":"ghxkK1txeDNn3q8Y","ciphertextMetadata":"a2V5X3ZlcnNpb249MQ==","encryptionAlgorithm":"AES_GCM","initializationVector":"HMrlRw85cAJUd5Ax","authenticationTag":"vBxN2ncH1oEkR8WVXpmyYQ=="}}"#
    );
    let req = DecryptRequest::parse(body.as_bytes()).unwrap();
    assert_eq!(req.ciphertext.len(), 12);
    assert_eq!(req.ciphertext_metadata, b"key_version=1");
    assert_eq!((req.iv.len(), req.tag.len()), (12, 16));
    assert!(req.aad.is_empty());
    for field in ["ciphertext", "initializationVector", "authenticationTag"] {
        let without = body.replace(&format!(r#""{field}":"#), r#""ignored":"#);
        let msg = validation_message(DecryptRequest::parse(without.as_bytes()));
        assert_eq!(msg, format!("{field} is required"));
    }
}

#[test]
fn e_6_e_15_responses_are_compact_and_omit_absent_fields() {
    let resp = EncryptResponse {
        ciphertext: "Y3Q=".into(),
        ciphertext_metadata: None,
        initialization_vector: "aXY=".into(),
        authentication_tag: "dGFn".into(),
        ciphertext_data_integrity_value: None,
    };
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        r#"{"ciphertext":"Y3Q=","initializationVector":"aXY=","authenticationTag":"dGFn"}"#
    );
}

#[test]
fn log_2_debug_output_never_contains_plaintext() {
    let req = EncryptRequest::parse(&encrypt_body(
        r#""plaintext":"U0VDUkVUQ0FOQVJZ","encryptionAlgorithm":"AES_GCM""#,
    ))
    .unwrap();
    let dbg = format!("{req:?}");
    assert!(
        !dbg.contains("SECRETCANARY") && !dbg.contains("U0VDUkVUQ0FOQVJZ"),
        "{dbg}"
    );
    let resp = DecryptResponse {
        plaintext: Zeroizing::new("U0VDUkVUQ0FOQVJZ".into()),
    };
    assert!(!format!("{resp:?}").contains("U0VD"));
}

#[test]
fn g_8_explicit_nulls_count_as_absent() {
    let msg = validation_message(HealthRequest::parse(br#"{"requestMetadata":null}"#));
    assert_eq!(msg, "requestMetadata is required");
    let msg = validation_message(HealthRequest::parse(
        br#"{"requestMetadata":{"kmsRequestId":null,"kmsOperation":"x"}}"#,
    ));
    assert_eq!(msg, "requestMetadata.kmsRequestId is required");
    let req = EncryptRequest::parse(&encrypt_body(
        r#""plaintext":"SGk=","encryptionAlgorithm":"AES_GCM","additionalAuthenticatedData":null,"ciphertextDataIntegrityValueAlgorithm":null"#,
    ))
    .unwrap();
    assert!(req.aad.is_empty());
    assert!(!req.want_cdiv);
    assert_eq!(req.metadata.aws_source_vpc, None);
}

#[test]
fn escaped_strings_are_decoded() {
    let req = EncryptRequest::parse(
        br#" {"requestMetadata":{"awsPrincipalArn":"p\"q","kmsKeyArn":"k","kmsOperation":"Enc\u0072ypt","kmsRequestId":"a\\b\nc"},
            "plaintext":"SGVsbG8\/","encryptionAlgorithm":"AES\u005fGCM"} "#,
    )
    .unwrap();
    assert_eq!(req.metadata.kms_operation, "Encrypt");
    assert_eq!(req.metadata.kms_request_id, "a\\b\nc");
    assert_eq!(req.metadata.aws_principal_arn.as_deref(), Some("p\"q"));
    assert_eq!(&req.plaintext[..], b"Hello?");
}

#[test]
fn shapes_other_than_an_object_and_repeated_fields_are_refused() {
    assert_eq!(
        validation_message(HealthRequest::parse(b" [1, 2] ")),
        "the request body must be a JSON object"
    );
    assert_eq!(
        validation_message(HealthRequest::parse(b"\"text\"")),
        "the request body must be a JSON object"
    );
    assert_eq!(
        validation_message(HealthRequest::parse(b"{\"requestMetadata\":{}")),
        "the request body is not valid JSON"
    );
    assert_eq!(
        validation_message(HealthRequest::parse(
            br#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"x"},"extra":[1,}"#
        )),
        "the request body is not valid JSON"
    );
    assert_eq!(
        validation_message(HealthRequest::parse(br#"{"requestMetadata":["r","x"]}"#)),
        "requestMetadata must be a JSON object"
    );
    let twice =
        encrypt_body(r#""plaintext":"SGk=","plaintext":"SGk=","encryptionAlgorithm":"AES_GCM""#);
    assert_eq!(
        validation_message(EncryptRequest::parse(&twice)),
        "the request body gives a field more than once"
    );
    assert_eq!(
        validation_message(HealthRequest::parse(
            br#"{"requestMetadata":{"kmsRequestId":"r","kmsRequestId":"s","kmsOperation":"x"}}"#
        )),
        "requestMetadata gives a field more than once"
    );
    // Malformed inside a known string, or anywhere as UTF-8: not valid JSON.
    assert_eq!(
        validation_message(EncryptRequest::parse(&encrypt_body(
            r#""plaintext":"\ud800","encryptionAlgorithm":"AES_GCM""#
        ))),
        "the request body is not valid JSON"
    );
    let mut bad_utf8 =
        encrypt_body(r#""plaintext":"SGk=","encryptionAlgorithm":"AES_GCM","x":"?""#);
    let at = bad_utf8.iter().rposition(|&b| b == b'?').unwrap();
    bad_utf8[at] = 0xff;
    assert_eq!(
        validation_message(EncryptRequest::parse(&bad_utf8)),
        "the request body is not valid JSON"
    );
    // Unknown fields may repeat: they are skipped, not read.
    HealthRequest::parse(
        br#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"x","z":1,"z":2},"y":1,"y":2}"#,
    )
    .unwrap();
}
