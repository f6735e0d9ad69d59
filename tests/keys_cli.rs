//! `xks-proxy keys create|import|rotate|list` on real SoftHSM2 tokens, with configuration files
//! that hold only `[hsm]` (and `[[keys]]`): key versions (`K`, `K#v<n>` with `CKA_ID = K`),
//! fleets of two tokens, and the consistency report of `keys list`.
//!
//! Every test makes its own SoftHSM2 directory (one or two tokens) and runs the binary on it,
//! so tests never share a token. Checks that need PKCS#11 itself (attributes, crypto across
//! tokens) run in a child process of the test binary ([`run_checks_in_child`]): a PKCS#11
//! module reads `SOFTHSM2_CONF` once per process, and only a child can be given it.

// Panics are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use support::binary::BIN;
use support::isolation;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "keys-cli-pin";
const HEALTH_KEY: &str = "keys-cli-health";

/// A SoftHSM2 directory with the given tokens, and configuration files naming them.
struct Tokens {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Tokens {
    fn new(labels: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = isolation::token_dir(dir.path(), labels, PIN);
        Self { dir, conf }
    }

    /// A configuration of only `[hsm]` on `token`, plus `extra` (e.g. `[[keys]]`).
    fn single(&self, token: &str, extra: &str) -> PathBuf {
        self.write(
            &format!("{token}.toml"),
            &format!(
                "[hsm]\nmodule = {MODULE:?}\ntoken_label = {token:?}\nuser_pin = {PIN:?}\n\
                 health_key_label = {HEALTH_KEY:?}\nsessions = 1\n{extra}"
            ),
        )
    }

    /// A configuration of only `[hsm]`: a fleet of members `a` and `b` on tokens `tok-a` and
    /// `tok-b`, plus `extra`.
    fn fleet(&self, extra: &str) -> PathBuf {
        self.write(
            "fleet.toml",
            &format!(
                "[hsm]\nmodule = {MODULE:?}\nuser_pin = {PIN:?}\n\
                 health_key_label = {HEALTH_KEY:?}\nsessions = 1\n\
                 [[hsm.members]]\nid = \"a\"\ntoken_label = \"tok-a\"\n\
                 [[hsm.members]]\nid = \"b\"\ntoken_label = \"tok-b\"\n{extra}"
            ),
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `xks-proxy keys <args> --config <config>` on these tokens.
    fn keys(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("keys")
            .args(args)
            .arg("--config")
            .arg(config)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap()
    }

    /// [`Tokens::keys`], asserting success; returns stdout.
    fn keys_ok(&self, config: &Path, args: &[&str]) -> String {
        let out = self.keys(config, args);
        assert!(out.status.success(), "keys {args:?}: {}", stderr(&out));
        stdout(&out)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One row of `keys list`: MEMBER KEY VERSION LABEL SPEC USAGES STATUS (NOTE dropped).
fn rows(list: &str) -> Vec<[String; 7]> {
    let mut lines = list.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "MEMBER", "KEY", "VERSION", "LABEL", "SPEC", "USAGES", "STATUS", "NOTE"
        ]
    );
    lines
        .map(|line| {
            let cells: Vec<_> = line.split_whitespace().map(str::to_owned).collect();
            std::array::from_fn(|i| cells[i].clone())
        })
        .collect()
}

/// `(member, version, status)` of every row of key `id`, in table order.
fn versions_of(list: &str, id: &str) -> Vec<(String, String, String)> {
    rows(list)
        .into_iter()
        .filter(|row| row[1] == id)
        .map(|[member, _, version, _, _, _, status]| (member, version, status))
        .collect()
}

fn row(member: &str, version: &str, status: &str) -> (String, String, String) {
    (member.to_owned(), version.to_owned(), status.to_owned())
}

/// Runs `test` again in a child process of this test binary with `SOFTHSM2_CONF` pointing at
/// `tokens`, where it makes its in-process PKCS#11 checks.
fn run_checks_in_child(test: &str, tokens: &Tokens) {
    isolation::run_child(test, [("SOFTHSM2_CONF", tokens.conf.as_os_str())]);
}

/// A logged-in session on the token labelled `token` (in a child process).
fn session(pkcs11: &Pkcs11, token: &str) -> Session {
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim() == token)
        })
        .unwrap_or_else(|| panic!("no token {token}"));
    let session = pkcs11.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&SecretString::from(PIN))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(err) => panic!("C_Login: {err}"),
    }
    session
}

fn module() -> Pkcs11 {
    let pkcs11 = Pkcs11::new(MODULE).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    pkcs11
}

/// The one object labelled `label`.
fn object(session: &Session, label: &str) -> ObjectHandle {
    let found = session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1, "objects labelled {label}");
    found[0]
}

/// `keys create`, `keys import`, `keys rotate` and `keys list` with a configuration file that
/// has only `[hsm]`: a new user makes keys before writing any key store.
#[test]
fn keys_commands_need_only_the_hsm_section() {
    let tokens = Tokens::new(&["solo"]);
    let config = tokens.single("solo", "");
    let created = tokens.keys_ok(&config, &["create", "--label", "made"]);
    assert!(created.contains("created AES-256 key made"), "{created}");
    let imported = tokens.keys_ok(&config, &["import", "--label", "brought"]);
    assert!(imported.contains("into 1 member(s)"), "{imported}");
    tokens.keys_ok(&config, &["rotate", "--label", "made"]);
    let list = tokens.keys_ok(&config, &["list"]);
    let made: Vec<_> = versions_of(&list, "made")
        .into_iter()
        .map(|(_, version, status)| (version, status))
        .collect();
    assert_eq!(
        made,
        [
            ("1".to_owned(), "enabled".to_owned()),
            ("2".to_owned(), "encrypts".to_owned())
        ]
    );
    assert_eq!(versions_of(&list, "brought").len(), 1, "{list}");
    let health = rows(&list)
        .into_iter()
        .find(|r| r[3] == HEALTH_KEY)
        .unwrap();
    assert_eq!(health[6], "health-check");
}

/// `keys rotate` on one token makes `K#v2`, then `K#v3`: `CKA_ID = K`, the usages of the
/// newest version (unless `--usage` says otherwise), and the protection of `keys create`.
#[test]
fn rotate_on_one_token_creates_v2_then_v3_locked_like_create() {
    const TEST: &str = "rotate_on_one_token_creates_v2_then_v3_locked_like_create";
    if isolation::is_child(TEST) {
        check_rotated_attributes();
        return;
    }
    let tokens = Tokens::new(&["solo"]);
    {
        let config = tokens.single("solo", "");
        tokens.keys_ok(
            &config,
            &["create", "--label", "K", "--usage", "encrypt,sign"],
        );
        let v2 = tokens.keys_ok(&config, &["rotate", "--label", "K"]);
        assert!(
            v2.contains("created version 2 of key K: label K#v2, CKA_ID K")
                && v2.contains("usages [ENCRYPT,SIGN]")
                && v2.contains("systemctl reload xks-proxy"),
            "{v2}"
        );
        let v3 = tokens.keys_ok(&config, &["rotate", "--label", "K"]);
        assert!(
            v3.contains("created version 3 of key K: label K#v3"),
            "{v3}"
        );
        let v4 = tokens.keys_ok(&config, &["rotate", "--label", "K", "--usage", "decrypt"]);
        assert!(
            v4.contains("label K#v4") && v4.contains("[DECRYPT]"),
            "{v4}"
        );
        let list = tokens.keys_ok(&config, &["list"]);
        let statuses: Vec<_> = versions_of(&list, "K")
            .into_iter()
            .map(|(_, version, status)| format!("{version}:{status}"))
            .collect();
        assert_eq!(
            statuses,
            ["1:enabled", "2:enabled", "3:enabled", "4:encrypts"]
        );
    }
    run_checks_in_child(TEST, &tokens);
}

/// The child half of `rotate_on_one_token_creates_v2_then_v3_locked_like_create`.
fn check_rotated_attributes() {
    let pkcs11 = module();
    let session = session(&pkcs11, "solo");
    let wanted = [
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Token,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Modifiable,
        AttributeType::Copyable,
        AttributeType::Id,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Sign,
    ];
    for (label, usages) in [
        ("K", [true, false, true]),
        ("K#v2", [true, false, true]),
        ("K#v3", [true, false, true]),
        ("K#v4", [false, true, false]),
    ] {
        let attributes = session
            .get_attributes(object(&session, label), &wanted)
            .unwrap();
        let expected = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
            Attribute::Id(b"K".to_vec()),
            Attribute::Encrypt(usages[0]),
            Attribute::Decrypt(usages[1]),
            Attribute::Sign(usages[2]),
        ];
        assert_eq!(attributes, expected, "{label}");
    }
}

/// Rotating a key no member holds fails with a clear message and creates nothing.
#[test]
fn rotate_of_an_unknown_key_fails_and_creates_nothing() {
    let tokens = Tokens::new(&["solo"]);
    let config = tokens.single("solo", "");
    tokens.keys_ok(&config, &["create", "--label", "known"]);
    let before = tokens.keys_ok(&config, &["list"]);
    let out = tokens.keys(&config, &["rotate", "--label", "unknown"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("key unknown does not exist on any member") && err.contains("nothing created"),
        "{err}"
    );
    assert_eq!(tokens.keys_ok(&config, &["list"]), before);
    let bad = tokens.keys(&config, &["rotate", "--label", "no/slash"]);
    assert!(!bad.status.success() && stderr(&bad).contains("--label"));
}

/// In a fleet, `keys create` and `keys rotate` put the same key material into both tokens:
/// what member `a` encrypts under `K#v2`, member `b` decrypts under `K#v2` (and not under
/// version 1), and `keys list` shows every version on both members, consistent.
#[test]
fn fleet_create_and_rotate_put_the_same_version_in_every_member() {
    const TEST: &str = "fleet_create_and_rotate_put_the_same_version_in_every_member";
    if isolation::is_child(TEST) {
        check_same_material();
        return;
    }
    let tokens = Tokens::new(&["tok-a", "tok-b"]);
    {
        let config = tokens.fleet("");
        let created = tokens.keys_ok(&config, &["create", "--label", "K"]);
        assert!(
            created.contains("in 2 member(s): a, b") && created.contains("imported into every"),
            "{created}"
        );
        let rotated = tokens.keys_ok(&config, &["rotate", "--label", "K"]);
        assert!(
            rotated.contains("label K#v2") && rotated.contains("on 2 member(s): a, b"),
            "{rotated}"
        );
        let out = tokens.keys(&config, &["list"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            versions_of(&stdout(&out), "K"),
            [
                row("a", "1", "enabled"),
                row("a", "2", "encrypts"),
                row("b", "1", "enabled"),
                row("b", "2", "encrypts"),
            ]
        );
        let err = stderr(&out);
        assert!(
            err.contains("fleet consistency") && !err.contains("MISSING"),
            "{err}"
        );
    }
    run_checks_in_child(TEST, &tokens);
}

/// The child half of `fleet_create_and_rotate_put_the_same_version_in_every_member`.
fn check_same_material() {
    let pkcs11 = module();
    let (a, b) = (session(&pkcs11, "tok-a"), session(&pkcs11, "tok-b"));
    let gcm = |session: &Session, label: &str, encrypt: bool, data: &[u8]| {
        let mut iv = [7u8; 12];
        let params = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
        let key = object(session, label);
        if encrypt {
            session.encrypt(&Mechanism::AesGcm(params), key, data)
        } else {
            session.decrypt(&Mechanism::AesGcm(params), key, data)
        }
    };
    let sealed = gcm(&a, "K#v2", true, b"same material").unwrap();
    assert_eq!(gcm(&b, "K#v2", false, &sealed).unwrap(), b"same material");
    assert!(gcm(&b, "K", false, &sealed).is_err(), "v1 is another key");
    let sealed_v1 = gcm(&b, "K", true, b"version one").unwrap();
    assert_eq!(gcm(&a, "K", false, &sealed_v1).unwrap(), b"version one");
}

/// A version made on one member only (`keys rotate` with a configuration naming one token)
/// is reported MISSING on the other by `keys list` on the fleet, on stderr, with exit status
/// 0; the next fleet rotation numbers after the highest version any member holds.
#[test]
fn fleet_list_reports_a_version_missing_on_one_member() {
    let tokens = Tokens::new(&["tok-a", "tok-b"]);
    let fleet = tokens.fleet("");
    tokens.keys_ok(&fleet, &["create", "--label", "K"]);
    let only_a = tokens.single("tok-a", "");
    tokens.keys_ok(&only_a, &["rotate", "--label", "K"]);

    let out = tokens.keys(&fleet, &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        versions_of(&stdout(&out), "K"),
        [
            row("a", "1", "enabled"),
            row("a", "2", "encrypts"),
            row("b", "1", "encrypts"),
        ]
    );
    let err = stderr(&out);
    assert!(err.contains("key K: MISSING on member b: v2"), "{err}");

    let rotated = tokens.keys(&fleet, &["rotate", "--label", "K"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert!(
        stdout(&rotated).contains("label K#v3"),
        "{}",
        stdout(&rotated)
    );
    assert!(
        stderr(&rotated).contains("MISSING on member b: v2"),
        "rotate warns about the gap: {}",
        stderr(&rotated)
    );
    let list = tokens.keys_ok(&fleet, &["list"]);
    let on_b: Vec<_> = versions_of(&list, "K")
        .into_iter()
        .filter(|(member, _, _)| member == "b")
        .map(|(_, version, _)| version)
        .collect();
    assert_eq!(on_b, ["1", "3"]);
}

/// A member already holding the next version's label (here an object `K#v2` whose `CKA_ID`
/// is not `K`, so the version search misses it) makes `keys rotate` refuse, naming the
/// member, before anything is created anywhere; `keys list` marks that object UNFINDABLE.
#[test]
fn rotate_refuses_when_a_member_holds_the_next_label() {
    let tokens = Tokens::new(&["tok-a", "tok-b"]);
    let fleet = tokens.fleet("");
    tokens.keys_ok(&fleet, &["create", "--label", "K"]);
    isolation::run_ok(
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &tokens.conf)
            .args(["--module", MODULE, "--token-label", "tok-b", "--login"])
            .args(["--pin", PIN, "--keygen", "--key-type", "AES:32"])
            .args([
                "--label",
                "K#v2",
                "--id",
                "0102",
                "--private",
                "--sensitive",
            ])
            .arg("--usage-decrypt"),
        "pkcs11-tool (opensc)",
    );
    let out = tokens.keys(&fleet, &["rotate", "--label", "K"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("member b already has a key labelled K#v2; nothing created"),
        "{err}"
    );
    let list = tokens.keys_ok(&fleet, &["list"]);
    assert_eq!(
        versions_of(&list, "K"),
        [
            row("a", "1", "encrypts"),
            row("b", "1", "encrypts"),
            row("b", "2", "UNFINDABLE"),
        ]
    );
}

/// `keys list` reads the `[[keys]]` kill switch: a disabled version never encrypts (the newest
/// enabled one does), and a disabled key shows DISABLED on every version.
#[test]
fn keys_list_shows_the_kill_switch() {
    let tokens = Tokens::new(&["solo"]);
    let plain = tokens.single("solo", "");
    for key in ["on", "off"] {
        tokens.keys_ok(&plain, &["create", "--label", key]);
        tokens.keys_ok(&plain, &["rotate", "--label", key]);
        tokens.keys_ok(&plain, &["rotate", "--label", key]);
    }
    let switched = tokens.single(
        "solo",
        "[[keys]]\nid = \"on\"\ndisabled_versions = [3]\n[[keys]]\nid = \"off\"\nenabled = false\n",
    );
    let list = tokens.keys_ok(&switched, &["list"]);
    let statuses = |id: &str| -> Vec<String> {
        versions_of(&list, id)
            .into_iter()
            .map(|(_, version, status)| format!("{version}:{status}"))
            .collect()
    };
    assert_eq!(
        statuses("on"),
        ["1:enabled", "2:encrypts", "3:version-disabled"]
    );
    assert_eq!(statuses("off"), ["1:DISABLED", "2:DISABLED", "3:DISABLED"]);

    let broken = tokens.single("solo", "[[keys]]\nid = \"on\"\ndisabled_versions = [0]\n");
    let out = tokens.keys(&broken, &["list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("keys[0].disabled_versions[0]"),
        "{}",
        stderr(&out)
    );
}
