//! Single-part `C_Encrypt` and `C_Decrypt` into a buffer the caller sized: one PKCS#11 call
//! where cryptoki's `Session::encrypt`/`decrypt` make two (a length query with a null
//! buffer, then the call). With a network HSM every call is a round trip, and AES-GCM's
//! output length is known in advance (plaintext + tag on the way in, at most the input on
//! the way out), so the query buys nothing.
//!
//! cryptoki 0.12 keeps its function list private, so this module opens the same library a
//! second time (`dlopen` of a loaded path returns the loaded image and only counts a
//! reference; no initialiser runs again) and reads `C_Encrypt` and `C_Decrypt` from its
//! `C_GetFunctionList`. The pointers stay valid while [`SinglePart`] holds the library,
//! across `C_Finalize`/`C_Initialize` (a context rebuild), which do not unload it.
//!
//! This is the crate's only `unsafe` code (see `Cargo.toml`'s lints).

#![allow(unsafe_code)]

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::Rv;
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_BYTE, CK_C_GetFunctionList, CK_FUNCTION_LIST, CK_INFO, CK_RV, CK_SESSION_HANDLE, CK_ULONG,
    CKR_BUFFER_TOO_SMALL, CKR_DEVICE_ERROR, CKR_OK,
};

/// How much longer than its input an output may be: a GCM tag, with room to spare.
const MAX_GROWTH: usize = 64;

/// `C_Encrypt` or `C_Decrypt`: the same signature.
type SinglePartFn = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    *mut CK_BYTE,
    CK_ULONG,
    *mut CK_BYTE,
    *mut CK_ULONG,
) -> CK_RV;

/// `C_Encrypt` and `C_Decrypt` of one loaded PKCS#11 library.
pub(super) struct SinglePart {
    encrypt: SinglePartFn,
    decrypt: SinglePartFn,
    /// Keeps the library (and so both function pointers) loaded. Dropped after the
    /// [`cryptoki::context::Pkcs11`] that initialised it, or before: either way the image
    /// stays mapped until the last reference goes.
    _library: libloading::Library,
}

impl SinglePart {
    /// Reads `C_Encrypt` and `C_Decrypt` from the library at `path`, which
    /// [`cryptoki::context::Pkcs11::new`] has already loaded and initialised.
    ///
    /// Most modules return one static function list, so this reaches the instance cryptoki
    /// initialised. Some (p11-kit's proxy) make a new, uninitialised instance on every
    /// `C_GetFunctionList`; `C_GetInfo` through the list read here must therefore succeed, or
    /// the caller falls back to cryptoki's own calls.
    pub(super) fn load(path: &Path) -> Result<Self, String> {
        // SAFETY: the library is already loaded by cryptoki (this only adds a reference), so
        // no initialisation routine runs; loading a PKCS#11 module is what cryptoki does too.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        // SAFETY: `C_GetFunctionList` has this type in every PKCS#11 version (§5.2).
        let get_list = unsafe { library.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
            .map_err(|e| e.to_string())?;
        let get_list = (*get_list).ok_or("C_GetFunctionList is null")?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer; the function only stores a pointer there.
        let rv = unsafe { get_list(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!("C_GetFunctionList returned {rv:#x}"));
        }
        // SAFETY: on CKR_OK the module points `list` at its function list, which lives as
        // long as the library stays loaded (we hold it); the v2.40 layout is a prefix of
        // every later one.
        let list = unsafe { &*list };
        let get_info = list.C_GetInfo.ok_or("the module has no C_GetInfo")?;
        let mut info = CK_INFO::default();
        // SAFETY: `info` is a valid out-pointer to a `CK_INFO`, which the call fills in.
        let rv = unsafe { get_info(&mut info) };
        if rv != CKR_OK {
            return Err(format!(
                "C_GetInfo through a second function list returned {rv:#x} (the module hands \
                 out separate instances)"
            ));
        }
        let encrypt = list.C_Encrypt.ok_or("the module has no C_Encrypt")?;
        let decrypt = list.C_Decrypt.ok_or("the module has no C_Decrypt")?;
        Ok(Self {
            encrypt,
            decrypt,
            _library: library,
        })
    }

    /// `C_Encrypt` of `input` after a successful `C_EncryptInit` on `session`, into
    /// `output`; returns the length written. If `output` is too small the module says how
    /// much it needs and the call is made once more with that much.
    pub(super) fn encrypt(
        &self,
        session: &Session,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> cryptoki::error::Result<()> {
        call(
            self.encrypt,
            Function::Encrypt,
            session.handle(),
            input,
            output,
        )
    }

    /// `C_Decrypt` of `input` after a successful `C_DecryptInit` on `session`, as
    /// [`SinglePart::encrypt`].
    pub(super) fn decrypt(
        &self,
        session: &Session,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> cryptoki::error::Result<()> {
        call(
            self.decrypt,
            Function::Decrypt,
            session.handle(),
            input,
            output,
        )
    }
}

/// One single-part call into `output` (its length is the buffer offered; it is truncated to
/// what the module wrote), retried once with a larger buffer on `CKR_BUFFER_TOO_SMALL`, which
/// leaves the operation active (PKCS#11 §5.2, "buffer handling"). The larger buffer is at most
/// [`MAX_GROWTH`] bytes more than the input: AES-GCM never needs more.
///
/// A module that answers `CKR_OK` but claims to have written more than the buffer held has
/// either written past it or lies about the length: nothing it returns can be trusted. That
/// is reported as `CKR_DEVICE_ERROR`, so the pool treats the module as failed and rebuilds
/// its context, and the request fails rather than return bytes of unknown origin.
fn call(
    function_ptr: SinglePartFn,
    function: Function,
    session: CK_SESSION_HANDLE,
    input: &[u8],
    output: &mut Vec<u8>,
) -> cryptoki::error::Result<()> {
    let input_len = CK_ULONG::try_from(input.len())?;
    for _ in 0..2 {
        let mut written = CK_ULONG::try_from(output.len())?;
        // SAFETY: `input` is valid for `input_len` bytes and only read (PKCS#11 declares it
        // non-const); `output` is valid for `written` bytes, which is what the module may
        // write; `written` is a valid out-pointer. The session handle belongs to a session
        // this thread owns (cryptoki's `Session` is not `Sync`).
        let rv = unsafe {
            function_ptr(
                session,
                input.as_ptr().cast_mut(),
                input_len,
                output.as_mut_ptr(),
                &mut written,
            )
        };
        let written = usize::try_from(written)?;
        let plausible = written <= input.len().saturating_add(MAX_GROWTH);
        if rv == CKR_BUFFER_TOO_SMALL && written > output.len() && plausible {
            output.resize(written, 0);
            continue;
        }
        Rv::from(rv).into_result(function)?;
        if written > output.len() {
            tracing::error!(
                function = %function,
                offered = output.len(),
                claimed = written,
                "the PKCS#11 module reported success with more output than the buffer held"
            );
            return Rv::from(CKR_DEVICE_ERROR).into_result(function);
        }
        output.truncate(written);
        return Ok(());
    }
    Rv::from(CKR_BUFFER_TOO_SMALL).into_result(function)
}

#[cfg(test)]
mod tests {
    use cryptoki::error::{Error, RvError};

    use super::*;

    /// Writes `0xAB` over the offered buffer and reports `*claim` bytes; `CKR_OK` when the
    /// claim fits the buffer, else the `rv` below.
    macro_rules! fake {
        ($name:ident, rv_when_short = $short:expr, claim = $claim:expr) => {
            unsafe extern "C" fn $name(
                _session: CK_SESSION_HANDLE,
                _input: *mut CK_BYTE,
                input_len: CK_ULONG,
                output: *mut CK_BYTE,
                output_len: *mut CK_ULONG,
            ) -> CK_RV {
                // SAFETY: `call` passes a valid out-pointer and a buffer of that length.
                unsafe {
                    let offered = *output_len;
                    let claim: CK_ULONG = $claim(input_len);
                    std::ptr::write_bytes(output, 0xAB, usize::try_from(offered).unwrap());
                    *output_len = claim;
                    if claim <= offered { CKR_OK } else { $short }
                }
            }
        };
    }

    // Honest: the GCM output of `input_len` bytes is `input_len + 16`.
    fake!(
        honest,
        rv_when_short = CKR_BUFFER_TOO_SMALL,
        claim = |n| n + 16
    );
    // Says OK but claims 100 bytes past any buffer it was given.
    fake!(overrun, rv_when_short = CKR_OK, claim = |n| n + 100);
    // Asks for an absurd buffer.
    fake!(
        greedy,
        rv_when_short = CKR_BUFFER_TOO_SMALL,
        claim = |_| 1 << 30
    );

    fn rv_of(result: cryptoki::error::Result<()>) -> RvError {
        match result {
            Err(Error::Pkcs11(rv, Function::Encrypt)) => rv,
            other => panic!("expected a C_Encrypt failure, got {other:?}"),
        }
    }

    #[test]
    fn an_exact_buffer_takes_one_call() {
        let mut output = vec![0; 48];
        call(honest, Function::Encrypt, 1, &[0; 32], &mut output).unwrap();
        assert_eq!(output, vec![0xAB; 48]);
    }

    #[test]
    fn a_short_buffer_is_grown_to_what_the_module_asks_for() {
        let mut output = vec![0; 8];
        call(honest, Function::Encrypt, 1, &[0; 32], &mut output).unwrap();
        assert_eq!(output.len(), 48);
    }

    #[test]
    fn an_implausible_size_request_is_not_followed() {
        let mut output = vec![0; 48];
        let result = call(greedy, Function::Encrypt, 1, &[0; 32], &mut output);
        assert_eq!(rv_of(result), RvError::BufferTooSmall);
    }

    #[test]
    fn success_with_more_output_than_the_buffer_is_a_device_error() {
        let mut output = vec![0; 48];
        let result = call(overrun, Function::Encrypt, 1, &[0; 32], &mut output);
        assert_eq!(rv_of(result), RvError::DeviceError);
    }
}
