//! Names of PKCS#11 return values and functions, for logs and [`Pkcs11Failure`] (PKCS#11 v3.2
//! §5.1.6 `CK_RV`, §5.13 function list).
//!
//! cryptoki describes a return value with a sentence; operators search logs and vendor
//! manuals for the `CKR_*` name. Both tables match every variant explicitly, so a cryptoki
//! release that adds one fails to compile here instead of logging a wrong name.
//!
//! [`Pkcs11Failure`]: crate::hsm::Pkcs11Failure

use std::fmt;

use cryptoki::context::Function;
use cryptoki::error::RvError;

use crate::hsm::{Pkcs11Call, Pkcs11Code};

impl fmt::Display for Pkcs11Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Function(function) => f.write_str(function_name(*function)),
            Self::Binding(what) => f.write_str(what),
        }
    }
}

impl fmt::Display for Pkcs11Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rv(rv) => f.write_str(&rv_name(*rv)),
            Self::Anomaly(what) => f.write_str(what),
        }
    }
}

/// The `CKR_*` name of a return value.
pub(super) fn rv_name(rv: RvError) -> String {
    use RvError as R;
    let name = match rv {
        R::Cancel => "CKR_CANCEL",
        R::HostMemory => "CKR_HOST_MEMORY",
        R::SlotIdInvalid => "CKR_SLOT_ID_INVALID",
        R::GeneralError => "CKR_GENERAL_ERROR",
        R::FunctionFailed => "CKR_FUNCTION_FAILED",
        R::ArgumentsBad => "CKR_ARGUMENTS_BAD",
        R::NoEvent => "CKR_NO_EVENT",
        R::NeedToCreateThreads => "CKR_NEED_TO_CREATE_THREADS",
        R::CantLock => "CKR_CANT_LOCK",
        R::AttributeReadOnly => "CKR_ATTRIBUTE_READ_ONLY",
        R::AttributeSensitive => "CKR_ATTRIBUTE_SENSITIVE",
        R::AttributeTypeInvalid => "CKR_ATTRIBUTE_TYPE_INVALID",
        R::AttributeValueInvalid => "CKR_ATTRIBUTE_VALUE_INVALID",
        R::ActionProhibited => "CKR_ACTION_PROHIBITED",
        R::DataInvalid => "CKR_DATA_INVALID",
        R::DataLenRange => "CKR_DATA_LEN_RANGE",
        R::DeviceError => "CKR_DEVICE_ERROR",
        R::DeviceMemory => "CKR_DEVICE_MEMORY",
        R::DeviceRemoved => "CKR_DEVICE_REMOVED",
        R::EncryptedDataInvalid => "CKR_ENCRYPTED_DATA_INVALID",
        R::EncryptedDataLenRange => "CKR_ENCRYPTED_DATA_LEN_RANGE",
        R::FunctionCanceled => "CKR_FUNCTION_CANCELED",
        R::FunctionNotParallel => "CKR_FUNCTION_NOT_PARALLEL",
        R::FunctionNotSupported => "CKR_FUNCTION_NOT_SUPPORTED",
        R::CurveNotSupported => "CKR_CURVE_NOT_SUPPORTED",
        R::KeyHandleInvalid => "CKR_KEY_HANDLE_INVALID",
        R::KeySizeRange => "CKR_KEY_SIZE_RANGE",
        R::KeyTypeInconsistent => "CKR_KEY_TYPE_INCONSISTENT",
        R::KeyNotNeeded => "CKR_KEY_NOT_NEEDED",
        R::KeyChanged => "CKR_KEY_CHANGED",
        R::KeyNeeded => "CKR_KEY_NEEDED",
        R::KeyIndigestible => "CKR_KEY_INDIGESTIBLE",
        R::KeyFunctionNotPermitted => "CKR_KEY_FUNCTION_NOT_PERMITTED",
        R::KeyNotWrappable => "CKR_KEY_NOT_WRAPPABLE",
        R::KeyUnextractable => "CKR_KEY_UNEXTRACTABLE",
        R::MechanismInvalid => "CKR_MECHANISM_INVALID",
        R::MechanismParamInvalid => "CKR_MECHANISM_PARAM_INVALID",
        R::ObjectHandleInvalid => "CKR_OBJECT_HANDLE_INVALID",
        R::OperationActive => "CKR_OPERATION_ACTIVE",
        R::OperationNotInitialized => "CKR_OPERATION_NOT_INITIALIZED",
        R::PinIncorrect => "CKR_PIN_INCORRECT",
        R::PinInvalid => "CKR_PIN_INVALID",
        R::PinLenRange => "CKR_PIN_LEN_RANGE",
        R::PinExpired => "CKR_PIN_EXPIRED",
        R::PinLocked => "CKR_PIN_LOCKED",
        R::SessionClosed => "CKR_SESSION_CLOSED",
        R::SessionCount => "CKR_SESSION_COUNT",
        R::SessionHandleInvalid => "CKR_SESSION_HANDLE_INVALID",
        R::SessionParallelNotSupported => "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        R::SessionReadOnly => "CKR_SESSION_READ_ONLY",
        R::SessionExists => "CKR_SESSION_EXISTS",
        R::SessionReadOnlyExists => "CKR_SESSION_READ_ONLY_EXISTS",
        R::SessionReadWriteSoExists => "CKR_SESSION_READ_WRITE_SO_EXISTS",
        R::SignatureInvalid => "CKR_SIGNATURE_INVALID",
        R::SignatureLenRange => "CKR_SIGNATURE_LEN_RANGE",
        R::TemplateIncomplete => "CKR_TEMPLATE_INCOMPLETE",
        R::TemplateInconsistent => "CKR_TEMPLATE_INCONSISTENT",
        R::TokenNotPresent => "CKR_TOKEN_NOT_PRESENT",
        R::TokenNotRecognized => "CKR_TOKEN_NOT_RECOGNIZED",
        R::TokenWriteProtected => "CKR_TOKEN_WRITE_PROTECTED",
        R::UnwrappingKeyHandleInvalid => "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        R::UnwrappingKeySizeRange => "CKR_UNWRAPPING_KEY_SIZE_RANGE",
        R::UnwrappingKeyTypeInconsistent => "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        R::UserAlreadyLoggedIn => "CKR_USER_ALREADY_LOGGED_IN",
        R::UserNotLoggedIn => "CKR_USER_NOT_LOGGED_IN",
        R::UserPinNotInitialized => "CKR_USER_PIN_NOT_INITIALIZED",
        R::UserTypeInvalid => "CKR_USER_TYPE_INVALID",
        R::UserAnotherAlreadyLoggedIn => "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        R::UserTooManyTypes => "CKR_USER_TOO_MANY_TYPES",
        R::WrappedKeyInvalid => "CKR_WRAPPED_KEY_INVALID",
        R::WrappedKeyLenRange => "CKR_WRAPPED_KEY_LEN_RANGE",
        R::WrappingKeyHandleInvalid => "CKR_WRAPPING_KEY_HANDLE_INVALID",
        R::WrappingKeySizeRange => "CKR_WRAPPING_KEY_SIZE_RANGE",
        R::WrappingKeyTypeInconsistent => "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        R::RandomSeedNotSupported => "CKR_RANDOM_SEED_NOT_SUPPORTED",
        R::RandomNoRng => "CKR_RANDOM_NO_RNG",
        R::DomainParamsInvalid => "CKR_DOMAIN_PARAMS_INVALID",
        R::BufferTooSmall => "CKR_BUFFER_TOO_SMALL",
        R::SavedStateInvalid => "CKR_SAVED_STATE_INVALID",
        R::InformationSensitive => "CKR_INFORMATION_SENSITIVE",
        R::StateUnsaveable => "CKR_STATE_UNSAVEABLE",
        R::CryptokiNotInitialized => "CKR_CRYPTOKI_NOT_INITIALIZED",
        R::CryptokiAlreadyInitialized => "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        R::MutexBad => "CKR_MUTEX_BAD",
        R::MutexNotLocked => "CKR_MUTEX_NOT_LOCKED",
        R::NewPinMode => "CKR_NEW_PIN_MODE",
        R::NextOtp => "CKR_NEXT_OTP",
        R::ExceededMaxIterations => "CKR_EXCEEDED_MAX_ITERATIONS",
        R::FipsSelfTestFailed => "CKR_FIPS_SELF_TEST_FAILED",
        R::LibraryLoadFailed => "CKR_LIBRARY_LOAD_FAILED",
        R::PinTooWeak => "CKR_PIN_TOO_WEAK",
        R::PublicKeyInvalid => "CKR_PUBLIC_KEY_INVALID",
        R::FunctionRejected => "CKR_FUNCTION_REJECTED",
        R::VendorDefined(code) => return format!("CKR_VENDOR_DEFINED(0x{code:08x})"),
        R::UnknownErrorCode(code) => return format!("CKR_UNKNOWN(0x{code:08x})"),
    };
    name.to_owned()
}

/// Expands to an exhaustive `match` from [`Function`] to its `C_*` name.
macro_rules! c_names {
    ($function:expr; $($variant:ident),* $(,)?) => {
        match $function {
            $(Function::$variant => concat!("C_", stringify!($variant)),)*
        }
    };
}

/// The `C_*` name of a PKCS#11 function.
pub(super) fn function_name(function: Function) -> &'static str {
    c_names!(function;
        Initialize, Finalize, GetInfo, GetFunctionList, GetSlotList, GetSlotInfo, GetTokenInfo,
        GetMechanismList, GetMechanismInfo, InitToken, InitPIN, SetPIN, OpenSession,
        CloseSession, CloseAllSessions, GetSessionInfo, GetOperationState, SetOperationState,
        Login, Logout, CreateObject, CopyObject, DestroyObject, GetObjectSize,
        GetAttributeValue, SetAttributeValue, FindObjectsInit, FindObjects, FindObjectsFinal,
        EncryptInit, Encrypt, EncryptUpdate, EncryptFinal, DecryptInit, Decrypt, DecryptUpdate,
        DecryptFinal, DigestInit, Digest, DigestUpdate, DigestKey, DigestFinal, SignInit, Sign,
        SignUpdate, SignFinal, SignRecoverInit, SignRecover, VerifyInit, Verify, VerifyUpdate,
        VerifyFinal, VerifyRecoverInit, VerifyRecover, DigestEncryptUpdate,
        DecryptDigestUpdate, SignEncryptUpdate, DecryptVerifyUpdate, GenerateKey,
        GenerateKeyPair, WrapKey, UnwrapKey, DeriveKey, SeedRandom, GenerateRandom,
        GetFunctionStatus, CancelFunction, WaitForSlotEvent, GetInterfaceList, GetInterface,
        LoginUser, SessionCancel, MessageEncryptInit, EncryptMessage, EncryptMessageBegin,
        EncryptMessageNext, MessageEncryptFinal, MessageDecryptInit, DecryptMessage,
        DecryptMessageBegin, DecryptMessageNext, MessageDecryptFinal, MessageSignInit,
        SignMessage, SignMessageBegin, SignMessageNext, MessageSignFinal, MessageVerifyInit,
        VerifyMessage, VerifyMessageBegin, VerifyMessageNext, MessageVerifyFinal,
        EncapsulateKey, DecapsulateKey, VerifySignatureInit, VerifySignature,
        VerifySignatureUpdate, VerifySignatureFinal, GetSessionValidationFlags, AsyncComplete,
        AsyncGetID, AsyncJoin, WrapKeyAuthenticated, UnwrapKeyAuthenticated,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_standard_spelling() {
        assert_eq!(rv_name(RvError::GeneralError), "CKR_GENERAL_ERROR");
        assert_eq!(
            rv_name(RvError::VendorDefined(0x8000_0001)),
            "CKR_VENDOR_DEFINED(0x80000001)"
        );
        assert_eq!(function_name(Function::DecryptInit), "C_DecryptInit");
        assert_eq!(function_name(Function::InitPIN), "C_InitPIN");
    }

    #[test]
    fn typed_failures_display_the_names_and_compare_by_function() {
        let login = Pkcs11Call::Function(Function::Login);
        assert_eq!(login.to_string(), "C_Login");
        assert_eq!(login, Pkcs11Call::Function(Function::Login));
        assert_ne!(login, Pkcs11Call::Function(Function::Logout));
        assert_ne!(login, Pkcs11Call::Binding("C_Login"));
        assert_eq!(Pkcs11Call::Binding("dlopen").to_string(), "dlopen");
        assert_eq!(
            Pkcs11Code::Rv(RvError::VendorDefined(0x8000_0001)).to_string(),
            "CKR_VENDOR_DEFINED(0x80000001)"
        );
        assert_eq!(
            Pkcs11Code::Anomaly("missing symbol").to_string(),
            "missing symbol"
        );
    }
}
