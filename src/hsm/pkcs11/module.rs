//! One PKCS#11 module per process, shared by every token (member) opened on it (PKCS#11 v3.2
//! §5.4: `C_Initialize` and `C_Finalize` act on the whole library, once per process).
//!
//! A [`ModuleContext`] loads the library and calls `C_Initialize`; it calls `C_Finalize` when
//! the last backend using it is dropped. A context rebuild after a device failure (see
//! `recovery`) finalises the whole library and so kills the sessions of every member on it:
//! [`ModuleContext::reinitialize`] therefore runs at most once per failure — a member that
//! finds the context already rebuilt since it saw its failure only reselects its token — and
//! asks every other member on the module to recover (reselect its token, replace its
//! sessions) afterwards. It first waits (bounded) until no thread is inside the library:
//! every PKCS#11 call happens under [`ModuleContext::calls`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::Shared;
use super::errors::{Operation, fail};
use super::repair::UnknownCodes;
use super::single_part::SinglePart;
use crate::hsm::HsmError;

/// A loaded and initialised PKCS#11 library.
pub struct ModuleContext {
    pkcs11: Pkcs11,
    /// The library's own `C_Encrypt`/`C_Decrypt`, for calls into exactly sized buffers;
    /// `None` if the module does not allow reaching them (cryptoki's calls are used then).
    single_part: Option<SinglePart>,
    path: PathBuf,
    /// Bumped by every `C_Finalize` + `C_Initialize`.
    generation: AtomicU64,
    /// Serialises rebuilds and lists the members to tell about one.
    members: Mutex<Vec<Weak<Shared>>>,
    /// Held shared by every thread while it makes PKCS#11 calls, and exclusively by a rebuild:
    /// `C_Finalize` while another thread is inside the library is undefined behaviour (it
    /// crashed SoftHSM2 in a test), so a rebuild first waits for the calls in flight.
    calls: RwLock<()>,
    /// Unknown return codes seen on the library; a streak of them is a device failure.
    unknown_codes: UnknownCodes,
}

/// How long a rebuild waits for PKCS#11 calls in flight to return before it gives up (and
/// retries later): a hung call must not block recovery forever, nor be finalised under.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

impl ModuleContext {
    /// Loads the library at `path` and calls `C_Initialize` with OS locking (blocking).
    pub fn open(path: &Path) -> Result<Arc<Self>, HsmError> {
        let pkcs11 = Pkcs11::new(path).map_err(|e| {
            HsmError::Unavailable(format!(
                "cannot load the PKCS#11 module {}: {e}",
                path.display()
            ))
        })?;
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| fail(&e, Operation::Session))?;
        let single_part = SinglePart::load(path)
            .inspect_err(|e| {
                tracing::warn!(
                    module = %path.display(), reason = %e,
                    "single-part C_Encrypt/C_Decrypt unavailable; each Encrypt and Decrypt \
                     makes one more PKCS#11 call (a length query)"
                );
            })
            .ok();
        Ok(Arc::new(Self {
            pkcs11,
            single_part,
            path: path.to_owned(),
            generation: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
            calls: RwLock::new(()),
            unknown_codes: UnknownCodes::default(),
        }))
    }

    /// The library's path, as configured.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
    }

    /// Single-part encryption and decryption into caller-sized buffers, if the module allows.
    pub(super) fn single_part(&self) -> Option<&SinglePart> {
        self.single_part.as_ref()
    }

    /// Permission to make PKCS#11 calls until the guard is dropped; `None` if a rebuild holds
    /// the library past `deadline`.
    pub(super) fn calls_until(&self, deadline: Instant) -> Option<RwLockReadGuard<'_, ()>> {
        self.calls.try_read_until(deadline)
    }

    /// Permission to make PKCS#11 calls, waiting as long as a rebuild takes.
    pub(super) fn calls(&self) -> RwLockReadGuard<'_, ()> {
        self.calls.read()
    }

    /// The streak of unknown return codes on this library, shared by every member on it.
    pub(super) fn unknown_codes(&self) -> &UnknownCodes {
        &self.unknown_codes
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Members still open on this module.
    pub(super) fn member_count(&self) -> usize {
        self.members
            .lock()
            .iter()
            .filter(|m| m.strong_count() > 0)
            .count()
    }

    pub(super) fn register(&self, member: &Arc<Shared>) {
        let mut members = self.members.lock();
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(member));
    }

    /// `C_Finalize` and `C_Initialize`, unless the context was already rebuilt since
    /// generation `seen` (when the caller saw its failure). After a rebuild, every other
    /// member on the module is asked to recover: its sessions died with the old context.
    pub(super) fn reinitialize(&self, seen: u64, requester: &Shared) -> Result<(), HsmError> {
        let members = self.members.lock();
        if self.generation() != seen {
            return Ok(());
        }
        // Every other member stops calling first: after the rebuild their session and key
        // handles are stale (and may name objects of the new context).
        let others: Vec<_> = members
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|m| !std::ptr::eq(Arc::as_ptr(m), requester))
            .collect();
        for member in &others {
            member.recovering.store(true, Ordering::SeqCst);
        }
        let Some(_quiet) = self.calls.try_write_for(QUIESCE_TIMEOUT) else {
            // Their recovery threads will bring them back on the old context.
            for member in &others {
                member.recovery.request_reconnect(member);
            }
            return Err(HsmError::Unavailable(
                "PKCS#11 calls still in flight; the rebuild waits for them".into(),
            ));
        };
        match self.pkcs11.clone().finalize() {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
            Err(err) => tracing::debug!(error = %err, "C_Finalize before a rebuild failed"),
        }
        match self
            .pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(err) => return Err(fail(&err, Operation::Session)),
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(members);
        // The others only reconnect (their recovery sees the new generation and never
        // finalises again for this failure).
        for member in &others {
            member.recovery.request_reconnect(member);
        }
        Ok(())
    }
}

impl Drop for ModuleContext {
    fn drop(&mut self) {
        if let Err(err) = self.pkcs11.clone().finalize() {
            tracing::warn!(error = %err, "C_Finalize at shutdown failed");
        }
    }
}
