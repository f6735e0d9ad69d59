//! The classification table of `errors.rs`, code by code.

use super::*;

fn rv(rv: RvError, function: Function, op: Operation) -> HsmError {
    classify(&Error::Pkcs11(rv, function), op)
}

fn tier_of(err: HsmError) -> Option<Tier> {
    match err {
        HsmError::Pkcs11(f) => Some(f.tier),
        _ => None,
    }
}

#[test]
fn d_11_key_usage_refusals_name_the_operation() {
    let cases = [
        (Function::EncryptInit, Operation::Encrypt, "encrypt"),
        (Function::DecryptInit, Operation::Decrypt, "decrypt"),
        (Function::DecryptInit, Operation::Health, "decrypt"),
        (
            Function::GenerateKey,
            Operation::Admin,
            "key administration",
        ),
    ];
    for (function, op, operation) in cases {
        assert_eq!(
            rv(RvError::KeyFunctionNotPermitted, function, op),
            HsmError::KeyUsageNotPermitted { operation },
        );
    }
}

#[test]
fn d_12_tag_failures_during_c_decrypt_are_invalid_ciphertext() {
    for code in [
        RvError::GeneralError,
        RvError::FunctionFailed,
        RvError::EncryptedDataInvalid,
        RvError::EncryptedDataLenRange,
    ] {
        for function in [
            Function::Decrypt,
            Function::DecryptUpdate,
            Function::DecryptFinal,
        ] {
            assert_eq!(
                rv(code, function, Operation::Decrypt),
                HsmError::InvalidCiphertext
            );
        }
    }
}

#[test]
fn general_error_outside_c_decrypt_is_a_device_failure() {
    let cases = [
        (Function::DecryptInit, Operation::Decrypt),
        (Function::Encrypt, Operation::Encrypt),
        (Function::FindObjectsInit, Operation::Metadata),
    ];
    for (function, op) in cases {
        for code in [RvError::GeneralError, RvError::FunctionFailed] {
            let err = rv(code, function, op);
            assert_eq!(tier_of(err.clone()), Some(Tier::Device), "{err:?}");
        }
    }
    assert_eq!(
        rv(
            RvError::EncryptedDataInvalid,
            Function::Encrypt,
            Operation::Encrypt
        ),
        HsmError::Pkcs11(Pkcs11Failure {
            function: Pkcs11Call::Function(Function::Encrypt),
            code: Pkcs11Code::Rv(RvError::EncryptedDataInvalid),
            tier: Tier::Request,
        }),
    );
}

#[test]
fn request_level_meanings() {
    assert!(matches!(
        rv(
            RvError::KeyTypeInconsistent,
            Function::EncryptInit,
            Operation::Encrypt
        ),
        HsmError::UnsupportedKey { .. }
    ));
    assert_eq!(
        rv(RvError::DataLenRange, Function::Encrypt, Operation::Encrypt),
        HsmError::InputTooLarge
    );
    for code in [
        RvError::MechanismInvalid,
        RvError::ArgumentsBad,
        RvError::SessionReadOnly,
    ] {
        assert_eq!(
            tier_of(rv(code, Function::Encrypt, Operation::Encrypt)),
            Some(Tier::Request)
        );
    }
}

#[test]
fn tiers_drive_recovery() {
    let cases = [
        (RvError::SessionClosed, Tier::Session),
        (RvError::SessionHandleInvalid, Tier::Session),
        (RvError::ObjectHandleInvalid, Tier::Session),
        (RvError::KeyHandleInvalid, Tier::Session),
        (RvError::OperationActive, Tier::Session),
        (RvError::BufferTooSmall, Tier::Session),
        (RvError::UserNotLoggedIn, Tier::Login),
        (RvError::PinIncorrect, Tier::Login),
        (RvError::DeviceError, Tier::Device),
        (RvError::DeviceRemoved, Tier::Device),
        (RvError::DeviceMemory, Tier::Device),
        (RvError::TokenNotPresent, Tier::Device),
        (RvError::TokenNotRecognized, Tier::Device),
        (RvError::CryptokiNotInitialized, Tier::Device),
        (RvError::VendorDefined(0x8000_0001), Tier::Session),
        (RvError::UnknownErrorCode(0x1234), Tier::Session),
    ];
    for (code, tier) in cases {
        let err = rv(code, Function::EncryptInit, Operation::Encrypt);
        assert_eq!(tier_of(err), Some(tier), "{code:?}");
    }
}

#[test]
fn failures_carry_the_c_function_and_ckr_name() {
    assert_eq!(
        rv(
            RvError::DeviceError,
            Function::DecryptInit,
            Operation::Decrypt
        ),
        HsmError::Pkcs11(Pkcs11Failure {
            function: Pkcs11Call::Function(Function::DecryptInit),
            code: Pkcs11Code::Rv(RvError::DeviceError),
            tier: Tier::Device,
        }),
    );
}

#[test]
fn unknown_codes_are_recognised() {
    for code in [
        RvError::VendorDefined(0x8000_0001),
        RvError::UnknownErrorCode(0x1234),
    ] {
        let HsmError::Pkcs11(failure) = rv(code, Function::Encrypt, Operation::Encrypt) else {
            panic!("{code:?} is a PKCS#11 failure");
        };
        assert!(is_unknown_code(&failure), "{code:?}");
    }
    let HsmError::Pkcs11(known) = rv(
        RvError::SessionClosed,
        Function::Encrypt,
        Operation::Encrypt,
    ) else {
        panic!("CKR_SESSION_CLOSED is a PKCS#11 failure");
    };
    assert!(!is_unknown_code(&known));
}

#[test]
fn stale_handles_are_recognised() {
    for code in [RvError::ObjectHandleInvalid, RvError::KeyHandleInvalid] {
        assert!(is_stale_handle(&rv(
            code,
            Function::EncryptInit,
            Operation::Encrypt
        )));
    }
    assert!(!is_stale_handle(&rv(
        RvError::SessionClosed,
        Function::EncryptInit,
        Operation::Encrypt
    )));
}

#[test]
fn non_pkcs11_errors_are_classified_too() {
    assert_eq!(
        tier_of(classify(&Error::NullFunctionPointer, Operation::Session)),
        Some(Tier::Device)
    );
    assert_eq!(
        tier_of(classify(&Error::InvalidValue, Operation::Admin)),
        Some(Tier::Request)
    );
}
