//! Which token a call is addressed to, for rules limited to one token (`token=<label>`,
//! `token-removed <label>`).
//!
//! Functions that take a slot address that slot's token. Functions that take a session address
//! the token of the slot the session was opened on: `C_OpenSession` records the handle's slot,
//! `C_CloseSession`, `C_CloseAllSessions` and `C_Finalize` forget it. A slot's label comes
//! from the real module's `C_GetTokenInfo` (padding trimmed) and is cached per slot; the cache
//! entry is dropped by `C_InitToken` and `C_Finalize`, and a slot whose token cannot be read is
//! not cached (asked again next time).
//!
//! None of this runs while no rule is limited to a token, so unqualified rules behave exactly
//! as before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use cryptoki_sys::{CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID, CK_TOKEN_INFO, CKR_OK};

use crate::{Function, real};

/// What a call is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// No token (`C_Initialize`, `C_GetSlotList`, …).
    None,
    /// The token in this slot.
    Slot(CK_SLOT_ID),
    /// The token of the slot this session was opened on.
    Session(CK_SESSION_HANDLE),
}

#[derive(Default)]
struct State {
    sessions: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
    labels: HashMap<CK_SLOT_ID, String>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with_state<T>(body: impl FnOnce(&mut State) -> T) -> T {
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    body(state.get_or_insert_with(State::default))
}

/// The slot of `scope`, if known.
fn slot_of(scope: Scope) -> Option<CK_SLOT_ID> {
    match scope {
        Scope::None => None,
        Scope::Slot(slot) => Some(slot),
        Scope::Session(session) => with_state(|state| state.sessions.get(&session).copied()),
    }
}

/// The label of the token `scope` addresses, if known.
pub(crate) fn label(scope: Scope) -> Option<String> {
    let slot = slot_of(scope)?;
    if let Some(label) = with_state(|state| state.labels.get(&slot).cloned()) {
        return Some(label);
    }
    // Asked without holding the lock: the real module may take its time.
    let label = read_label(slot)?;
    with_state(|state| state.labels.insert(slot, label.clone()));
    Some(label)
}

/// The label of the token in `slot` from the real module, trimmed.
fn read_label(slot: CK_SLOT_ID) -> Option<String> {
    let get_token_info = real::functions().ok()?.C_GetTokenInfo?;
    let mut info = CK_TOKEN_INFO::default();
    // SAFETY: `info` is a valid, writable CK_TOKEN_INFO; the slot id is passed by value.
    let rv = unsafe { get_token_info(slot, &raw mut info) };
    if rv != CKR_OK {
        return None;
    }
    let label = String::from_utf8_lossy(&info.label);
    Some(label.trim_end_matches([' ', '\0']).to_owned())
}

/// Records that `session` was opened on `slot`.
pub(crate) fn opened(session: CK_SESSION_HANDLE, slot: CK_SLOT_ID) {
    with_state(|state| state.sessions.insert(session, slot));
}

/// Keeps the bookkeeping in step after the real module answered `rv` to `function`.
pub(crate) fn after(function: Function, scope: Scope, rv: CK_RV) {
    if rv != CKR_OK {
        return;
    }
    match (function, scope) {
        (Function::C_CloseSession, Scope::Session(session)) => {
            with_state(|state| state.sessions.remove(&session));
        }
        (Function::C_CloseAllSessions, Scope::Slot(slot)) => {
            with_state(|state| state.sessions.retain(|_, of| *of != slot));
        }
        (Function::C_InitToken, Scope::Slot(slot)) => {
            with_state(|state| state.labels.remove(&slot));
        }
        (Function::C_Finalize, _) => {
            with_state(|state| *state = State::default());
        }
        _ => {}
    }
}
