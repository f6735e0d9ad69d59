//! The 68 functions of the PKCS#11 2.40 `CK_FUNCTION_LIST` (PKCS#11 Base Specification 2.40
//! §5), each a wrapper that applies the fault rules and then forwards to the real module.
//!
//! One macro invocation lists every function once, with its C signature and what it does
//! while the token is removed; it generates the [`Function`] enum, the wrappers (exported
//! under their PKCS#11 names) and the static `CK_FUNCTION_LIST`. The list is a struct literal with named
//! fields, so the compiler checks that every entry is there and has the standard's type.
//! `C_GetFunctionList`, `C_GetSlotList`, `C_GetSlotInfo` and `C_OpenSession` are written by
//! hand below.

use std::ffi::c_void;

use cryptoki_sys::*;

use crate::faults::{self, Operation, Removal, Verdict};
use crate::guard;
use crate::tokens::{self, Scope};

/// What a call is addressed to, from the name of its first parameter: `session` or `slot`.
macro_rules! scope {
    (session, $value:expr) => {
        Scope::Session($value)
    };
    (slot, $value:expr) => {
        Scope::Slot($value)
    };
    ($other:ident, $value:expr) => {
        Scope::None
    };
}

/// Declares the functions: `forward` ones get a generated wrapper, `custom` ones are written
/// by hand in this module.
macro_rules! pkcs11_api {
    ($(
        $kind:ident $name:ident($($arg:ident: $ty:ty),* $(,)?) => $removal:ident
            $(, ends $op:ident)?;
    )*) => {
        /// A PKCS#11 2.40 function, named as in the standard.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        #[non_exhaustive]
        pub enum Function {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                $name,
            )*
        }

        impl Function {
            /// Every function, in `CK_FUNCTION_LIST` order.
            pub const ALL: [Self; 68] = [$(Self::$name),*];

            /// The PKCS#11 name, e.g. `C_Encrypt`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }

            /// The function called `name` exactly.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|function| function.name() == name)
            }

            /// What a call does while the token is removed.
            pub(crate) const fn removal(self) -> Removal {
                match self {
                    $(Self::$name => Removal::$removal,)*
                }
            }
        }

        $(wrapper!($kind $name($($arg: $ty),*) $(ends $op)?);)*

        /// The list `C_GetFunctionList` hands out: version 2.40, every entry a wrapper.
        pub(crate) static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            $($name: Some($name),)*
        };

        /// Whether any entry of `list` is one of our own wrappers: the "real" module would
        /// then call back into us forever (it is this module, or our symbols interposed its
        /// own).
        pub(crate) fn shares_entries_with_us(list: &CK_FUNCTION_LIST) -> bool {
            false $(|| matches!(
                (list.$name, FUNCTION_LIST.$name),
                (Some(theirs), Some(ours)) if std::ptr::fn_addr_eq(theirs, ours)
            ))*
        }
    };
}

/// Generates the wrapper of a `forward` function; `custom` ones exist already. A function
/// that `ends` an operation also ends the real module's when a fault makes it fail (see
/// [`faults::end_operation`]).
macro_rules! wrapper {
    (custom $name:ident($($arg:ident: $ty:ty),*)) => {};
    (forward $name:ident($first:ident: $first_ty:ty $(, $arg:ident: $ty:ty)*)
        $(ends $op:ident)?) => {
        #[doc = concat!(
            "`", stringify!($name), "`: applies the fault rules, then calls the real module's `",
            stringify!($name), "` with the same arguments."
        )]
        ///
        /// # Safety
        ///
        /// The PKCS#11 contract of this function: every pointer is null where the standard
        /// allows it or valid for the lengths passed alongside.
        #[unsafe(no_mangle)]
        #[allow(non_snake_case)]
        pub unsafe extern "C" fn $name($first: $first_ty $(, $arg: $ty)*) -> CK_RV {
            guard(|| {
                let scope = scope!($first, $first);
                match faults::before(Function::$name, scope) {
                    Verdict::Return(rv) => {
                        $(faults::end_operation(Operation::$op, $first, rv);)?
                        rv
                    }
                    Verdict::Forward { real, .. } => {
                        let rv = match real.$name {
                            // SAFETY: the caller's arguments go unchanged to the same function
                            // of the real module, so the caller's PKCS#11 contract carries over.
                            Some(real_fn) => unsafe { real_fn($first $(, $arg)*) },
                            None => CKR_FUNCTION_NOT_SUPPORTED,
                        };
                        tokens::after(Function::$name, scope, rv);
                        rv
                    }
                }
            })
        }
    };
}

type Bytes = *mut CK_BYTE;
type Len = CK_ULONG;
type LenPtr = *mut CK_ULONG;
type Session = CK_SESSION_HANDLE;
type Object = CK_OBJECT_HANDLE;
type Mech = *mut CK_MECHANISM;
type Template = *mut CK_ATTRIBUTE;

pkcs11_api! {
    // General purpose (§5.4).
    forward C_Initialize(init_args: *mut c_void) => Forward;
    forward C_Finalize(reserved: *mut c_void) => Forward;
    forward C_GetInfo(info: *mut CK_INFO) => Forward;
    custom C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) => Forward;
    // Slot and token management (§5.5).
    custom C_GetSlotList(token_present: CK_BBOOL, slots: *mut CK_SLOT_ID, count: LenPtr) => Slot;
    custom C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) => Slot;
    forward C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) => TokenNotPresent;
    forward C_GetMechanismList(slot: CK_SLOT_ID, list: *mut CK_MECHANISM_TYPE, count: LenPtr)
        => TokenNotPresent;
    forward C_GetMechanismInfo(slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE,
        info: *mut CK_MECHANISM_INFO) => TokenNotPresent;
    forward C_InitToken(slot: CK_SLOT_ID, so_pin: *mut CK_UTF8CHAR, so_pin_len: Len,
        label: *mut CK_UTF8CHAR) => TokenNotPresent;
    forward C_InitPIN(session: Session, pin: *mut CK_UTF8CHAR, pin_len: Len) => DeviceRemoved;
    forward C_SetPIN(session: Session, old: *mut CK_UTF8CHAR, old_len: Len,
        new: *mut CK_UTF8CHAR, new_len: Len) => DeviceRemoved;
    // Session management (§5.6).
    custom C_OpenSession(slot: CK_SLOT_ID, flags: CK_FLAGS, application: *mut c_void,
        notify: CK_NOTIFY, session: *mut CK_SESSION_HANDLE) => TokenNotPresent;
    forward C_CloseSession(session: Session) => Forward;
    forward C_CloseAllSessions(slot: CK_SLOT_ID) => Forward;
    forward C_GetSessionInfo(session: Session, info: *mut CK_SESSION_INFO) => DeviceRemoved;
    forward C_GetOperationState(session: Session, state: Bytes, state_len: LenPtr)
        => DeviceRemoved;
    forward C_SetOperationState(session: Session, state: Bytes, state_len: Len,
        encryption_key: Object, authentication_key: Object) => DeviceRemoved;
    forward C_Login(session: Session, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: Len)
        => DeviceRemoved;
    forward C_Logout(session: Session) => DeviceRemoved;
    // Object management (§5.7).
    forward C_CreateObject(session: Session, template: Template, count: Len,
        object: *mut CK_OBJECT_HANDLE) => DeviceRemoved;
    forward C_CopyObject(session: Session, object: Object, template: Template, count: Len,
        new_object: *mut CK_OBJECT_HANDLE) => DeviceRemoved;
    forward C_DestroyObject(session: Session, object: Object) => DeviceRemoved;
    forward C_GetObjectSize(session: Session, object: Object, size: LenPtr) => DeviceRemoved;
    forward C_GetAttributeValue(session: Session, object: Object, template: Template, count: Len)
        => DeviceRemoved;
    forward C_SetAttributeValue(session: Session, object: Object, template: Template, count: Len)
        => DeviceRemoved;
    forward C_FindObjectsInit(session: Session, template: Template, count: Len) => DeviceRemoved;
    forward C_FindObjects(session: Session, objects: *mut CK_OBJECT_HANDLE, max: Len,
        count: LenPtr) => DeviceRemoved;
    forward C_FindObjectsFinal(session: Session) => DeviceRemoved;
    // Encryption and decryption (§5.8, §5.9).
    forward C_EncryptInit(session: Session, mech: Mech, key: Object) => DeviceRemoved;
    forward C_Encrypt(session: Session, data: Bytes, data_len: Len, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Encrypt;
    forward C_EncryptUpdate(session: Session, part: Bytes, part_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved, ends Encrypt;
    forward C_EncryptFinal(session: Session, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Encrypt;
    forward C_DecryptInit(session: Session, mech: Mech, key: Object) => DeviceRemoved;
    forward C_Decrypt(session: Session, data: Bytes, data_len: Len, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Decrypt;
    forward C_DecryptUpdate(session: Session, part: Bytes, part_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved, ends Decrypt;
    forward C_DecryptFinal(session: Session, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Decrypt;
    // Message digesting (§5.10).
    forward C_DigestInit(session: Session, mech: Mech) => DeviceRemoved;
    forward C_Digest(session: Session, data: Bytes, data_len: Len, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Digest;
    forward C_DigestUpdate(session: Session, part: Bytes, part_len: Len)
        => DeviceRemoved, ends Digest;
    forward C_DigestKey(session: Session, key: Object) => DeviceRemoved, ends Digest;
    forward C_DigestFinal(session: Session, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Digest;
    // Signing and MACing, verifying (§5.11, §5.12).
    forward C_SignInit(session: Session, mech: Mech, key: Object) => DeviceRemoved;
    forward C_Sign(session: Session, data: Bytes, data_len: Len, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Sign;
    forward C_SignUpdate(session: Session, part: Bytes, part_len: Len)
        => DeviceRemoved, ends Sign;
    forward C_SignFinal(session: Session, out: Bytes, out_len: LenPtr)
        => DeviceRemoved, ends Sign;
    forward C_SignRecoverInit(session: Session, mech: Mech, key: Object) => DeviceRemoved;
    forward C_SignRecover(session: Session, data: Bytes, data_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved;
    forward C_VerifyInit(session: Session, mech: Mech, key: Object) => DeviceRemoved;
    forward C_Verify(session: Session, data: Bytes, data_len: Len, signature: Bytes,
        signature_len: Len) => DeviceRemoved, ends Verify;
    forward C_VerifyUpdate(session: Session, part: Bytes, part_len: Len)
        => DeviceRemoved, ends Verify;
    forward C_VerifyFinal(session: Session, signature: Bytes, signature_len: Len)
        => DeviceRemoved, ends Verify;
    forward C_VerifyRecoverInit(session: Session, mech: Mech, key: Object) => DeviceRemoved;
    forward C_VerifyRecover(session: Session, signature: Bytes, signature_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved;
    // Dual-function cryptographic functions (§5.13).
    forward C_DigestEncryptUpdate(session: Session, part: Bytes, part_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved;
    forward C_DecryptDigestUpdate(session: Session, part: Bytes, part_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved;
    forward C_SignEncryptUpdate(session: Session, part: Bytes, part_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved;
    forward C_DecryptVerifyUpdate(session: Session, part: Bytes, part_len: Len, out: Bytes,
        out_len: LenPtr) => DeviceRemoved;
    // Key management (§5.14).
    forward C_GenerateKey(session: Session, mech: Mech, template: Template, count: Len,
        key: *mut CK_OBJECT_HANDLE) => DeviceRemoved;
    forward C_GenerateKeyPair(session: Session, mech: Mech, public_template: Template,
        public_count: Len, private_template: Template, private_count: Len,
        public_key: *mut CK_OBJECT_HANDLE, private_key: *mut CK_OBJECT_HANDLE) => DeviceRemoved;
    forward C_WrapKey(session: Session, mech: Mech, wrapping_key: Object, key: Object,
        wrapped: Bytes, wrapped_len: LenPtr) => DeviceRemoved;
    forward C_UnwrapKey(session: Session, mech: Mech, unwrapping_key: Object, wrapped: Bytes,
        wrapped_len: Len, template: Template, count: Len, key: *mut CK_OBJECT_HANDLE)
        => DeviceRemoved;
    forward C_DeriveKey(session: Session, mech: Mech, base_key: Object, template: Template,
        count: Len, key: *mut CK_OBJECT_HANDLE) => DeviceRemoved;
    // Random number generation (§5.15).
    forward C_SeedRandom(session: Session, seed: Bytes, seed_len: Len) => DeviceRemoved;
    forward C_GenerateRandom(session: Session, out: Bytes, out_len: Len) => DeviceRemoved;
    // Parallel function management (§5.16, legacy).
    forward C_GetFunctionStatus(session: Session) => DeviceRemoved;
    forward C_CancelFunction(session: Session) => DeviceRemoved;
    // Slot events (§5.5).
    forward C_WaitForSlotEvent(flags: CK_FLAGS, slot: *mut CK_SLOT_ID, reserved: *mut c_void)
        => Forward;
}

/// `C_GetFunctionList`: loads the real module (on first use) and hands out this module's list.
///
/// Fails with `CKR_GENERAL_ERROR` if the real module cannot be loaded; the reason goes to
/// stderr. Only a rule naming `C_GetFunctionList` explicitly applies to it.
///
/// # Safety
///
/// `list` is null or valid for one pointer write.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        if list.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        if let Verdict::Return(rv) = faults::before(Function::C_GetFunctionList, Scope::None) {
            return rv;
        }
        // SAFETY: `list` is non-null and the caller passes a writable `CK_FUNCTION_LIST_PTR`
        // slot. The list is static; PKCS#11 callers only read through the pointer.
        unsafe { list.write((&raw const FUNCTION_LIST).cast_mut()) };
        CKR_OK
    })
}

/// `C_GetSlotList`: while every token is removed (`token-removed`), a `tokenPresent =
/// CK_TRUE` query finds no slot; while tokens are removed by label, it omits their slots. The
/// full list (`CK_FALSE`) still has every slot.
///
/// # Safety
///
/// `count` is valid for a read and a write; `slots` is null or valid for `*count` slot ids.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    slots: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(
        || match faults::before(Function::C_GetSlotList, Scope::None) {
            Verdict::Return(rv) => rv,
            Verdict::Forward {
                token_removed: true,
                ..
            } if token_present != CK_FALSE => {
                if count.is_null() {
                    return CKR_ARGUMENTS_BAD;
                }
                // SAFETY: `count` is non-null and the caller passes it for writing the count.
                unsafe { count.write(0) };
                CKR_OK
            }
            Verdict::Forward { real, version, .. } => {
                let Some(real_fn) = real.C_GetSlotList else {
                    return CKR_FUNCTION_NOT_SUPPORTED;
                };
                match version {
                    Some(version) if token_present != CK_FALSE && version.has_token_rules() => {
                        let present = match slot_list(real_fn, token_present) {
                            Ok(present) => present,
                            Err(rv) => return rv,
                        };
                        let shown: Vec<CK_SLOT_ID> = present
                            .into_iter()
                            .filter(|slot| {
                                tokens::label(Scope::Slot(*slot))
                                    .is_none_or(|label| !version.token_named_removed(&label))
                            })
                            .collect();
                        // SAFETY: the caller's contract for `slots` and `count`.
                        unsafe { hand_out(&shown, slots, count) }
                    }
                    // SAFETY: the caller's arguments go unchanged to the real module's C_GetSlotList.
                    _ => unsafe { real_fn(token_present, slots, count) },
                }
            }
        },
    )
}

type GetSlotListFn = unsafe extern "C" fn(CK_BBOOL, *mut CK_SLOT_ID, *mut CK_ULONG) -> CK_RV;

/// The real module's slot list.
fn slot_list(real_fn: GetSlotListFn, token_present: CK_BBOOL) -> Result<Vec<CK_SLOT_ID>, CK_RV> {
    loop {
        let mut count: CK_ULONG = 0;
        // SAFETY: a null list asks for the count only; `count` is valid for writes.
        let rv = unsafe { real_fn(token_present, std::ptr::null_mut(), &raw mut count) };
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut list: Vec<CK_SLOT_ID> = vec![0; usize::try_from(count).unwrap_or(0)];
        // SAFETY: `list` is valid for `count` slot ids and `count` for a read and a write.
        let rv = unsafe { real_fn(token_present, list.as_mut_ptr(), &raw mut count) };
        match rv {
            CKR_OK => {
                list.truncate(usize::try_from(count).unwrap_or(0));
                return Ok(list);
            }
            // A slot appeared in between: ask again.
            CKR_BUFFER_TOO_SMALL => {}
            rv => return Err(rv),
        }
    }
}

/// Answers a `C_GetSlotList` with `list`, following the standard's two-call convention.
///
/// # Safety
///
/// `count` is null or valid for a read and a write; `slots` is null or valid for `*count`
/// slot ids.
unsafe fn hand_out(list: &[CK_SLOT_ID], slots: *mut CK_SLOT_ID, count: *mut CK_ULONG) -> CK_RV {
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let len = CK_ULONG::try_from(list.len()).unwrap_or(CK_ULONG::MAX);
    // SAFETY: `count` is non-null and valid for reads (caller's contract).
    let room = unsafe { count.read() };
    // SAFETY: as above, for writes.
    unsafe { count.write(len) };
    if slots.is_null() {
        return CKR_OK;
    }
    if room < len {
        return CKR_BUFFER_TOO_SMALL;
    }
    // SAFETY: `slots` is valid for `room ≥ list.len()` ids and cannot overlap our `list`.
    unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), slots, list.len()) };
    CKR_OK
}

/// `C_GetSlotInfo`: while the slot's token is removed, the slot reports no
/// `CKF_TOKEN_PRESENT`.
///
/// # Safety
///
/// `info` is null or valid for writing a `CK_SLOT_INFO`.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        let (real, token_removed) = match faults::before(Function::C_GetSlotInfo, Scope::Slot(slot))
        {
            Verdict::Return(rv) => return rv,
            Verdict::Forward {
                real,
                token_removed,
                ..
            } => (real, token_removed),
        };
        let Some(real_fn) = real.C_GetSlotInfo else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        // SAFETY: the caller's arguments go unchanged to the real module's C_GetSlotInfo.
        let rv = unsafe { real_fn(slot, info) };
        if rv == CKR_OK && token_removed && !info.is_null() {
            // SAFETY: the real module just filled `*info` (non-null, valid for writes per the
            // caller's contract), so it is initialised and writable.
            unsafe { (*info).flags &= !CKF_TOKEN_PRESENT };
        }
        rv
    })
}

/// `C_OpenSession`: applies the rules to the slot, forwards, and records which slot the new
/// session belongs to (for rules limited to one token).
///
/// # Safety
///
/// `session` is valid for writing a session handle; `application` and `notify` are passed
/// through to the real module.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(
        || match faults::before(Function::C_OpenSession, Scope::Slot(slot)) {
            Verdict::Return(rv) => rv,
            Verdict::Forward { real, .. } => {
                let Some(real_fn) = real.C_OpenSession else {
                    return CKR_FUNCTION_NOT_SUPPORTED;
                };
                // SAFETY: the caller's arguments go unchanged to the real module's C_OpenSession.
                let rv = unsafe { real_fn(slot, flags, application, notify, session) };
                if rv == CKR_OK && !session.is_null() {
                    // SAFETY: the real module just wrote the new handle through `session`.
                    tokens::opened(unsafe { session.read() }, slot);
                }
                rv
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_the_standard_ones() {
        for function in Function::ALL {
            assert_eq!(Function::from_name(function.name()), Some(function));
            assert!(function.name().starts_with("C_"));
        }
        assert_eq!(Function::from_name("C_Nope"), None);
        assert_eq!(Function::from_name("c_encrypt"), None);
    }

    #[test]
    fn removal_classes_follow_the_standard() {
        use Removal::*;
        let class = |name| Function::from_name(name).map(Function::removal);
        assert_eq!(class("C_GetSlotList"), Some(Slot));
        assert_eq!(class("C_GetTokenInfo"), Some(TokenNotPresent));
        assert_eq!(class("C_OpenSession"), Some(TokenNotPresent));
        assert_eq!(class("C_Encrypt"), Some(DeviceRemoved));
        assert_eq!(class("C_Login"), Some(DeviceRemoved));
        assert_eq!(class("C_CloseSession"), Some(Forward));
        assert_eq!(class("C_Finalize"), Some(Forward));
    }

    #[test]
    fn our_list_is_version_2_40_and_recognises_itself() {
        assert_eq!(
            (FUNCTION_LIST.version.major, FUNCTION_LIST.version.minor),
            (2, 40)
        );
        assert!(shares_entries_with_us(&FUNCTION_LIST));
        assert!(!shares_entries_with_us(&CK_FUNCTION_LIST::default()));
    }
}
