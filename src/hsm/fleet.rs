//! An HSM fleet: one [`KeyBackend`] over several PKCS#11 tokens that hold the same keys, as
//! an HSM cluster does (XKS spec GetHealthStatus `ekmFleetDetails`, H-11, H-12, H-16).
//!
//! Every request goes to the available member with the fewest outstanding requests (ties
//! rotate). A member whose request fails with [`HsmError::Unavailable`] or a device-class
//! PKCS#11 error, or whose deep check fails, is taken out: requests skip it while another
//! member is available. A background thread runs the deep check on every member that is out
//! once a second and puts it back when the check passes. A request that failed that way is
//! retried once on another member if the deadline allows: GetKeyMetadata and Decrypt are
//! read-only, and an Encrypt repeated under a fresh IV leaves nothing behind on the HSM.
//!
//! A member answering [`HsmError::Busy`] (its wait queue is full) is healthy, just loaded: it
//! stays in, and the request moves on to another available member it has not tried yet. Busy
//! comes back at once and the request never ran, so this costs no HSM work and no waiting;
//! only when every available member is busy does the caller get Busy (ThrottlingException).
//!
//! Members on the same PKCS#11 module share one [`ModuleContext`] (`C_Initialize` once per
//! library per process). Each call's result names the member that served it ([`Served`]),
//! for the audit log.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use zeroize::Zeroizing;

use super::pkcs11::{ModuleContext, Pkcs11Backend};
use super::{
    BackendFuture, DecryptRequest, EncryptRequest, GcmCiphertext, HsmError, HsmHealth, KeyBackend,
    KeyMetadata, MemberHealth, MemberStatus, Served, ServedFuture, Tier,
};
use crate::config::HsmMemberSettings;
use crate::hsm::HsmObserver;
use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// How often members that are out get their deep check.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Time allowed for one probe's deep check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`KeyBackend`] spreading requests over several HSM members.
pub struct FleetBackend {
    members: Arc<[FleetMember]>,
    /// Where the next tie-break starts, so that equally idle members take turns.
    cursor: AtomicUsize,
    /// Dropping it stops the probe thread.
    stop: Option<Sender<()>>,
    prober: Option<JoinHandle<()>>,
}

/// One member of a [`FleetBackend`].
pub struct FleetMember {
    id: String,
    backend: Pkcs11Backend,
    outstanding: AtomicUsize,
    /// Taken out after a failure, until a deep check passes.
    out: AtomicBool,
}

impl FleetMember {
    /// The member's id (configured, else its token serial).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The member's own backend, e.g. for administration.
    pub fn backend(&self) -> &Pkcs11Backend {
        &self.backend
    }

    /// Whether requests skip this member now: taken out after a failure, or rebuilding its
    /// PKCS#11 context.
    pub fn is_out(&self) -> bool {
        self.out.load(Ordering::SeqCst) || self.backend.is_recovering()
    }

    fn take_out(&self, why: &HsmError) {
        if !self.out.swap(true, Ordering::SeqCst) {
            tracing::warn!(member = %self.id, error = %why, "HSM member taken out of the fleet");
        }
    }

    fn put_back(&self) {
        if self.out.swap(false, Ordering::SeqCst) {
            tracing::info!(member = %self.id, "HSM member back in the fleet");
        }
    }
}

/// Decrements a member's outstanding count when the call ends, however it ends.
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FleetBackend {
    /// Opens every member (blocking; at startup), sharing one context per module, and starts
    /// the probe thread. Fails if any member cannot be opened or two members share an id.
    pub fn open(
        settings: &[HsmMemberSettings],
        observer: Arc<dyn HsmObserver>,
    ) -> Result<Self, HsmError> {
        let mut modules: HashMap<std::path::PathBuf, Arc<ModuleContext>> = HashMap::new();
        let mut members: Vec<FleetMember> = Vec::with_capacity(settings.len());
        for member in settings {
            let path = &member.hsm.module;
            let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let module = match modules.entry(key) {
                Entry::Occupied(open) => Arc::clone(open.get()),
                Entry::Vacant(slot) => Arc::clone(slot.insert(ModuleContext::open(path)?)),
            };
            let backend = Pkcs11Backend::open_on(&module, &member.hsm, Arc::clone(&observer))
                .map_err(|e| {
                    HsmError::Unavailable(format!("HSM member {:?}: {e}", member.hsm.token))
                })?;
            let id = member
                .id
                .clone()
                .unwrap_or_else(|| backend.token_identity().serial);
            if members.iter().any(|m| m.id == id) {
                return Err(HsmError::Unavailable(format!(
                    "two HSM members have the id {id:?}; set hsm.members[].id"
                )));
            }
            members.push(FleetMember {
                id,
                backend,
                outstanding: AtomicUsize::new(0),
                out: AtomicBool::new(false),
            });
        }
        if members.is_empty() {
            return Err(HsmError::Unavailable("no HSM member configured".into()));
        }
        let members: Arc<[FleetMember]> = members.into();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let probed = Arc::clone(&members);
        let prober = std::thread::Builder::new()
            .name("hsm-fleet-probe".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(PROBE_INTERVAL) {
                    probe_out_members(&probed);
                }
            })
            .map_err(|e| HsmError::Unavailable(format!("cannot start the probe thread: {e}")))?;
        tracing::info!(members = members.len(), "HSM fleet ready");
        Ok(Self {
            members,
            cursor: AtomicUsize::new(0),
            stop: Some(stop),
            prober: Some(prober),
        })
    }

    /// The members, in configuration order.
    pub fn members(&self) -> &[FleetMember] {
        &self.members
    }

    /// The available member with the fewest outstanding requests among those not `tried`;
    /// when nothing was tried yet and no member is available, any member (its answer is the
    /// real error).
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let n = self.members.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let candidates = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.get(*i).copied().unwrap_or(false));
        let best = |available: bool| {
            candidates
                .clone()
                .filter(|i| !available || !self.members[*i].is_out())
                .min_by_key(|i| self.members[*i].outstanding.load(Ordering::SeqCst))
        };
        let first_try = !tried.contains(&true);
        best(true).or_else(|| if first_try { best(false) } else { None })
    }

    /// Runs `call` on the best member. While members answer Busy, moves on to the next
    /// untried available one (the call never ran there); after a failure that takes a member
    /// out, tries once more on another one. Never past the deadline.
    fn route<'a, T, F>(&'a self, deadline: Instant, call: F) -> ServedFuture<'a, T>
    where
        T: Send + 'a,
        F: Fn(&'a Pkcs11Backend) -> BackendFuture<'a, T> + Send + Sync + 'a,
    {
        self.route_with(deadline, |_| false, call)
    }

    /// [`FleetBackend::route`], also moving on to the next untried available member when the
    /// answer satisfies `elsewhere` (e.g. a key version this member does not hold).
    fn route_with<'a, T, F>(
        &'a self,
        deadline: Instant,
        elsewhere: fn(&HsmError) -> bool,
        call: F,
    ) -> ServedFuture<'a, T>
    where
        T: Send + 'a,
        F: Fn(&'a Pkcs11Backend) -> BackendFuture<'a, T> + Send + Sync + 'a,
    {
        Box::pin(async move {
            let mut tried = vec![false; self.members.len()];
            let Some(mut member) = self.pick(&tried) else {
                let none = HsmError::Unavailable("no HSM member configured".into());
                return Served {
                    result: Err(none),
                    member: None,
                };
            };
            let mut failover_left = true;
            loop {
                let result = self.run_on(member, &call).await;
                tried[member] = true;
                let again = match &result {
                    Err(HsmError::Busy) => true,
                    Err(err) if elsewhere(err) => true,
                    Err(err) if takes_out(err) => std::mem::replace(&mut failover_left, false),
                    _ => false,
                };
                if !again || Instant::now() >= deadline {
                    return Served::by(&self.members[member].id, result);
                }
                match self.pick(&tried) {
                    Some(next) => member = next,
                    None => return Served::by(&self.members[member].id, result),
                }
            }
        })
    }

    async fn run_on<'a, T, F>(&'a self, index: usize, call: &F) -> Result<T, HsmError>
    where
        F: Fn(&'a Pkcs11Backend) -> BackendFuture<'a, T>,
    {
        let member = &self.members[index];
        member.outstanding.fetch_add(1, Ordering::SeqCst);
        let _outstanding = Outstanding(&member.outstanding);
        let result = call(&member.backend).await;
        if let Err(err) = &result
            && takes_out(err)
        {
            member.take_out(err);
        }
        result
    }
}

/// Failures that say the member cannot serve now, rather than anything about the request.
fn takes_out(err: &HsmError) -> bool {
    match err {
        HsmError::Unavailable(_) => true,
        HsmError::Pkcs11(failure) => failure.tier == Tier::Device,
        _ => false,
    }
}

/// Runs the deep check on every member that is out and puts back those that pass.
fn probe_out_members(members: &[FleetMember]) {
    if !members.iter().any(|m| m.out.load(Ordering::SeqCst)) {
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the probe runtime");
            return;
        }
    };
    for member in members.iter().filter(|m| m.out.load(Ordering::SeqCst)) {
        let check = member.backend.health(Instant::now() + PROBE_TIMEOUT);
        match runtime.block_on(check) {
            Ok(health)
                if health
                    .members
                    .iter()
                    .all(|m| m.status == MemberStatus::Active) =>
            {
                member.put_back();
            }
            Ok(_) => tracing::debug!(member = %member.id, "HSM member still fails its deep check"),
            Err(err) => tracing::debug!(member = %member.id, error = %err, "HSM member probe"),
        }
    }
}

impl KeyBackend for FleetBackend {
    /// The versions every member holds: a version `keys rotate` has put into only some
    /// members yet is not used to encrypt, so any member can decrypt what was encrypted.
    /// Members that are out still vote, usually from their cache; members that cannot answer
    /// at all (failing, busy) are left out of the vote (Decrypt then moves on from a member
    /// that lacks a version); if none can answer, the first error is the answer.
    fn key_versions(
        &self,
        key: ExternalKeyId,
        deadline: Instant,
    ) -> ServedFuture<'_, Arc<[KeyVersion]>> {
        // Queued together, so members look their versions up concurrently; usually every
        // future is ready at once from the members' caches.
        let asks: Vec<_> = self
            .members
            .iter()
            .map(|m| m.backend.key_versions(key.clone(), deadline))
            .collect();
        Box::pin(async move {
            let mut common: Option<Vec<KeyVersion>> = None;
            let mut first_error = None;
            for ask in asks {
                match ask.await {
                    Ok(versions) => {
                        common = Some(match common {
                            None => versions.to_vec(),
                            Some(mut held) => {
                                held.retain(|v| versions.contains(v));
                                held
                            }
                        });
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            let result = match (common, first_error) {
                (Some(held), _) if !held.is_empty() => Ok(held.into()),
                // Members disagree so much that no version is everywhere.
                (Some(_), _) => Err(HsmError::KeyNotFound),
                (None, Some(err)) => Err(err),
                (None, None) => Err(HsmError::Unavailable("no HSM member available".into())),
            };
            Served {
                result,
                member: None,
            }
        })
    }

    fn forget_keys(&self) {
        for member in self.members.iter() {
            member.backend.forget_keys();
        }
    }

    fn key_metadata(&self, key: VersionedKey, deadline: Instant) -> ServedFuture<'_, KeyMetadata> {
        self.route(deadline, move |backend| {
            backend.key_metadata(key.clone(), deadline)
        })
    }

    fn encrypt(
        &self,
        key: VersionedKey,
        request: EncryptRequest,
        deadline: Instant,
    ) -> ServedFuture<'_, GcmCiphertext> {
        self.route(deadline, move |backend| {
            let copy = EncryptRequest {
                plaintext: request.plaintext.clone(),
                aad: request.aad.clone(),
            };
            backend.encrypt(key.clone(), copy, deadline)
        })
    }

    fn decrypt(
        &self,
        key: VersionedKey,
        request: DecryptRequest,
        deadline: Instant,
    ) -> ServedFuture<'_, Zeroizing<Vec<u8>>> {
        // A member may lack a version the others hold (a `keys rotate` that stopped half
        // way, a member that was out when the version was voted in): ask the others.
        let elsewhere = |err: &HsmError| matches!(err, HsmError::KeyNotFound);
        self.route_with(deadline, elsewhere, move |backend| {
            let copy = DecryptRequest {
                ciphertext: request.ciphertext.clone(),
                iv: request.iv.clone(),
                tag: request.tag,
                aad: request.aad.clone(),
            };
            backend.decrypt(key.clone(), copy, deadline)
        })
    }

    /// One entry per member: ACTIVE when its deep check passes, DEGRADED when it passes but
    /// the member is out or rebuilding, or the check could not run in time (busy, slow),
    /// UNAVAILABLE when it fails. `Err` only when no member's check could run at all.
    fn health(&self, deadline: Instant) -> ServedFuture<'_, HsmHealth> {
        // Every check is queued now, so they run concurrently on the members' workers.
        let checks: Vec<_> = self
            .members
            .iter()
            .map(|m| m.backend.health(deadline))
            .collect();
        let checked: BackendFuture<'_, HsmHealth> = Box::pin(async move {
            let mut vendor = None;
            let mut members = Vec::with_capacity(self.members.len());
            let mut not_run = None;
            for (member, check) in self.members.iter().zip(checks) {
                let identity = member.backend.token_identity();
                let (status, model) = match check.await {
                    Ok(health) => {
                        vendor.get_or_insert(health.vendor);
                        match health.members.into_iter().next() {
                            Some(own) => (own.status, own.model),
                            None => (MemberStatus::Unavailable, identity.model_description()),
                        }
                    }
                    Err(err) => {
                        not_run.get_or_insert(err);
                        (MemberStatus::Degraded, identity.model_description())
                    }
                };
                let status = match status {
                    MemberStatus::Unavailable => {
                        member.take_out(&HsmError::Unavailable("the deep check failed".into()));
                        MemberStatus::Unavailable
                    }
                    MemberStatus::Active if member.is_out() => MemberStatus::Degraded,
                    other => other,
                };
                members.push(MemberHealth {
                    id: member.id.clone(),
                    model,
                    status,
                });
            }
            match (vendor, not_run) {
                (None, Some(err)) if members.iter().all(|m| m.status == MemberStatus::Degraded) => {
                    Err(err)
                }
                (vendor, _) => Ok(HsmHealth {
                    vendor: vendor
                        .unwrap_or_else(|| self.members[0].backend.token_identity().manufacturer),
                    members,
                }),
            }
        });
        // Every member answered: no single one served the check.
        Box::pin(async move {
            Served {
                result: checked.await,
                member: None,
            }
        })
    }
}

impl Drop for FleetBackend {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(prober) = self.prober.take()
            && prober.join().is_err()
        {
            tracing::error!("the HSM fleet probe thread panicked");
        }
    }
}
