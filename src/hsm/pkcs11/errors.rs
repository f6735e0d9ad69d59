//! The one classification of PKCS#11 failures into [`HsmError`] (XKS spec §"Error codes";
//! checklist D-10…D-12, and "Things a naive implementation would get wrong" #13).
//!
//! [`classify`] matches every [`RvError`] explicitly, without a catch-all arm: a return value
//! added by a new cryptoki release is a compile error here, not a silent `InternalException`.
//! Failures that are not the request's fault carry a [`Tier`], which tells the worker pool how
//! much to repair: a session, the login, or the whole context. A vendor-defined or unknown
//! code is a session failure that escalates to the device tier only when it repeats
//! (`repair`).

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};

use super::codes::{function_name, rv_name};
use crate::hsm::{HsmError, Pkcs11Call, Pkcs11Code, Pkcs11Failure, Tier};

/// What the backend was doing when a PKCS#11 call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    /// A customer Encrypt.
    Encrypt,
    /// A customer Decrypt.
    Decrypt,
    /// A customer GetKeyMetadata.
    Metadata,
    /// The deep health check.
    Health,
    /// Opening a session or logging in.
    Session,
    /// An administrative call (key creation, listing).
    Admin,
}

impl Operation {
    /// How the operation is named in logs and in [`HsmError::KeyUsageNotPermitted`].
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Metadata => "metadata",
            Self::Health => "health check",
            Self::Session => "session setup",
            Self::Admin => "key administration",
        }
    }
}

/// What a return value means, before the context (function, operation) is taken into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A failure of the HSM or of our use of it, with its recovery tier.
    Failure(Tier),
    /// The key's attributes forbid the operation.
    KeyUsage,
    /// The key type does not fit the mechanism.
    KeyType,
    /// An input has a size the HSM refuses.
    InputSize,
    /// A GCM authentication failure when returned by `C_Decrypt*`; otherwise a failure of
    /// the given tier.
    Ciphertext(Tier),
}

/// Classifies a cryptoki error raised during `op`. Pure; see [`fail`] for the logging variant.
pub(super) fn classify(err: &Error, op: Operation) -> HsmError {
    use Pkcs11Call::{Binding, Function as Call};
    let (function, code, tier) = match err {
        Error::Pkcs11(rv, function) => return classify_rv(*rv, *function, op),
        Error::LibraryLoading(_) => (
            Binding("dlopen"),
            "module could not be loaded",
            Tier::Device,
        ),
        Error::NullFunctionPointer => (
            Call(Function::GetFunctionList),
            "missing function",
            Tier::Device,
        ),
        Error::MissingSymbol(_) => (Binding("dlsym"), "missing symbol", Tier::Device),
        Error::NotSupported => (Binding("cryptoki"), "feature not supported", Tier::Request),
        Error::TryFromInt(_)
        | Error::TryFromSlice(_)
        | Error::ParseInt(_)
        | Error::Utf8(_)
        | Error::NulError(_)
        | Error::InvalidValue => (
            Binding("cryptoki"),
            "value conversion failed",
            Tier::Request,
        ),
        Error::PinNotSet => (Call(Function::Login), "PIN not set", Tier::Login),
    };
    HsmError::Pkcs11(Pkcs11Failure {
        function,
        code: Pkcs11Code::Anomaly(code),
        tier,
    })
}

/// Classifies `err` like [`classify`] and logs function, code and tier once.
///
/// Never logs inputs: plaintext, AAD, key material and the PIN do not reach this function.
pub(super) fn fail(err: &Error, op: Operation) -> HsmError {
    let classified = classify(err, op);
    match &classified {
        HsmError::Pkcs11(f) if f.tier == Tier::Device => tracing::error!(
            operation = op.as_str(), function = %f.function, code = %f.code, tier = ?f.tier,
            "PKCS#11 call failed"
        ),
        HsmError::Pkcs11(f) => tracing::warn!(
            operation = op.as_str(), function = %f.function, code = %f.code, tier = ?f.tier,
            "PKCS#11 call failed"
        ),
        other => match err {
            Error::Pkcs11(rv, function) => tracing::debug!(
                operation = op.as_str(), function = function_name(*function), code = %rv_name(*rv),
                outcome = %other, "PKCS#11 call refused the request"
            ),
            _ => tracing::debug!(operation = op.as_str(), outcome = %other, "cryptoki error"),
        },
    }
    classified
}

/// Whether `err` says a cached object handle no longer names an object.
pub(super) fn is_stale_handle(err: &HsmError) -> bool {
    matches!(
        err,
        HsmError::Pkcs11(Pkcs11Failure {
            code: Pkcs11Code::Rv(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid),
            ..
        })
    )
}

/// Whether the HSM answered with a vendor-defined or unknown return code (see `repair`).
pub(super) fn is_unknown_code(failure: &Pkcs11Failure) -> bool {
    matches!(
        failure.code,
        Pkcs11Code::Rv(RvError::VendorDefined(_) | RvError::UnknownErrorCode(_))
    )
}

fn classify_rv(rv: RvError, function: Function, op: Operation) -> HsmError {
    let decrypting = matches!(
        function,
        Function::Decrypt | Function::DecryptUpdate | Function::DecryptFinal
    );
    match verdict(rv) {
        Verdict::KeyUsage => HsmError::KeyUsageNotPermitted {
            operation: usage_name(function, op),
        },
        Verdict::KeyType => HsmError::UnsupportedKey {
            found: "a key type AES-GCM cannot use".into(),
        },
        Verdict::InputSize => HsmError::InputTooLarge,
        Verdict::Ciphertext(_) if decrypting => HsmError::InvalidCiphertext,
        Verdict::Ciphertext(tier) | Verdict::Failure(tier) => HsmError::Pkcs11(Pkcs11Failure {
            function: Pkcs11Call::Function(function),
            code: Pkcs11Code::Rv(rv),
            tier,
        }),
    }
}

/// `encrypt` or `decrypt` when the failing function says so, else the operation's name.
fn usage_name(function: Function, op: Operation) -> &'static str {
    match function {
        Function::EncryptInit | Function::Encrypt => Operation::Encrypt.as_str(),
        Function::DecryptInit | Function::Decrypt => Operation::Decrypt.as_str(),
        _ => op.as_str(),
    }
}

/// The meaning of each return value. Exhaustive on purpose: no `_` arm.
fn verdict(rv: RvError) -> Verdict {
    use RvError as R;
    use Verdict::{Ciphertext, Failure};
    match rv {
        R::KeyFunctionNotPermitted => Verdict::KeyUsage,
        R::KeyTypeInconsistent => Verdict::KeyType,
        R::DataLenRange => Verdict::InputSize,
        // Tag mismatch: SoftHSM 2.6 says GENERAL_ERROR, nShield FUNCTION_FAILED (D-12).
        R::GeneralError | R::FunctionFailed => Ciphertext(Tier::Device),
        R::EncryptedDataInvalid | R::EncryptedDataLenRange => Ciphertext(Tier::Request),

        R::SessionClosed
        | R::SessionHandleInvalid
        | R::ObjectHandleInvalid
        | R::KeyHandleInvalid
        | R::OperationActive
        | R::OperationNotInitialized
        // The single-part calls size their buffers in advance; a module that still says
        // "too small" leaves the operation active (PKCS#11 §5.2), so the session cannot start
        // another until it is replaced.
        | R::BufferTooSmall => Failure(Tier::Session),

        R::UserNotLoggedIn
        | R::UserPinNotInitialized
        | R::UserAnotherAlreadyLoggedIn
        | R::UserTooManyTypes
        | R::PinIncorrect
        | R::PinInvalid
        | R::PinLenRange
        | R::PinExpired
        | R::PinLocked => Failure(Tier::Login),

        R::DeviceError
        | R::DeviceMemory
        | R::DeviceRemoved
        | R::TokenNotPresent
        | R::TokenNotRecognized
        | R::CryptokiNotInitialized
        | R::CryptokiAlreadyInitialized
        | R::HostMemory
        | R::SlotIdInvalid
        | R::SessionCount
        | R::FipsSelfTestFailed
        | R::LibraryLoadFailed
        | R::MutexBad
        | R::MutexNotLocked
        | R::CantLock
        | R::NeedToCreateThreads => Failure(Tier::Device),

        // Unknown meaning: replace the session, which is cheap and serves the next request;
        // `repair` escalates to the device tier (a context rebuild, which stops every session
        // on the module) only when such codes repeat.
        R::VendorDefined(_) | R::UnknownErrorCode(_) => Failure(Tier::Session),

        R::Cancel
        | R::ArgumentsBad
        | R::NoEvent
        | R::AttributeReadOnly
        | R::AttributeSensitive
        | R::AttributeTypeInvalid
        | R::AttributeValueInvalid
        | R::ActionProhibited
        | R::DataInvalid
        | R::FunctionCanceled
        | R::FunctionNotParallel
        | R::FunctionNotSupported
        | R::CurveNotSupported
        | R::KeySizeRange
        | R::KeyNotNeeded
        | R::KeyChanged
        | R::KeyNeeded
        | R::KeyIndigestible
        | R::KeyNotWrappable
        | R::KeyUnextractable
        | R::MechanismInvalid
        | R::MechanismParamInvalid
        | R::SessionParallelNotSupported
        | R::SessionReadOnly
        | R::SessionExists
        | R::SessionReadOnlyExists
        | R::SessionReadWriteSoExists
        | R::SignatureInvalid
        | R::SignatureLenRange
        | R::TemplateIncomplete
        | R::TemplateInconsistent
        | R::TokenWriteProtected
        | R::UnwrappingKeyHandleInvalid
        | R::UnwrappingKeySizeRange
        | R::UnwrappingKeyTypeInconsistent
        | R::UserAlreadyLoggedIn
        | R::UserTypeInvalid
        | R::WrappedKeyInvalid
        | R::WrappedKeyLenRange
        | R::WrappingKeyHandleInvalid
        | R::WrappingKeySizeRange
        | R::WrappingKeyTypeInconsistent
        | R::RandomSeedNotSupported
        | R::RandomNoRng
        | R::DomainParamsInvalid
        | R::SavedStateInvalid
        | R::InformationSensitive
        | R::StateUnsaveable
        | R::NewPinMode
        | R::NextOtp
        | R::ExceededMaxIterations
        | R::PinTooWeak
        | R::PublicKeyInvalid
        | R::FunctionRejected => Failure(Tier::Request),
    }
}

#[cfg(test)]
#[path = "errors_tests.rs"]
mod tests;
