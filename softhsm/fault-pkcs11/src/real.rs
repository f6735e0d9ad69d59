//! The real PKCS#11 module: loaded once per process, on the first call, from
//! [`REAL_MODULE_ENV`] (default [`DEFAULT_REAL_MODULE`]), and never unloaded.

use std::ffi::OsString;
use std::sync::OnceLock;

use cryptoki_sys::{CK_FUNCTION_LIST, CK_RV, CKR_GENERAL_ERROR, CKR_OK};
use libloading::{Library, Symbol};

use crate::{DEFAULT_REAL_MODULE, REAL_MODULE_ENV, api, rv, warn_once};

/// A loaded module and a copy of its function list.
struct Real {
    /// Keeps the module mapped; the `static` holding it is never dropped.
    _library: Library,
    functions: CK_FUNCTION_LIST,
}

/// The real module's function list, or `CKR_GENERAL_ERROR` (reason on stderr, once) if it
/// cannot be loaded.
pub(crate) fn functions() -> Result<&'static CK_FUNCTION_LIST, CK_RV> {
    static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
    match REAL.get_or_init(load) {
        Ok(real) => Ok(&real.functions),
        Err(reason) => {
            warn_once(reason.clone());
            Err(CKR_GENERAL_ERROR)
        }
    }
}

fn load() -> Result<Real, String> {
    let path = std::env::var_os(REAL_MODULE_ENV)
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| OsString::from(DEFAULT_REAL_MODULE));
    let shown = path.to_string_lossy().into_owned();
    // SAFETY: loading a library runs its initialisers. The path names a PKCS#11 module chosen
    // by whoever configured this one, loaded exactly as a PKCS#11 application would load it.
    let library = unsafe { Library::new(&path) }
        .map_err(|err| format!("cannot load the real PKCS#11 module {shown}: {err}"))?;
    type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
    // SAFETY: every PKCS#11 module exports `C_GetFunctionList` with this signature (§5.4).
    let get_function_list: Symbol<'_, GetFunctionList> =
        unsafe { library.get(b"C_GetFunctionList\0") }
            .map_err(|err| format!("{shown} is not a PKCS#11 module: {err}"))?;
    // Calling our own C_GetFunctionList from here would wait for this very initialisation.
    if std::ptr::fn_addr_eq(
        *get_function_list,
        api::C_GetFunctionList as GetFunctionList,
    ) {
        return Err(self_reference(&shown));
    }
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the module to store its list pointer.
    let rv = unsafe { get_function_list(&raw mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!(
            "C_GetFunctionList of {shown} failed: {}",
            rv::name(rv)
        ));
    }
    // SAFETY: the module returned CKR_OK and a non-null pointer to its function list, which
    // stays valid while the library is loaded; it is copied out here. A 3.x module's list
    // starts with the same 2.40 fields.
    let functions = unsafe { list.read() };
    if functions.version.major < 2 {
        return Err(format!(
            "{shown} implements PKCS#11 {}.{}, not 2.x or later",
            functions.version.major, functions.version.minor
        ));
    }
    if api::shares_entries_with_us(&functions) {
        return Err(self_reference(&shown));
    }
    Ok(Real {
        _library: library,
        functions,
    })
}

fn self_reference(shown: &str) -> String {
    format!(
        "{shown} resolves to this fault-injecting module itself (set {REAL_MODULE_ENV} to the \
         real module, and do not load this one with RTLD_GLOBAL or LD_PRELOAD)"
    )
}
