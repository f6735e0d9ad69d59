//! The fault module against a real SoftHSM2 token: pass-through, latency, `fail` (once, every
//! N, always), `hang`, `token-removed`, and the control file's life cycle.
//!
//! Each test runs in its own process with its own token and control file (`support`).
//! Timing assertions are lower bounds only.

// Panics are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, ObjectClass};
use support::{aes_key, decrypt, encrypt, fixture, rv, session, set_faults};

const PLAINTEXT: &[u8] = b"forty-two bytes of perfectly ordinary data";

fault_test! {
    /// An empty control file: a pure pass-through.
    fn pass_through_round_trip() {
        let session = session().unwrap();
        let key = aes_key(&session);
        let sealed = encrypt(&session, key, PLAINTEXT).unwrap();
        assert_eq!(sealed.len(), PLAINTEXT.len() + 16);
        assert_eq!(decrypt(&session, key, &sealed).unwrap(), PLAINTEXT);
        let info = fixture().pkcs11.get_token_info(fixture().slot).unwrap();
        assert_eq!(info.label().trim(), support::TOKEN_LABEL);
        let mut random = [0u8; 32];
        session.generate_random_slice(&mut random).unwrap();
        assert_ne!(random, [0u8; 32]);
        let secret_keys = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap();
        assert_eq!(secret_keys, [key]);
    }
}

fault_test! {
    /// `latency C_Encrypt 20ms` delays every C_Encrypt (cryptoki calls it twice: length,
    /// then data) and nothing else.
    fn latency_delays_the_named_function() {
        let session = session().unwrap();
        let key = aes_key(&session);
        set_faults("latency C_Encrypt 20ms\n");
        let start = Instant::now();
        let sealed = encrypt(&session, key, PLAINTEXT).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(40), "{:?}", start.elapsed());
        assert_eq!(decrypt(&session, key, &sealed).unwrap(), PLAINTEXT);

        set_faults("latency * 1ms..3ms # every call\n");
        let start = Instant::now();
        session.generate_random_vec(16).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(1));
    }
}

fault_test! {
    /// `once` fails exactly the next call, then passes; rewriting the file re-arms it. The
    /// session stays usable: the module ends the real operation the failed call abandoned.
    fn fail_once_fails_exactly_one_call() {
        let session = session().unwrap();
        let key = aes_key(&session);
        set_faults("fail C_Encrypt CKR_SESSION_HANDLE_INVALID once\n");
        assert_eq!(rv(encrypt(&session, key, PLAINTEXT)), RvError::SessionHandleInvalid);
        for _ in 0..3 {
            let sealed = encrypt(&session, key, PLAINTEXT).unwrap();
            assert_eq!(decrypt(&session, key, &sealed).unwrap(), PLAINTEXT);
        }
        set_faults("fail C_Encrypt CKR_SESSION_HANDLE_INVALID once\n");
        assert_eq!(rv(encrypt(&session, key, PLAINTEXT)), RvError::SessionHandleInvalid);
        encrypt(&session, key, PLAINTEXT).unwrap();
    }
}

fault_test! {
    /// `every 3` fails the 3rd, 6th and 9th call.
    fn fail_every_third_call() {
        let session = session().unwrap();
        aes_key(&session);
        set_faults("fail C_FindObjectsInit CKR_GENERAL_ERROR every 3\n");
        let failed: Vec<usize> = (1..=9)
            .filter(|_| {
                session
                    .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                    .map_err(|err| assert_eq!(rv::<()>(Err(err)), RvError::GeneralError))
                    .is_err()
            })
            .collect();
        assert_eq!(failed, [3, 6, 9]);
    }
}

fault_test! {
    /// `always` fails every call of that function until the line is removed.
    fn fail_always_until_removed() {
        let session = session().unwrap();
        let key = aes_key(&session);
        let sealed = encrypt(&session, key, PLAINTEXT).unwrap();
        set_faults("fail C_Decrypt CKR_DEVICE_ERROR always\n");
        for _ in 0..5 {
            assert_eq!(rv(decrypt(&session, key, &sealed)), RvError::DeviceError);
        }
        encrypt(&session, key, PLAINTEXT).unwrap();
        set_faults("# nothing\n");
        assert_eq!(decrypt(&session, key, &sealed).unwrap(), PLAINTEXT);
    }
}

fault_test! {
    /// Counters are shared by all threads: 4 threads × 25 calls under `every 10` see exactly
    /// 10 failures.
    fn counters_are_per_process_and_thread_safe() {
        set_faults("fail C_GenerateRandom CKR_DEVICE_MEMORY every 10\n");
        let workers: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(|| {
                    let session = session().unwrap();
                    (0..25)
                        .filter(|_| session.generate_random_vec(8).is_err())
                        .count()
                })
            })
            .collect();
        let failures: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(failures, 10);
    }
}

fault_test! {
    /// `hang` blocks the call until the line is removed, then the call completes normally.
    fn hang_blocks_until_the_line_is_removed() {
        let setup = session().unwrap();
        let key = aes_key(&setup);
        let hung = session().unwrap();
        set_faults("hang C_Encrypt\n");
        let (started, calling) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            let _ = started.send(());
            let _ = done.send(encrypt(&hung, key, PLAINTEXT).map(|sealed| sealed.len()));
        });
        calling.recv().unwrap();
        thread::sleep(Duration::from_millis(100));
        assert!(finished.try_recv().is_err(), "C_Encrypt returned while hung");
        // Other functions go on meanwhile.
        setup.generate_random_vec(8).unwrap();
        set_faults("");
        let result = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("C_Encrypt still hangs after the line was removed");
        assert_eq!(result.unwrap(), PLAINTEXT.len() + 16);
    }
}

fault_test! {
    /// `token-removed` answers as a module whose token was pulled; removing the line brings
    /// the token back for new sessions.
    fn token_removed_and_reinserted() {
        let fx = fixture();
        let old = session().unwrap();
        let key = aes_key(&old);
        set_faults("token-removed\n");

        assert_eq!(rv(fx.pkcs11.get_token_info(fx.slot)), RvError::TokenNotPresent);
        assert_eq!(support::find_token(&fx.pkcs11), None);
        assert!(fx.pkcs11.get_all_slots().unwrap().contains(&fx.slot));
        assert!(!fx.pkcs11.get_slot_info(fx.slot).unwrap().token_present());
        assert_eq!(rv(fx.pkcs11.open_rw_session(fx.slot)), RvError::TokenNotPresent);
        assert_eq!(rv(encrypt(&old, key, PLAINTEXT)), RvError::DeviceRemoved);
        assert_eq!(rv(old.generate_random_vec(8)), RvError::DeviceRemoved);
        drop(old); // C_CloseSession goes through.

        set_faults("");
        assert_eq!(support::find_token(&fx.pkcs11), Some(fx.slot));
        assert!(fx.pkcs11.get_slot_info(fx.slot).unwrap().token_present());
        let new = session().unwrap();
        let key = aes_key(&new);
        let sealed = encrypt(&new, key, PLAINTEXT).unwrap();
        assert_eq!(decrypt(&new, key, &sealed).unwrap(), PLAINTEXT);
    }
}

fault_test! {
    /// `token-removed <label>` pulls only that token: its slot leaves the present list, its
    /// sessions get CKR_DEVICE_REMOVED; the other token in the same module works throughout.
    fn token_removed_by_label_spares_the_other_token() {
        let fx = fixture();
        let other = support::find_labelled(&fx.pkcs11, support::OTHER_LABEL).unwrap();
        let (a, b) = (session().unwrap(), support::session_on(other).unwrap());
        let (key_a, key_b) = (aes_key(&a), aes_key(&b));
        set_faults(&format!("token-removed {}\n", support::OTHER_LABEL));

        let present = fx.pkcs11.get_slots_with_token().unwrap();
        assert!(present.contains(&fx.slot) && !present.contains(&other), "{present:?}");
        assert!(fx.pkcs11.get_all_slots().unwrap().contains(&other));
        assert!(!fx.pkcs11.get_slot_info(other).unwrap().token_present());
        assert!(fx.pkcs11.get_slot_info(fx.slot).unwrap().token_present());
        assert_eq!(rv(fx.pkcs11.get_token_info(other)), RvError::TokenNotPresent);
        assert_eq!(rv(fx.pkcs11.open_rw_session(other)), RvError::TokenNotPresent);
        assert_eq!(rv(encrypt(&b, key_b, PLAINTEXT)), RvError::DeviceRemoved);
        let sealed = encrypt(&a, key_a, PLAINTEXT).unwrap();
        assert_eq!(decrypt(&a, key_a, &sealed).unwrap(), PLAINTEXT);
        let fresh = session().unwrap();
        fresh.generate_random_vec(8).unwrap();

        // A label no token has removes nothing.
        set_faults("token-removed no-such-token\n");
        assert_eq!(fx.pkcs11.get_slots_with_token().unwrap().len(), present.len() + 1);

        set_faults("");
        assert_eq!(support::find_labelled(&fx.pkcs11, support::OTHER_LABEL), Some(other));
        let sealed = encrypt(&b, key_b, PLAINTEXT).unwrap();
        assert_eq!(decrypt(&b, key_b, &sealed).unwrap(), PLAINTEXT);
    }
}

fault_test! {
    /// `fail`, `hang` and `latency` with `token=<label>` apply, and count, only calls on
    /// sessions of that token.
    fn qualified_fail_hang_and_latency_hit_only_their_token() {
        let fx = fixture();
        let other = support::find_labelled(&fx.pkcs11, support::OTHER_LABEL).unwrap();
        let (a, b) = (session().unwrap(), support::session_on(other).unwrap());
        let (key_a, key_b) = (aes_key(&a), aes_key(&b));

        set_faults(&format!(
            "fail C_Encrypt CKR_DEVICE_ERROR always token={}\n",
            support::OTHER_LABEL
        ));
        for _ in 0..3 {
            encrypt(&a, key_a, PLAINTEXT).unwrap();
            assert_eq!(rv(encrypt(&b, key_b, PLAINTEXT)), RvError::DeviceError);
        }

        // `every 2` counts only the test token's calls: its 2nd and 4th fail, b's never.
        set_faults(&format!(
            "fail C_GenerateRandom CKR_DEVICE_MEMORY every 2 token={}\n",
            support::TOKEN_LABEL
        ));
        let mut failed = Vec::new();
        for n in 1..=4 {
            b.generate_random_vec(8).unwrap();
            if a.generate_random_vec(8).is_err() {
                failed.push(n);
            }
        }
        assert_eq!(failed, [2, 4]);

        set_faults(&format!("hang C_Encrypt token={}\n", support::OTHER_LABEL));
        let (done, finished) = mpsc::channel();
        let hung = thread::spawn(move || {
            let _ = done.send(encrypt(&b, key_b, PLAINTEXT).map(|sealed| sealed.len()));
            b
        });
        thread::sleep(Duration::from_millis(100));
        assert!(finished.try_recv().is_err(), "C_Encrypt on the other token returned");
        encrypt(&a, key_a, PLAINTEXT).unwrap();
        set_faults("");
        let result = finished.recv_timeout(Duration::from_secs(10)).expect("still hangs");
        assert_eq!(result.unwrap(), PLAINTEXT.len() + 16);
        let b = hung.join().unwrap();

        set_faults(&format!("latency C_Encrypt 50ms token={}\n", support::OTHER_LABEL));
        let start = Instant::now();
        encrypt(&b, key_b, PLAINTEXT).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100), "{:?}", start.elapsed());
        // Sessions opened while rules are active are tracked too.
        let late = support::session_on(other).unwrap();
        let start = Instant::now();
        late.generate_random_vec(8).unwrap();
        encrypt(&late, aes_key(&late), PLAINTEXT).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}

fault_test! {
    /// Only a rule naming C_GetFunctionList applies to it; then the module does not load.
    fn c_get_function_list_fails_only_when_named() {
        set_faults("fail * CKR_DEVICE_ERROR always\nlatency * 1ms\n");
        let pkcs11 = Pkcs11::new(support::module_path()).expect("`*` spares C_GetFunctionList");
        drop(pkcs11);
        set_faults("fail C_GetFunctionList CKR_HOST_MEMORY\n");
        let err = Pkcs11::new(support::module_path()).expect_err("C_GetFunctionList fails");
        assert!(
            matches!(err, Error::Pkcs11(RvError::HostMemory, _)),
            "{err}"
        );
    }
}

/// Bad lines are skipped with one message each, however often the file is read.
#[test]
fn bad_lines_are_reported_once_and_skipped() {
    let stderr = support::isolated("bad_lines_are_reported_once_and_skipped", || {
        set_faults("explode C_Encrypt\nfail C_GenerateRandom CKR_DEVICE_ERROR\n");
        let session = session().unwrap();
        for _ in 0..20 {
            assert_eq!(rv(session.generate_random_vec(8)), RvError::DeviceError);
            thread::sleep(Duration::from_millis(1));
        }
        // A new version with the same bad line: still reported only once.
        set_faults("explode C_Encrypt\n");
        session.generate_random_vec(8).unwrap();
    });
    if let Some(stderr) = stderr {
        assert_eq!(
            stderr.matches("unknown rule \"explode\"").count(),
            1,
            "{stderr}"
        );
    }
}
