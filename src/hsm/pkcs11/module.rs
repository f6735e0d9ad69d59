//! One PKCS#11 module per process, shared by every token (member) opened on it (PKCS#11 v3.2
//! §5.4: `C_Initialize` and `C_Finalize` act on the whole library, once per process).
//!
//! A [`ModuleContext`] loads the library and calls `C_Initialize`; it calls `C_Finalize` when
//! the last backend using it is dropped. A context rebuild after a device failure (see
//! `recovery`) finalises the whole library and so kills the sessions of every member on it:
//! [`ModuleContext::reinitialize`] therefore runs at most once per failure — a member that
//! finds the context already rebuilt since it saw its failure only reselects its token — and
//! asks every other member on the module to recover (reselect its token, replace its
//! sessions) afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use parking_lot::Mutex;

use super::Shared;
use super::errors::{Operation, fail};
use crate::hsm::HsmError;

/// A loaded and initialised PKCS#11 library.
pub struct ModuleContext {
    pkcs11: Pkcs11,
    path: PathBuf,
    /// Bumped by every `C_Finalize` + `C_Initialize`.
    generation: AtomicU64,
    /// Serialises rebuilds and lists the members to tell about one.
    members: Mutex<Vec<Weak<Shared>>>,
}

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
        Ok(Arc::new(Self {
            pkcs11,
            path: path.to_owned(),
            generation: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
        }))
    }

    /// The library's path, as configured.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
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
        let others: Vec<_> = members
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|m| !std::ptr::eq(Arc::as_ptr(m), requester))
            .collect();
        drop(members);
        for member in others {
            member.recovery.request(&member);
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
