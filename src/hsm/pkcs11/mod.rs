//! The PKCS#11 (cryptoki) implementation of [`KeyBackend`] (XKS spec Encrypt, Decrypt,
//! GetKeyMetadata and GetHealthStatus, served by a real HSM through its PKCS#11 module).
//!
//! [`Pkcs11Backend::open`] loads the module, calls `C_Initialize` with OS locking, selects the
//! token by label or serial, logs in as CKU_USER and starts the worker pool (`pool`). The
//! module is initialised once per process: open one backend per module and keep it, or, for
//! several tokens on one module (an HSM fleet), open one [`ModuleContext`] and every token on
//! it with [`Pkcs11Backend::open_on`].
//!
//! Layout: `errors` classifies return values (with `codes` naming them), `token` selects the
//! token and opens sessions, `keys` finds keys by label and caches handles, `crypto` runs
//! AES-GCM, metadata and the health check, `pool` owns the worker threads and `admin` holds
//! the blocking CLI calls. Every PKCS#11 call goes through `timing`, which reports its
//! duration to the one [`HsmObserver`] (the process's metrics in `serve`).

mod admin;
mod codes;
mod crypto;
mod errors;
mod key_info;
mod keys;
mod liveness;
mod module;
mod pool;
mod queue;
mod recovery;
mod repair;
mod single_part;
mod timing;
mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::Instant;

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use parking_lot::{Mutex, RwLock};
use secrecy::SecretString;
use zeroize::Zeroizing;

pub use admin::KeyListing;
pub use key_info::KeyProtection;
pub use module::ModuleContext;
pub use repair::{UNKNOWN_CODE_STREAK, UNKNOWN_CODE_WINDOW};
pub use token::TokenIdentity;

use self::errors::Operation;
use self::keys::{CachedVersions, KeyCache};
use self::pool::Pool;
use crate::config::HsmSettings;
use crate::hsm::HsmObserver;
use crate::hsm::{
    BackendFuture, DecryptRequest, EncryptRequest, GcmCiphertext, HsmError, HsmHealth, KeyBackend,
    KeyMetadata, MemberHealth, MemberStatus, NoObserver, Served, ServedFuture,
};
use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// A [`KeyBackend`] on one PKCS#11 token.
///
/// Crypto runs on `settings.sessions` dedicated worker threads; the async methods only queue
/// work and wait for it. Dropping the backend stops the workers, logs out and finalises the
/// module.
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
    pool: Pool,
    /// The R/W admin session; it also keeps the application logged in. `None` after a
    /// failure until the next admin call reopens it.
    admin: Mutex<Option<Session>>,
    identity: TokenIdentity,
    /// The background thread that rebuilds the context after device failures.
    recovery: Option<JoinHandle<()>>,
}

/// State shared by the backend and its workers.
struct Shared {
    /// The module this token is on, possibly shared with other members.
    module: Arc<ModuleContext>,
    /// `module`'s context.
    pkcs11: Pkcs11,
    /// The token's slot; it can change when the context is rebuilt.
    slot: RwLock<Slot>,
    /// Bumped by every context rebuild; sessions of an older generation are stale.
    generation: AtomicU64,
    /// True from a device failure until the context is rebuilt: requests fail fast.
    recovering: AtomicBool,
    /// Wakes the recovery thread.
    recovery: recovery::Recovery,
    pin: SecretString,
    keys: KeyCache,
    health_key: ExternalKeyId,
    /// Set once the token refuses the PIN; nobody logs in again (PIN lockout protection).
    login_refused: AtomicBool,
    /// PKCS#11 call latency and worker session gauges.
    observer: Arc<dyn HsmObserver>,
}

impl Pkcs11Backend {
    /// Loads the module, selects and logs in to the token, makes sure the health-check key
    /// exists (creating it if `settings.create_health_key`) and starts the workers.
    ///
    /// Blocking; call it at startup, not from an async task. Nothing is measured; use
    /// [`Pkcs11Backend::open_with_metrics`] to report into the process's metrics.
    pub fn open(settings: &HsmSettings) -> Result<Self, HsmError> {
        Self::open_with_metrics(settings, Arc::new(NoObserver))
    }

    /// [`Pkcs11Backend::open`], recording PKCS#11 call latency
    /// (`xks_hsm_call_duration_seconds`) and worker sessions (`xks_hsm_sessions`) in `observer`.
    pub fn open_with_metrics(
        settings: &HsmSettings,
        observer: Arc<dyn HsmObserver>,
    ) -> Result<Self, HsmError> {
        let module = ModuleContext::open(&settings.module)?;
        Self::open_on(&module, settings, observer)
    }

    /// [`Pkcs11Backend::open_with_metrics`] on a module another member already opened:
    /// `settings.module` is ignored. The module is finalised when its last member is dropped.
    pub fn open_on(
        module: &Arc<ModuleContext>,
        settings: &HsmSettings,
        observer: Arc<dyn HsmObserver>,
    ) -> Result<Self, HsmError> {
        let pkcs11 = module.pkcs11().clone();
        let slot = token::select(&pkcs11, &*observer, &settings.token)?;
        let identity = token::identity(&pkcs11, &*observer, slot, Operation::Session)?;
        let pin = settings.user_pin.clone();
        let admin = token::open_session(&pkcs11, &*observer, slot, &pin, true)?;
        admin::ensure_health_key(
            &admin,
            &*observer,
            &settings.health_key_label,
            settings.create_health_key,
        )?;

        let mut sessions = Vec::with_capacity(settings.sessions.get());
        for _ in 0..settings.sessions.get() {
            sessions.push(token::open_session(&pkcs11, &*observer, slot, &pin, false)?);
        }
        let shared = Arc::new(Shared {
            module: Arc::clone(module),
            pkcs11,
            slot: RwLock::new(slot),
            generation: AtomicU64::new(0),
            recovering: AtomicBool::new(false),
            recovery: recovery::Recovery::default(),
            pin,
            keys: KeyCache::default(),
            health_key: settings.health_key_label.clone(),
            login_refused: AtomicBool::new(false),
            observer,
        });
        let pool = Pool::start(&shared, sessions, settings.queue_depth)?;
        let recovery = recovery::start(&shared, settings.token.clone())?;
        module.register(&shared);

        tracing::info!(
            manufacturer = %identity.manufacturer, model = %identity.model,
            serial = %identity.serial, label = %identity.label,
            hardware = %identity.hardware_version, firmware = %identity.firmware_version,
            sessions = settings.sessions.get(), queue_depth = settings.queue_depth,
            "PKCS#11 token ready"
        );
        Ok(Self {
            shared,
            pool,
            admin: Mutex::new(Some(admin)),
            identity,
            recovery: Some(recovery),
        })
    }

    /// Whether the backend is rebuilding its PKCS#11 context after a device failure; requests
    /// fail fast with [`HsmError::Unavailable`] meanwhile.
    pub fn is_recovering(&self) -> bool {
        self.shared
            .recovering
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The token's identity as read at startup, for logs.
    pub fn token_identity(&self) -> TokenIdentity {
        self.identity.clone()
    }

    /// The health-check key is not a customer key (H-3): customer calls get `KeyNotFound`.
    fn customer_key(&self, key: &ExternalKeyId) -> Result<(), HsmError> {
        if *key == self.shared.health_key {
            Err(HsmError::KeyNotFound)
        } else {
            Ok(())
        }
    }

    /// Queues `f` on the pool and returns a future for its result.
    fn run<T, F>(&self, deadline: Instant, f: F) -> BackendFuture<'_, T>
    where
        T: Send + 'static,
        F: Fn(&Session, &Shared) -> Result<T, HsmError> + Send + 'static,
    {
        let submitted = self.pool.submit(deadline, f);
        Box::pin(async move { submitted?.wait().await })
    }
}

/// The calls themselves, answering a plain `Result`; the [`KeyBackend`] impl below adds the
/// serving member. A fleet calls these on its members, and tests on a single token.
impl Pkcs11Backend {
    /// The servable versions of `key` on this token, oldest first; answered at once from
    /// the cache when it knows them.
    pub fn key_versions(
        &self,
        key: ExternalKeyId,
        deadline: Instant,
    ) -> BackendFuture<'_, Arc<[KeyVersion]>> {
        if let Err(err) = self.customer_key(&key) {
            return Box::pin(std::future::ready(Err(err)));
        }
        let stale = match self.shared.keys.cached_versions(&key) {
            CachedVersions::Fresh(versions) => return Box::pin(std::future::ready(Ok(versions))),
            CachedVersions::Refresh(old) => Some(old),
            CachedVersions::Unknown => None,
        };
        let look_up = self.run(deadline, move |session, shared| {
            let observer = &*shared.observer;
            shared
                .keys
                .look_up_versions(session, observer, &key, Operation::Metadata)
        });
        Box::pin(async move {
            match (look_up.await, stale) {
                // The token could not answer now: the old list is still the best answer.
                (Err(err), Some(old)) if !matches!(err, HsmError::KeyNotFound) => {
                    tracing::debug!(error = %err, "refreshing a key's versions failed; keeping the list");
                    Ok(old)
                }
                (result, _) => result,
            }
        })
    }

    /// Forgets every cached key handle and list of versions (a reload): versions made since
    /// (by `keys rotate`) are used from the next request on, and objects destroyed since are
    /// never served through a handle number the HSM may have reused.
    pub fn forget_keys(&self) {
        self.shared.keys.clear();
    }

    /// GetKeyMetadata on this token.
    pub fn key_metadata(
        &self,
        key: VersionedKey,
        deadline: Instant,
    ) -> BackendFuture<'_, KeyMetadata> {
        if let Err(err) = self.customer_key(&key.id) {
            return Box::pin(std::future::ready(Err(err)));
        }
        self.run(deadline, move |session, shared| {
            crypto::metadata(session, shared, &key)
        })
    }

    /// AES-256-GCM encryption on this token, under a fresh IV from the OS CSPRNG.
    pub fn encrypt(
        &self,
        key: VersionedKey,
        request: EncryptRequest,
        deadline: Instant,
    ) -> BackendFuture<'_, GcmCiphertext> {
        if let Err(err) = self.customer_key(&key.id) {
            return Box::pin(std::future::ready(Err(err)));
        }
        self.run(deadline, move |session, shared| {
            crypto::encrypt(session, shared, &key, &request)
        })
    }

    /// AES-GCM decryption on this token.
    pub fn decrypt(
        &self,
        key: VersionedKey,
        request: DecryptRequest,
        deadline: Instant,
    ) -> BackendFuture<'_, Zeroizing<Vec<u8>>> {
        if let Err(err) = self.customer_key(&key.id) {
            return Box::pin(std::future::ready(Err(err)));
        }
        self.run(deadline, move |session, shared| {
            crypto::decrypt(session, shared, &key, &request)
        })
    }

    /// Ok with the member `Unavailable` when the crypto check fails; `Err` only for
    /// [`HsmError::Timeout`] and [`HsmError::Busy`], where the check never got to run.
    pub fn health(&self, deadline: Instant) -> BackendFuture<'_, HsmHealth> {
        let probe = self.run(deadline, crypto::health_probe);
        Box::pin(async move {
            let (identity, status) = match probe.await {
                Ok(identity) => (identity, MemberStatus::Active),
                Err(err @ (HsmError::Timeout | HsmError::Busy)) => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "the deep health check failed");
                    (self.identity.clone(), MemberStatus::Unavailable)
                }
            };
            let member = MemberHealth {
                id: identity.serial.clone(),
                model: identity.model_description(),
                status,
            };
            Ok(HsmHealth {
                vendor: identity.manufacturer,
                members: vec![member],
            })
        })
    }
}

impl KeyBackend for Pkcs11Backend {
    fn key_versions(
        &self,
        key: ExternalKeyId,
        deadline: Instant,
    ) -> ServedFuture<'_, Arc<[KeyVersion]>> {
        self.served(Self::key_versions(self, key, deadline))
    }

    fn forget_keys(&self) {
        Self::forget_keys(self);
    }

    fn key_metadata(&self, key: VersionedKey, deadline: Instant) -> ServedFuture<'_, KeyMetadata> {
        self.served(Self::key_metadata(self, key, deadline))
    }

    fn encrypt(
        &self,
        key: VersionedKey,
        request: EncryptRequest,
        deadline: Instant,
    ) -> ServedFuture<'_, GcmCiphertext> {
        self.served(Self::encrypt(self, key, request, deadline))
    }

    fn decrypt(
        &self,
        key: VersionedKey,
        request: DecryptRequest,
        deadline: Instant,
    ) -> ServedFuture<'_, Zeroizing<Vec<u8>>> {
        self.served(Self::decrypt(self, key, request, deadline))
    }

    fn health(&self, deadline: Instant) -> ServedFuture<'_, HsmHealth> {
        self.served(Self::health(self, deadline))
    }
}

impl Pkcs11Backend {
    /// `call`'s result, served by this token (its serial number).
    fn served<'a, T: Send + 'a>(&'a self, call: BackendFuture<'a, T>) -> ServedFuture<'a, T> {
        Box::pin(async move { Served::by(&self.identity.serial, call.await) })
    }
}

impl Drop for Pkcs11Backend {
    fn drop(&mut self) {
        self.pool.shutdown();
        self.shared.recovery.stop();
        if let Some(thread) = self.recovery.take()
            && thread.join().is_err()
        {
            tracing::error!("the PKCS#11 recovery thread panicked");
        }
        if let Some(session) = self.admin.get_mut().take() {
            if let Err(err) = session.logout() {
                tracing::debug!(error = %err, "C_Logout at shutdown failed");
            }
            drop(session);
        }
        // The module is finalised when its last member's `Shared` goes (`ModuleContext`).
        tracing::info!("PKCS#11 backend closed");
    }
}
