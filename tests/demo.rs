//! `softhsm/demo.sh`, the README's "run the proxy" command, run twice as a user would: the
//! first run makes the token, keys, certificate and credential and serves; the second reuses
//! them all (it must not try to create the keys again) and serves; the curl command it prints
//! works against it. With `--with-kms-front` the demo also starts the local KMS front: the
//! boto3 snippet it prints works (and reuses store and key on a second run), and the front
//! stops when the proxy does.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::binary::BIN;

/// A demo run: the script's process (it `exec`s the proxy), its stderr lines up to "serving
/// on", and the usage text it printed.
struct Demo {
    child: Child,
    stderr: mpsc::Receiver<String>,
    setup: Vec<String>,
    stdout: String,
}

impl Demo {
    /// Starts the script and waits for its "serving" line.
    fn start(dir: &std::path::Path, listen: &str) -> Self {
        Self::start_with(dir, listen, &[], &[])
    }

    /// [`Demo::start`] with arguments and extra environment variables.
    fn start_with(
        dir: &std::path::Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let mut child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm/demo.sh"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("XKS_DEMO_DIR", dir)
            .env("XKS_DEMO_LISTEN", listen)
            // Any free port: a demo or proxy already running here keeps its 9443.
            .env("XKS_DEMO_ADMIN_LISTEN", "127.0.0.1:0")
            .env("XKS_PROXY_BIN", BIN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Self {
            child,
            stderr: rx,
            setup: Vec::new(),
            stdout: String::new(),
        };
        demo.setup = demo.wait_for("serving on");
        // The usage text goes to stdout before the proxy starts; the proxy's log follows.
        let out = demo.child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the proxy's startup line");
            if line.contains("xks-proxy started") {
                break;
            }
            demo.stdout.push_str(&line);
            demo.stdout.push('\n');
        }
        demo
    }

    /// Waits up to 120 s (the first run makes a token and keys) for a stderr line.
    fn wait_for(&mut self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no {needle:?} from demo.sh; saw {seen:#?}"));
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `curl` command for the Encrypt that the demo printed, run as printed.
fn printed_encrypt(stdout: &str) -> String {
    run_printed(stdout, "curl --aws-sigv4")
}

/// Runs, as printed, the command that starts with `start` and ends at the next blank line.
fn run_printed(stdout: &str, start: &str) -> String {
    let start = stdout
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {stdout}"));
    let command: String = stdout[start..]
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let out = Command::new("bash")
        .args(["-c", &command])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many keys a run created.
fn first_created(demo: &Demo) -> usize {
    demo.setup
        .iter()
        .filter(|l| l.contains("created AES-256 key"))
        .count()
}

#[test]
fn the_demo_serves_and_a_second_run_reuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let first = Demo::start(dir.path(), &listen);
    let sealed = printed_encrypt(&first.stdout);
    assert!(sealed.contains("\"ciphertext\":"), "{sealed}");

    assert_eq!(
        first_created(&first),
        4,
        "the first run makes the four demo keys: {:#?}",
        first.setup
    );
    drop(first);

    let second = Demo::start(dir.path(), &listen);
    // Nothing was created again: the keys, the token and the credential are reused.
    assert_eq!(first_created(&second), 0, "{:#?}", second.setup);
    assert!(
        !second
            .setup
            .iter()
            .any(|l| l.contains("creating SoftHSM2 token")),
        "{:#?}",
        second.setup
    );
    let sealed = printed_encrypt(&second.stdout);
    assert!(
        sealed.contains("\"ciphertextMetadata\":\"AQAAAAE=\""),
        "{sealed}"
    );
}

/// A free loopback address.
fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn the_demo_with_the_kms_front_prints_a_working_boto3_snippet() {
    let python = support::kms_front::python(&["boto3"]);
    let front = support::kms_front::front_binary();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_listen();
    let kms_listen = free_listen();
    let env = [
        ("XKS_DEMO_KMS_LISTEN", kms_listen.clone()),
        ("XKS_KMS_LOCAL_BIN", front.display().to_string()),
        ("XKS_DEMO_PYTHON", python.clone()),
    ];
    let first = Demo::start_with(dir.path(), &listen, &["--with-kms-front"], &env);
    let out = run_printed(&first.stdout, &python);
    let (key, plaintext) = out.trim().split_once(' ').unwrap();
    assert_eq!(plaintext, "Hello World!", "{out}");

    // The front stops with the proxy (here killed, as the first test's drop does).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&kms_listen).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the front still listens on {kms_listen} 5 s after the proxy stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The environment variable works as the flag does; the front's state file kept the store
    // and the key, which the snippet reuses.
    let mut env = env.to_vec();
    env.push(("XKS_DEMO_KMS_FRONT", "1".to_owned()));
    let second = Demo::start_with(dir.path(), &listen, &[], &env);
    let out = run_printed(&second.stdout, &python);
    assert_eq!(out.trim(), format!("{key} Hello World!"));
}
