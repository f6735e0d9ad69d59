//! Runs the real `xks-proxy` binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::softhsm;

pub const BIN: &str = env!("CARGO_BIN_EXE_xks-proxy");

/// Runs a one-shot command against the test token.
pub fn run(args: &[&str]) -> Output {
    let token = softhsm::token();
    Command::new(BIN)
        .args(args)
        .env("SOFTHSM2_CONF", &token.conf)
        .output()
        .unwrap()
}

/// A `serve` process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener (metrics, probes, reload).
    pub admin_addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `xks-proxy serve --config <config>` and waits for its startup line.
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// [`Server::start`] with extra environment variables (e.g. the fault module's).
    pub fn start_with_env(config: &Path, env: &[(&str, &Path)]) -> Self {
        let token = softhsm::token();
        // Reaped in `terminate` or `Drop`.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("SOFTHSM2_CONF", &token.conf)
            // After SOFTHSM2_CONF, so a test can point the proxy at tokens of its own.
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = log.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no startup line from xks-proxy serve within 30 s");
            };
            if line.contains("xks-proxy started") {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                let addr = value["listen"].as_str().unwrap().parse().unwrap();
                let admin_addr = value["admin_listen"].as_str().unwrap().parse().unwrap();
                return Self {
                    child,
                    addr,
                    admin_addr,
                    log,
                };
            }
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("xks-proxy did not stop within 10 s of SIGTERM");
    }

    /// Sends SIGHUP (configuration reload).
    pub fn hangup(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits up to 10 s for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within 10 s"),
            }
        }
    }

    /// Every log line printed so far.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
