//! `CKR_*` return values by name, for the control file's `fail` rule (PKCS#11 2.40 §11.1,
//! plus the 3.x codes that cryptoki-sys defines).
//!
//! The table is built from cryptoki-sys' constants, so every name resolves to the value the
//! proxy's own binding uses. A value can also be written as `0x…` hex or decimal, e.g. for
//! vendor-defined codes (`CKR_VENDOR_DEFINED` = `0x80000000` and up).

use cryptoki_sys::*;

/// Builds the name table from constant identifiers, so a typo fails to compile.
macro_rules! rv_table {
    ($($name:ident),* $(,)?) => {
        /// Every `CKR_*` name cryptoki-sys knows (except `CKR_VENDOR_DEFINED`), with its value.
        pub const NAMES: &[(&str, CK_RV)] = &[$((stringify!($name), $name)),*];
    };
}

rv_table! {
    CKR_OK,
    CKR_CANCEL,
    CKR_HOST_MEMORY,
    CKR_SLOT_ID_INVALID,
    CKR_GENERAL_ERROR,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_NO_EVENT,
    CKR_NEED_TO_CREATE_THREADS,
    CKR_CANT_LOCK,
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_ACTION_PROHIBITED,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_ENCRYPTED_DATA_LEN_RANGE,
    CKR_AEAD_DECRYPT_FAILED,
    CKR_FUNCTION_CANCELED,
    CKR_FUNCTION_NOT_PARALLEL,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_SIZE_RANGE,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_NOT_NEEDED,
    CKR_KEY_CHANGED,
    CKR_KEY_NEEDED,
    CKR_KEY_INDIGESTIBLE,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_KEY_NOT_WRAPPABLE,
    CKR_KEY_UNEXTRACTABLE,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_OPERATION_ACTIVE,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_SESSION_HANDLE_INVALID,
    CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    CKR_SESSION_READ_ONLY,
    CKR_SESSION_EXISTS,
    CKR_SESSION_READ_ONLY_EXISTS,
    CKR_SESSION_READ_WRITE_SO_EXISTS,
    CKR_SIGNATURE_INVALID,
    CKR_SIGNATURE_LEN_RANGE,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_TOKEN_NOT_PRESENT,
    CKR_TOKEN_NOT_RECOGNIZED,
    CKR_TOKEN_WRITE_PROTECTED,
    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    CKR_UNWRAPPING_KEY_SIZE_RANGE,
    CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_USER_TYPE_INVALID,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_TOO_MANY_TYPES,
    CKR_WRAPPED_KEY_INVALID,
    CKR_WRAPPED_KEY_LEN_RANGE,
    CKR_WRAPPING_KEY_HANDLE_INVALID,
    CKR_WRAPPING_KEY_SIZE_RANGE,
    CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_RANDOM_SEED_NOT_SUPPORTED,
    CKR_RANDOM_NO_RNG,
    CKR_DOMAIN_PARAMS_INVALID,
    CKR_CURVE_NOT_SUPPORTED,
    CKR_BUFFER_TOO_SMALL,
    CKR_SAVED_STATE_INVALID,
    CKR_INFORMATION_SENSITIVE,
    CKR_STATE_UNSAVEABLE,
    CKR_CRYPTOKI_NOT_INITIALIZED,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_MUTEX_BAD,
    CKR_MUTEX_NOT_LOCKED,
    CKR_NEW_PIN_MODE,
    CKR_NEXT_OTP,
    CKR_EXCEEDED_MAX_ITERATIONS,
    CKR_FIPS_SELF_TEST_FAILED,
    CKR_LIBRARY_LOAD_FAILED,
    CKR_PIN_TOO_WEAK,
    CKR_PUBLIC_KEY_INVALID,
    CKR_FUNCTION_REJECTED,
    CKR_TOKEN_RESOURCE_EXCEEDED,
    CKR_OPERATION_CANCEL_FAILED,
    CKR_KEY_EXHAUSTED,
    CKR_PENDING,
    CKR_SESSION_ASYNC_NOT_SUPPORTED,
    CKR_SEED_RANDOM_REQUIRED,
    CKR_OPERATION_NOT_VALIDATED,
    CKR_TOKEN_NOT_INITIALIZED,
    CKR_PARAMETER_SET_NOT_SUPPORTED,
}

/// Parses `CKR_NAME`, `0x…` hex or a decimal number into a return value.
pub fn parse(text: &str) -> Option<CK_RV> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return CK_RV::from_str_radix(hex, 16).ok();
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    if text == "CKR_VENDOR_DEFINED" {
        return Some(CKR_VENDOR_DEFINED);
    }
    NAMES
        .iter()
        .find(|(name, _)| *name == text)
        .map(|&(_, value)| value)
}

/// The name of `rv`, or its hex value if it has none.
pub fn name(rv: CK_RV) -> String {
    NAMES
        .iter()
        .find(|&&(_, value)| value == rv)
        .map_or_else(|| format!("{rv:#x}"), |(name, _)| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hex_and_decimal() {
        assert_eq!(parse("CKR_OK"), Some(CKR_OK));
        assert_eq!(parse("CKR_DEVICE_REMOVED"), Some(0x32));
        assert_eq!(parse("CKR_SESSION_HANDLE_INVALID"), Some(0xB3));
        assert_eq!(
            parse("CKR_AEAD_DECRYPT_FAILED"),
            Some(CKR_AEAD_DECRYPT_FAILED)
        );
        assert_eq!(parse("CKR_VENDOR_DEFINED"), Some(0x8000_0000));
        assert_eq!(parse("0x30"), Some(CKR_DEVICE_ERROR));
        assert_eq!(parse("0X8000_0001"), None);
        assert_eq!(parse("0x80000001"), Some(0x8000_0001));
        assert_eq!(parse("48"), Some(CKR_DEVICE_ERROR));
        assert_eq!(parse("CKR_NOPE"), None);
        assert_eq!(parse("ckr_ok"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        for &(name, value) in NAMES {
            assert_eq!(parse(name), Some(value), "{name}");
            assert_eq!(
                NAMES.iter().filter(|(n, _)| *n == name).count(),
                1,
                "{name} twice"
            );
        }
        assert_eq!(name(CKR_TOKEN_NOT_PRESENT), "CKR_TOKEN_NOT_PRESENT");
        assert_eq!(name(0x8000_0001), "0x80000001");
    }
}
