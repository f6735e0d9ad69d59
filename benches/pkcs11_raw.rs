//! The floor under every proxy figure (issue 12, target 1): what SoftHSM2 itself costs for one
//! AES-256-GCM encryption and decryption of a 32-byte plaintext, called directly from one
//! thread with no proxy around it.
//!
//! `cargo bench --bench pkcs11_raw` prints, for encrypt (`C_EncryptInit` + `C_Encrypt`) and
//! decrypt (`C_DecryptInit` + `C_Decrypt`), under a key stored on the token (as the proxy's
//! keys are) and under a session key: operations per second and CPU µs per operation
//! (this thread's `sum_exec_runtime` from `/proc/thread-self/schedstat`, in ns, so time lost to
//! other processes on a shared machine does not count). `softhsm/bench.sh cpu` divides the
//! proxy's CPU per request by these figures.
//!
//! The AAD is 8 bytes, the size of the proxy's AAD framing for a request without AAD
//! (`BE16(0) ‖ 0x05 ‖ 5-byte metadata`). cryptoki's single-part calls first ask for the output
//! length (one more, cheap, in-process call): the floor is therefore a little higher than two
//! calls would cost, by well under a microsecond on SoftHSM2.
//!
//! With `SOFTHSM2_CONF` unset the bench makes a token of its own in a temporary directory and
//! runs itself again with it; with it set, it uses the token labelled `XKS_RAW_TOKEN` (default
//! `xks-bench-raw`, user PIN `XKS_RAW_PIN`, default `1234`), which must exist.

// A benchmark is a test: a broken fixture should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const DEFAULT_TOKEN: &str = "xks-bench-raw";
const DEFAULT_PIN: &str = "1234";
/// How long each operation is timed under `cargo bench`.
const MEASURE: Duration = Duration::from_secs(3);
/// Operations before timing.
const WARM_UP: u32 = 2_000;

fn main() {
    // `cargo test --benches` runs this with `--test`-like arguments: a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    if std::env::var_os("SOFTHSM2_CONF").is_none() {
        rerun_with_own_token();
        return;
    }
    let token = std::env::var("XKS_RAW_TOKEN").unwrap_or_else(|_| DEFAULT_TOKEN.into());
    let pin = std::env::var("XKS_RAW_PIN").unwrap_or_else(|_| DEFAULT_PIN.into());
    let session = open(&token, &pin);
    let measure = if smoke {
        Duration::from_millis(50)
    } else {
        MEASURE
    };
    let plaintext = [0x42u8; 32];
    let aad = [0u8, 0, 5, 1, 0, 0, 0, 1];
    println!("SoftHSM2 AES-256-GCM, 32-byte plaintext, 8-byte AAD, one thread, token {token}");
    // A token object is what the proxy serves (SoftHSM2 checks its object file for changes on
    // every use); a session object is the module's bare cost.
    for (kind, on_token) in [("token-key", true), ("session-key", false)] {
        let key = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(on_token),
                    Attribute::Private(true),
                    Attribute::ValueLen(32.into()),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                ],
            )
            .expect("an AES-256 key");
        let sealed = encrypt(&session, key, &plaintext, &aad);
        report(&format!("{kind} encrypt"), measure, || {
            black_box(encrypt(&session, key, &plaintext, &aad));
        });
        report(&format!("{kind} decrypt"), measure, || {
            black_box(decrypt(&session, key, &sealed, &aad));
        });
        session.destroy_object(key).expect("C_DestroyObject");
    }
}

/// Times `op` for `measure` after a warm-up and prints ops/s and CPU µs per op.
fn report(name: &str, measure: Duration, mut op: impl FnMut()) {
    for _ in 0..WARM_UP {
        op();
    }
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    let mut count: u64 = 0;
    while start.elapsed() < measure {
        for _ in 0..100 {
            op();
        }
        count += 100;
    }
    let wall = start.elapsed();
    let cpu_ns = thread_cpu_ns() - cpu_start;
    let cpu_us = cpu_ns as f64 / 1_000.0 / count as f64;
    let rate = count as f64 / wall.as_secs_f64();
    println!("RAW {name}: {count} ops, {rate:.0} ops/s, cpu_us_per_op={cpu_us:.2}");
}

/// This thread's CPU time in ns (first field of `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    text.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .expect("schedstat's first field")
}

fn params<'a>(iv: &'a mut [u8; 12], aad: &'a [u8]) -> Mechanism<'a> {
    Mechanism::AesGcm(GcmParams::new(iv, aad, Ulong::from(128)).expect("GCM parameters"))
}

fn encrypt(session: &Session, key: ObjectHandle, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut iv = [7u8; 12];
    let mut out = session
        .encrypt(&params(&mut iv, aad), key, plaintext)
        .expect("C_Encrypt");
    out.extend_from_slice(&iv);
    out
}

fn decrypt(session: &Session, key: ObjectHandle, sealed: &[u8], aad: &[u8]) -> Vec<u8> {
    let (input, iv) = sealed.split_at(sealed.len() - 12);
    let mut iv: [u8; 12] = iv.try_into().expect("12-byte IV");
    session
        .decrypt(&params(&mut iv, aad), key, input)
        .expect("C_Decrypt")
}

/// Opens a logged-in session on the token labelled `label`.
fn open(label: &str, pin: &str) -> Session {
    let pkcs11 = Pkcs11::new(MODULE).expect("load SoftHSM2");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .expect("slots")
        .into_iter()
        .find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim() == label)
        })
        .unwrap_or_else(|| panic!("no token labelled {label}"));
    let session = pkcs11.open_rw_session(slot).expect("C_OpenSession");
    session
        .login(UserType::User, Some(&AuthPin::new(pin.into())))
        .expect("C_Login");
    session
}

/// Makes a token in a temporary directory and runs this bench again with it.
fn rerun_with_own_token() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("tokens directory");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    let init = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", DEFAULT_TOKEN])
        .args(["--so-pin", "5678", "--pin", DEFAULT_PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (apt-get install softhsm2)");
    assert!(init.status.success(), "softhsm2-util --init-token failed");
    let status = Command::new(std::env::current_exe().expect("this bench's path"))
        .args(std::env::args_os().skip(1))
        .env("SOFTHSM2_CONF", &conf)
        .status()
        .expect("run the bench again");
    assert!(status.success(), "the bench failed");
}
