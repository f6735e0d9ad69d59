//! An HSM fleet of two real SoftHSM2 tokens on one module (no mocks): `keys import` puts the
//! same key into both, requests spread over both, and a member that fails its deep check is
//! taken out, reported and probed back in (H-11, H-12, H-16).
//!
//! Every test runs in a child process of its own (PKCS#11 initialises once per process):
//! the parent makes a SoftHSM2 directory with two tokens, writes a fleet configuration and
//! runs `xks-proxy keys import` on it before starting the child.

// Panics are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use secrecy::SecretString;
use xks_proxy::config::HealthSettings;
use xks_proxy::health::HealthService;
use xks_proxy::hsm::{DecryptRequest, EncryptRequest, FleetBackend, KeyBackend, KeyUsage, Served};
use xks_proxy::metrics::Metrics;
use xks_proxy::xks::{ExternalKeyId, KeyVersion, VersionedKey};
use zeroize::Zeroizing;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "fleet-user-pin";
const HEALTH_KEY: &str = "fleet-health-check";
const KEY: &str = "fleet-key";
const CONFIG: &str = "XKS_FLEET_CONFIG";

/// Parent: two tokens, a fleet config and an imported key, then `body` in a child process.
fn isolated(test: &str, body: impl FnOnce(&Path)) {
    isolated_on(test, Module::SoftHsm, body);
}

/// The PKCS#11 module the fleet's members are on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Module {
    /// SoftHSM2 itself, two sessions and the default queue per member.
    SoftHsm,
    /// The fault-injecting module in front of SoftHSM2 (its control file in
    /// `XKS_FAULT_CONTROL`), one session and a wait queue of one per member: a member whose
    /// one worker is stuck and whose one queue slot is taken answers Busy at once. (A queue
    /// of zero would also answer Busy whenever a request arrives before the worker is back
    /// from answering the previous one.)
    Faulty,
}

/// [`isolated`] on the given module.
fn isolated_on(test: &str, module: Module, body: impl FnOnce(&Path)) {
    if support::isolation::is_child(test) {
        let config = std::env::var(CONFIG).unwrap();
        body(Path::new(&config));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = support::isolation::token_dir(dir.path(), &["fleet-a", "fleet-b"], PIN);
    let control = dir.path().join("faults");
    std::fs::write(&control, "").unwrap();
    let (module_path, pool) = match module {
        Module::SoftHsm => (Path::new(MODULE), "sessions = 2"),
        Module::Faulty => (support::faults::module(), "sessions = 1\nqueue_depth = 1"),
    };
    let config = dir.path().join("xks-proxy.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
plaintext_behind_load_balancer = true
[hsm]
module = {module_path:?}
user_pin = "{PIN}"
{pool}
health_key_label = "{HEALTH_KEY}"
[[hsm.members]]
id = "a"
token_label = "fleet-a"
[[hsm.members]]
id = "b"
token_label = "fleet-b"
[[key_stores]]
path_prefix = ""
[[key_stores.credentials]]
access_key_id = "AKIAI2SFODNN7EXAMPLE"
secret = "GfHQzWbmSw4uRGZqKo5nhQKE+ILlcOt7VEqNdWCtuLY="
"#
        ),
    )
    .unwrap();
    let import = |label: &str| {
        Command::new(env!("CARGO_BIN_EXE_xks-proxy"))
            .args(["keys", "import", "--config"])
            .arg(&config)
            .args(["--label", label])
            .env("SOFTHSM2_CONF", &conf)
            .env("XKS_FAULT_REAL_MODULE", MODULE)
            .output()
            .unwrap()
    };
    let out = import(KEY);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("into 2 member(s): a, b"), "{stdout}");
    // The label now exists everywhere: a second import is refused.
    let again = import(KEY);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a key"));

    support::isolation::run_child(
        test,
        [
            ("SOFTHSM2_CONF", conf.as_os_str()),
            ("XKS_FAULT_REAL_MODULE", std::ffi::OsStr::new(MODULE)),
            ("XKS_FAULT_CONTROL", control.as_os_str()),
            (CONFIG, config.as_os_str()),
        ],
    );
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn open_fleet(config: &Path) -> Arc<FleetBackend> {
    let settings = xks_proxy::config::load(config).unwrap();
    Arc::new(FleetBackend::open(&settings.hsm.members(), Arc::new(Metrics::new())).unwrap())
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn key(label: &str) -> VersionedKey {
    VersionedKey::first(ExternalKeyId::parse(label).unwrap())
}

fn request(plaintext: &[u8]) -> EncryptRequest {
    EncryptRequest {
        plaintext: Zeroizing::new(plaintext.to_vec()),
        aad: b"aad".to_vec(),
    }
}

/// Encrypts `n` times concurrently; returns the members that served.
async fn encrypt_many(fleet: &FleetBackend, n: usize) -> HashSet<String> {
    let calls = (0..n).map(|_| fleet.encrypt(key(KEY), request(b"x"), deadline()));
    let mut served = HashSet::new();
    for Served { result, member } in futures_join(calls).await {
        result.unwrap();
        served.insert(member.unwrap());
    }
    served
}

/// Runs the futures concurrently on the runtime (spawned), in order.
async fn futures_join<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future,
{
    // The fleet futures borrow the backend, so poll them together in this task instead.
    let mut pending: Vec<_> = calls.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, call) in out.iter_mut().zip(pending.iter_mut()) {
            if slot.is_none() {
                match call.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

async fn statuses(health: &HealthService) -> Vec<(String, String)> {
    let response = health.status(deadline()).await.unwrap();
    response
        .ekm_fleet_details
        .into_iter()
        .map(|m| (m.id, m.health_status))
        .collect()
}

fn health_service(fleet: &Arc<FleetBackend>) -> HealthService {
    let settings = HealthSettings {
        proxy_fleet_size: 1,
        // Below any test step, so every status() runs a fresh deep check.
        cache_ttl: Duration::from_millis(1),
    };
    HealthService::new(
        Arc::clone(fleet) as Arc<dyn KeyBackend>,
        &settings,
        Arc::new(Metrics::new()),
    )
}

/// Deletes the health-check key of token `label` with a session of the test's own.
fn delete_health_key(label: &str) {
    let pkcs11 = Pkcs11::new(MODULE).unwrap();
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => panic!("C_Initialize: {err}"),
    }
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|i| i.label().trim() == label)
        })
        .unwrap();
    let session = pkcs11.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&SecretString::from(PIN))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(err) => panic!("C_Login: {err}"),
    }
    for handle in session
        .find_objects(&[Attribute::Label(HEALTH_KEY.as_bytes().to_vec())])
        .unwrap()
    {
        session.destroy_object(handle).unwrap();
    }
}

/// H-11, H-12: both members serve (least outstanding spreads concurrent requests), hold the
/// same imported key material, and are reported ACTIVE.
#[test]
fn h_11_h_12_fleet_spreads_load_over_members_with_the_same_keys() {
    isolated(
        "h_11_h_12_fleet_spreads_load_over_members_with_the_same_keys",
        |config| {
            block_on(async {
                let fleet = open_fleet(config);
                let served = encrypt_many(&fleet, 16).await;
                assert_eq!(served, HashSet::from(["a".to_owned(), "b".to_owned()]));
                // Sequential requests take turns too.
                let mut sequential = HashSet::new();
                for _ in 0..4 {
                    let Served { result, member } =
                        fleet.encrypt(key(KEY), request(b"x"), deadline()).await;
                    result.unwrap();
                    sequential.insert(member.unwrap());
                }
                assert_eq!(sequential.len(), 2);
                // Ciphertext from the fleet decrypts on each member alone: same key material.
                let sealed = fleet
                    .encrypt(key(KEY), request(b"same key everywhere"), deadline())
                    .await
                    .result
                    .unwrap();
                for member in fleet.members() {
                    let plain = member
                        .backend()
                        .decrypt(
                            key(KEY),
                            DecryptRequest {
                                ciphertext: sealed.ciphertext.clone(),
                                iv: sealed.iv.to_vec(),
                                tag: sealed.tag,
                                aad: b"aad".to_vec(),
                            },
                            deadline(),
                        )
                        .await
                        .unwrap();
                    assert_eq!(
                        plain.as_slice(),
                        b"same key everywhere",
                        "member {}",
                        member.id()
                    );
                }
                let health = health_service(&fleet);
                assert_eq!(
                    statuses(&health).await,
                    [("a".into(), "ACTIVE".into()), ("b".into(), "ACTIVE".into())]
                );
            });
        },
    );
}

/// H-11, H-16: a member failing its deep check is UNAVAILABLE and taken out while the other
/// serves everything; once it passes again it is probed back in and ACTIVE; with no member
/// able to serve, GetHealthStatus answers an error.
#[test]
fn h_11_h_16_failing_member_is_taken_out_and_probed_back_in() {
    isolated(
        "h_11_h_16_failing_member_is_taken_out_and_probed_back_in",
        |config| {
            block_on(async {
                let fleet = open_fleet(config);
                let health = health_service(&fleet);
                delete_health_key("fleet-b");
                assert_eq!(
                    statuses(&health).await,
                    [
                        ("a".into(), "ACTIVE".into()),
                        ("b".into(), "UNAVAILABLE".into())
                    ]
                );
                assert!(fleet.members()[1].is_out());
                let served = encrypt_many(&fleet, 12).await;
                assert_eq!(served, HashSet::from(["a".to_owned()]), "b is out");

                // The member recovers: the probe thread puts it back within about a second.
                fleet.members()[1]
                    .backend()
                    .create_key(&key(HEALTH_KEY).id, &[KeyUsage::Encrypt, KeyUsage::Decrypt])
                    .unwrap();
                let until = Instant::now() + Duration::from_secs(10);
                while fleet.members()[1].is_out() {
                    assert!(Instant::now() < until, "member b was not probed back in");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert_eq!(
                    statuses(&health).await,
                    [("a".into(), "ACTIVE".into()), ("b".into(), "ACTIVE".into())]
                );
                assert_eq!(encrypt_many(&fleet, 16).await.len(), 2);

                // H-16: no member can serve → an error, not a 200.
                delete_health_key("fleet-a");
                delete_health_key("fleet-b");
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert!(health.status(deadline()).await.is_err());
            });
        },
    );
}

/// Saturates one member with calls straight to it (not through the fleet, whose outstanding
/// counts stay even), while `C_Encrypt` hangs on its token: two accepted calls mean its one
/// worker is stuck in one and the other fills its one queue slot, so it now answers Busy.
fn saturate<'a>(
    member: &'a xks_proxy::hsm::pkcs11::Pkcs11Backend,
) -> Vec<xks_proxy::hsm::BackendFuture<'a, xks_proxy::hsm::GcmCiphertext>> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let started = Instant::now();
    let mut accepted = Vec::new();
    while accepted.len() < 2 {
        let until = Instant::now() + Duration::from_secs(20);
        let mut call = member.encrypt(key(KEY), request(b"saturates the member"), until);
        match call.as_mut().poll(&mut context) {
            std::task::Poll::Pending => accepted.push(call),
            std::task::Poll::Ready(Err(xks_proxy::hsm::HsmError::Busy)) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::task::Poll::Ready(other) => panic!("saturating call: {:?}", other.err()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the member never took the calls"
        );
    }
    accepted
}

/// Throttling is per member: a request the chosen member answers Busy (its one worker hung in
/// `C_Encrypt`, its queue full) is served by the idle neighbour instead of failing with
/// ThrottlingException; the busy member stays in the fleet. Only when every member is busy
/// does the caller get Busy.
#[test]
fn busy_member_requests_go_to_an_idle_neighbour() {
    isolated_on(
        "busy_member_requests_go_to_an_idle_neighbour",
        Module::Faulty,
        |config| {
            block_on(async {
                let control = std::path::PathBuf::from(std::env::var("XKS_FAULT_CONTROL").unwrap());
                let fleet = open_fleet(config);
                // Both members serve (and have the key's handle cached) before the fault.
                assert_eq!(encrypt_sequentially(&fleet, 4).await.len(), 2);

                support::faults::set_rules(&control, "hang C_Encrypt token=fleet-a\n");
                let stuck_a = saturate(fleet.members()[0].backend());
                // Ties rotate between a and b, so half of these are routed to a first.
                let served = encrypt_sequentially(&fleet, 6).await;
                assert_eq!(served, HashSet::from(["b".to_owned()]));
                assert!(
                    !fleet.members()[0].is_out(),
                    "a busy member is healthy, not out"
                );

                support::faults::set_rules(&control, "hang C_Encrypt\n");
                let stuck_b = saturate(fleet.members()[1].backend());
                let all_busy = fleet.encrypt(key(KEY), request(b"x"), deadline()).await;
                assert_eq!(all_busy.result.err(), Some(xks_proxy::hsm::HsmError::Busy));
                assert!(fleet.members().iter().all(|m| !m.is_out()), "nobody is out");

                support::faults::set_rules(&control, "");
                for call in stuck_a.into_iter().chain(stuck_b) {
                    call.await.unwrap();
                }
                assert_eq!(encrypt_sequentially(&fleet, 4).await.len(), 2);
            });
        },
    );
}

/// Encrypts `n` times one after the other; returns the members that served. Every call must
/// succeed.
async fn encrypt_sequentially(fleet: &FleetBackend, n: usize) -> HashSet<String> {
    let mut served = HashSet::new();
    for i in 0..n {
        let Served { result, member } = fleet.encrypt(key(KEY), request(b"x"), deadline()).await;
        if let Err(err) = result {
            panic!("request {i} (member {member:?}): {err:?}");
        }
        served.insert(member.unwrap());
    }
    served
}

/// A version only one member holds (a `keys rotate` that stopped half way) is never chosen to
/// encrypt, and a ciphertext made under it still decrypts through the fleet: a member that
/// lacks the version hands the request to one that has it.
#[test]
fn a_version_on_one_member_only_is_not_voted_in_but_still_decrypts() {
    isolated(
        "a_version_on_one_member_only_is_not_voted_in_but_still_decrypts",
        |config| {
            block_on(async {
                let fleet = open_fleet(config);
                let id = ExternalKeyId::parse(KEY).unwrap();
                let v2 = VersionedKey::new(id.clone(), KeyVersion::new(2).unwrap());
                let only = &fleet.members()[0];
                only.backend()
                    .import_key_version(
                        &v2,
                        &Zeroizing::new([0x6b; 32]),
                        &[KeyUsage::Encrypt, KeyUsage::Decrypt],
                    )
                    .unwrap();
                let versions = fleet.key_versions(id.clone(), deadline()).await.result;
                assert_eq!(versions.unwrap().as_ref(), [KeyVersion::FIRST]);
                let alone = only.backend().key_versions(id, deadline()).await.unwrap();
                assert_eq!(alone.len(), 2, "member a holds both versions");

                let sealed = only
                    .backend()
                    .encrypt(v2.clone(), request(b"half rotated"), deadline())
                    .await
                    .unwrap();
                // Requests take turns over the members: some land on b first.
                for _ in 0..6 {
                    let decrypt = DecryptRequest {
                        ciphertext: sealed.ciphertext.clone(),
                        iv: sealed.iv.to_vec(),
                        tag: sealed.tag,
                        aad: b"aad".to_vec(),
                    };
                    let served = fleet.decrypt(v2.clone(), decrypt, deadline()).await;
                    assert_eq!(served.result.unwrap().as_slice(), b"half rotated");
                    assert_eq!(served.member.as_deref(), Some(only.id()));
                }
            });
        },
    );
}
