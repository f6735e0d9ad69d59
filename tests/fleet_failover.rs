//! Fleet failover with the real `xks-proxy serve` binary: two SoftHSM2 tokens behind the
//! fault-injecting module (`softhsm/fault-pkcs11`), one fleet member each. Under concurrent
//! HTTPS + SigV4 load, token `fleet-b` is pulled (`token-removed fleet-b`, the other token
//! untouched): only requests in flight at that moment may fail, the rest are served by `a`,
//! GetHealthStatus reports b UNAVAILABLE and a ACTIVE; once the token is back, b is probed back
//! in (H-11, H-12, H-16). `MEASURE` lines give the errors during failover and the time until b
//! is ACTIVE again (`cargo nextest run --test fleet_failover --no-capture`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::Client;
use support::binary::{BIN, Server};
use support::bodies;
use support::faults::FaultySetup;

const PIN: &str = "failover-user-pin";
const KEY: &str = "failover-key";
const TASKS: usize = 4;
const LOAD: Duration = Duration::from_secs(3);
const FAIL_AFTER: Duration = Duration::from_secs(1);

/// Two tokens, a fleet configuration on the fault module, a key imported into both, and the
/// proxy running on it.
struct Fleet {
    server: Server,
    setup: FaultySetup,
}

impl Fleet {
    fn start() -> Self {
        let setup = FaultySetup::write(
            "failover CA",
            "request_timeout_ms = 2000",
            &format!(
                "[hsm]\nmodule = {{module}}\nuser_pin = \"{PIN}\"\nsessions = 2\n\
                 [[hsm.members]]\nid = \"a\"\ntoken_label = \"fleet-a\"\n\
                 [[hsm.members]]\nid = \"b\"\ntoken_label = \"fleet-b\""
            ),
        );
        let conf = support::isolation::token_dir(setup.dir.path(), &["fleet-a", "fleet-b"], PIN);
        let out = Command::new(BIN)
            .args(["keys", "import", "--config"])
            .arg(&setup.config)
            .args(["--label", KEY])
            .env("SOFTHSM2_CONF", &conf)
            .envs(setup.env())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("into 2 member(s): a, b"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut env = vec![("SOFTHSM2_CONF", conf.as_path())];
        env.extend(setup.env());
        let server = Server::start_with_env(&setup.config, &env);
        Self { server, setup }
    }

    /// Replaces the fault rules atomically; the module sees them within a few milliseconds.
    fn set(&self, rules: &str) {
        self.setup.set(rules);
    }

    fn client(&self) -> Client {
        self.setup.client(&self.server)
    }

    /// GetHealthStatus: the status code and `(id, healthStatus)` of every member.
    async fn health(&self) -> (u16, Vec<(String, String)>) {
        let reply = self
            .client()
            .post("/t/kms/xks/v1/health", &bodies::health())
            .await;
        if reply.status != 200 {
            return (reply.status, Vec::new());
        }
        let members = reply.json()["ekmFleetDetails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["healthStatus"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (200, members)
    }

    /// Polls GetHealthStatus until `done` holds for its answer; returns the answer and how
    /// long it took (at most 15 s).
    async fn health_until(
        &self,
        done: impl Fn(u16, &[(String, String)]) -> bool,
    ) -> ((u16, Vec<(String, String)>), Duration) {
        let start = Instant::now();
        loop {
            let (status, members) = self.health().await;
            if done(status, &members) {
                return ((status, members), start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "health still {status} {members:?} after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn both_active(status: u16, members: &[(String, String)]) -> bool {
    status == 200
        && members
            == [
                ("a".to_owned(), "ACTIVE".to_owned()),
                ("b".to_owned(), "ACTIVE".to_owned()),
            ]
}

/// One encrypt + decrypt round trip; the status of the first call that is not 200.
async fn round_trip(client: &Client) -> Result<(), (u16, String)> {
    let base = format!("/t/kms/xks/v1/keys/{KEY}");
    let enc = client
        .post(
            &format!("{base}/encrypt"),
            &bodies::encrypt(b"failover", None, false),
        )
        .await;
    if enc.status != 200 {
        return Err((enc.status, enc.text()));
    }
    let dec = client
        .post(
            &format!("{base}/decrypt"),
            bodies::decrypt_from(&enc.json(), None)
                .to_string()
                .as_bytes(),
        )
        .await;
    if dec.status != 200 {
        return Err((dec.status, dec.text()));
    }
    Ok(())
}

/// The audit lines among `lines` of a successful Encrypt or Decrypt: their `hsm_member`.
fn served_by(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["target"] == "xks_proxy::audit"
                && line["status"] == 200
                && (line["operation"] == "Encrypt" || line["operation"] == "Decrypt")
        })
        .map(|line| line["hsm_member"].as_str().unwrap_or("<none>").to_owned())
        .collect()
}

/// H-11, H-12, H-16: member b's token is pulled under load; only requests in flight at that
/// moment may fail (the fleet retries them on a), health reports b UNAVAILABLE while a keeps
/// serving, and b is probed back in once its token returns. The audit line names the member
/// that served each request.
///
/// `cargo nextest run --test fleet_failover --no-capture` prints the MEASURE lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_11_h_12_h_16_pulled_token_fails_over_to_the_other_member_and_comes_back() {
    let fleet = Fleet::start();
    let ((_, members), _) = fleet.health_until(both_active).await;
    assert_eq!(members.len(), 2);

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..TASKS)
        .map(|_| {
            let (client, stop) = (fleet.client(), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0_usize, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match round_trip(&client).await {
                        Ok(()) => ok += 1,
                        Err(error) => errors.push(error),
                    }
                }
                (ok, errors)
            })
        })
        .collect();

    tokio::time::sleep(FAIL_AFTER).await;
    let before = fleet.server.drain_log();
    let pulled = Instant::now();
    fleet.set("token-removed fleet-b\n");

    // During the outage: health answers 200 with b out and a ACTIVE.
    let ((status, members), noticed) = fleet
        .health_until(|status, members| {
            status == 200 && members.len() == 2 && members[1].1 != "ACTIVE"
        })
        .await;
    assert_eq!(status, 200);
    assert_eq!(members[0], ("a".to_owned(), "ACTIVE".to_owned()));
    assert!(
        ["UNAVAILABLE", "DEGRADED"].contains(&members[1].1.as_str()),
        "{members:?}"
    );
    eprintln!(
        "MEASURE token-removed fleet-b -> health shows b {}: {noticed:?}",
        members[1].1
    );

    tokio::time::sleep(LOAD.saturating_sub(FAIL_AFTER + pulled.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors) = (0, Vec::new());
    for task in load {
        let (served, failed) = task.await.unwrap();
        ok += served;
        errors.extend(failed);
    }
    std::thread::sleep(Duration::from_millis(100));
    let during = fleet.server.drain_log();
    let outage = pulled.elapsed();
    eprintln!(
        "MEASURE failover under {TASKS} concurrent clients: {ok} round trips ok, {} failed \
         (errors: {errors:?})",
        errors.len()
    );
    assert!(
        errors.len() <= TASKS,
        "more failures than requests in flight at the moment of failure: {errors:?}"
    );
    assert!(
        ok >= 10,
        "too little load to judge failover: {ok} round trips"
    );

    // The audit log names the member that served each request: both before the failure,
    // only a after it (but for requests already on b when its token went).
    let before = served_by(&before);
    assert!(
        before.contains(&"a".to_owned()) && before.contains(&"b".to_owned()),
        "{before:?}"
    );
    let during = served_by(&during);
    let on_b = during.iter().filter(|m| *m == "b").count();
    let on_a = during.iter().filter(|m| *m == "a").count();
    eprintln!("MEASURE audit hsm_member after the pull ({outage:?}): a {on_a}, b {on_b}");
    assert!(
        on_b <= TASKS * 2,
        "b served {on_b} requests after its token was pulled"
    );
    assert!(on_a >= 10, "a served only {on_a}: {during:?}");

    // The token returns: b is probed back in.
    fleet.set("");
    let (_, back) = fleet.health_until(both_active).await;
    eprintln!("MEASURE token back -> b ACTIVE again after {back:?}");
    let client = fleet.client();
    for _ in 0..8 {
        round_trip(&client).await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = served_by(&fleet.server.drain_log());
    eprintln!("MEASURE served after recovery: {after:?}");
}
