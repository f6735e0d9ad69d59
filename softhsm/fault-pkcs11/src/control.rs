//! The control file: where it is, when it is re-read, and the per-version rule state.
//!
//! Every call takes the current version of the rules. At most once per [`RELOAD_INTERVAL`]
//! (per process) a call also `stat`s the file and compares its identity (device, inode, size,
//! modification and change times) with the loaded version's; a different identity is a new
//! version, read and parsed afresh, with fresh `once`/`every N` counters. Replacing the file
//! atomically (write a temporary file, then rename it over the control file, as [`install`]
//! does) therefore always makes a new version, even with identical text; an in-place rewrite
//! with the same size within one file-system timestamp tick might go unnoticed.
//! A missing file is an empty rule set (no faults).

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use cryptoki_sys::CK_RV;

use crate::rules::{Rule, RuleSet, token_matches};
use crate::{Function, warn_once};

/// How often, at most, a call re-checks the control file. A change is seen by every call that
/// starts at least this long after the file was replaced.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(5);

/// How often a hanging call re-reads the control file to see whether it may go on.
pub const HANG_POLL: Duration = Duration::from_millis(10);

/// Replaces the control file at `path` with `text` atomically (temporary file + rename), then
/// waits until the module is sure to see the new version ([`RELOAD_INTERVAL`] plus a margin).
///
/// For tests that drive the module from the same or another process.
pub fn install(path: &Path, text: &str) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    fs::write(&temporary, text)?;
    fs::rename(&temporary, path)?;
    std::thread::sleep(RELOAD_INTERVAL + Duration::from_millis(2));
    Ok(())
}

/// The control file of this process and its current version.
pub(crate) struct Control {
    path: PathBuf,
    origin: Instant,
    /// When (nanoseconds after `origin`) the next call re-checks the file.
    next_check: AtomicU64,
    current: RwLock<Arc<Version>>,
    /// The identity of the file behind `current`; also serialises reloads.
    loaded: Mutex<Option<Identity>>,
}

impl Control {
    /// Watches `path`, loading it now.
    pub(crate) fn new(path: PathBuf) -> Self {
        let control = Self {
            path,
            origin: Instant::now(),
            next_check: AtomicU64::new(0),
            current: RwLock::new(Arc::new(Version::new(RuleSet::default()))),
            loaded: Mutex::new(None),
        };
        control.load(&mut None);
        control
    }

    /// The current version, after re-checking the file if [`RELOAD_INTERVAL`] has passed.
    pub(crate) fn current(&self) -> Arc<Version> {
        let now = nanos(self.origin.elapsed());
        let due = self.next_check.load(Ordering::Relaxed);
        let claimed = now >= due
            && self
                .next_check
                .compare_exchange(
                    due,
                    now.saturating_add(nanos(RELOAD_INTERVAL)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if claimed {
            self.refresh();
        }
        self.snapshot()
    }

    /// The current version after re-checking the file now.
    pub(crate) fn reload_now(&self) -> Arc<Version> {
        self.refresh();
        self.snapshot()
    }

    fn snapshot(&self) -> Arc<Version> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn refresh(&self) {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let unchanged = match fs::metadata(&self.path) {
            Ok(metadata) => *loaded == Some(Identity::of(&metadata)),
            Err(_) => loaded.is_none(),
        };
        if !unchanged {
            self.load(&mut loaded);
        }
    }

    /// Reads and parses the file, making it the current version. The identity is taken from
    /// the opened file, so it always describes the text that was read.
    fn load(&self, loaded: &mut Option<Identity>) {
        let path = self.path.display();
        let (identity, text) = match read(&self.path) {
            Ok((identity, text)) => (Some(identity), text),
            Err(err) => {
                warn_once(format!(
                    "control file {path}: {err}; no faults until it can be read"
                ));
                (None, String::new())
            }
        };
        let rules = RuleSet::parse(&text);
        for error in &rules.errors {
            warn_once(format!("control file {path}: {error}"));
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Version::new(rules));
        *loaded = identity;
    }
}

fn read(path: &Path) -> io::Result<(Identity, String)> {
    let mut file = File::open(path)?;
    let identity = Identity::of(&file.metadata()?);
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((identity, text))
}

/// What tells two versions of the control file apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Identity {
    fn of(metadata: &Metadata) -> Self {
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// One version of the control file: its rules and their call counters.
pub(crate) struct Version {
    rules: RuleSet,
    /// Calls matched so far, one counter per rule (only `fail` rules use theirs).
    counters: Box<[AtomicU64]>,
    token_removed: bool,
    has_token_rules: bool,
}

impl Version {
    fn new(rules: RuleSet) -> Self {
        let counters = rules.rules.iter().map(|_| AtomicU64::new(0)).collect();
        let token_removed = rules.token_removed();
        let has_token_rules = rules.has_token_rules();
        Self {
            rules,
            counters,
            token_removed,
            has_token_rules,
        }
    }

    /// Whether some rule is limited to one token, so calls need their token's label.
    pub(crate) fn has_token_rules(&self) -> bool {
        self.has_token_rules
    }

    /// Whether the token `token` (`None`: a call to no token in particular) counts as removed:
    /// an unqualified `token-removed`, or one naming it.
    pub(crate) fn token_removed(&self, token: Option<&str>) -> bool {
        self.token_removed
            || token.is_some_and(|label| self.rules.removed_tokens().any(|gone| gone == label))
    }

    /// Whether the token labelled `label` is named by a `token-removed <label>` line.
    pub(crate) fn token_named_removed(&self, label: &str) -> bool {
        self.rules.removed_tokens().any(|gone| gone == label)
    }

    /// Whether a `hang` rule matches `function` called on `token`.
    pub(crate) fn hangs(&self, function: Function, token: Option<&str>) -> bool {
        self.rules.hangs(function, token)
    }

    /// The total delay of the `latency` rules matching `function` called on `token`, ranges
    /// sampled now.
    pub(crate) fn delay(&self, function: Function, token: Option<&str>) -> Duration {
        self.rules
            .rules
            .iter()
            .filter_map(|rule| match rule {
                Rule::Latency {
                    target,
                    delay,
                    token: only,
                } if target.matches(function) && token_matches(only.as_deref(), token) => {
                    Some(crate::faults::sample(delay.min, delay.max))
                }
                _ => None,
            })
            .fold(Duration::ZERO, Duration::saturating_add)
    }

    /// Counts this call (of `function` on `token`) against every matching `fail` rule and
    /// returns the return value of the first one (in file order) that fires for it.
    pub(crate) fn failure(&self, function: Function, token: Option<&str>) -> Option<CK_RV> {
        let mut failure = None;
        for (rule, counter) in self.rules.rules.iter().zip(&self.counters) {
            if let Rule::Fail {
                target,
                rv,
                when,
                token: only,
            } = rule
                && target.matches(function)
                && token_matches(only.as_deref(), token)
            {
                let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                if when.fires(n) && failure.is_none() {
                    failure = Some(*rv);
                }
            }
        }
        failure
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cryptoki_sys::{CKR_DEVICE_ERROR, CKR_GENERAL_ERROR};

    use super::*;

    fn version(text: &str) -> Version {
        Version::new(RuleSet::parse(text))
    }

    #[test]
    fn fail_rules_count_their_own_calls() {
        let v = version(
            "fail C_Encrypt CKR_GENERAL_ERROR every 3\nfail C_Encrypt CKR_DEVICE_ERROR once\n",
        );
        let results: Vec<_> = (0..7)
            .map(|_| v.failure(Function::C_Encrypt, None))
            .collect();
        assert_eq!(
            results,
            [
                Some(CKR_DEVICE_ERROR),
                None,
                Some(CKR_GENERAL_ERROR),
                None,
                None,
                Some(CKR_GENERAL_ERROR),
                None
            ]
        );
        assert_eq!(v.failure(Function::C_Decrypt, None), None);
    }

    #[test]
    fn wildcard_counts_all_calls_together() {
        let v = version("fail * CKR_DEVICE_ERROR every 2\n");
        assert_eq!(v.failure(Function::C_Encrypt, None), None);
        assert_eq!(v.failure(Function::C_Decrypt, None), Some(CKR_DEVICE_ERROR));
        assert_eq!(v.failure(Function::C_GetFunctionList, None), None);
        assert_eq!(v.failure(Function::C_Login, None), None);
    }

    #[test]
    fn qualified_rules_count_and_apply_to_their_token_only() {
        let v = version(
            "fail C_Encrypt CKR_DEVICE_ERROR every 2 token=b\n\
             latency * 3ms token=a\n\
             token-removed b\n",
        );
        assert!(v.has_token_rules());
        // Calls to a and to no token neither fail nor count.
        for _ in 0..3 {
            assert_eq!(v.failure(Function::C_Encrypt, Some("a")), None);
            assert_eq!(v.failure(Function::C_Encrypt, None), None);
        }
        assert_eq!(v.failure(Function::C_Encrypt, Some("b")), None);
        assert_eq!(
            v.failure(Function::C_Encrypt, Some("b")),
            Some(CKR_DEVICE_ERROR)
        );
        assert_eq!(
            v.delay(Function::C_Login, Some("a")),
            Duration::from_millis(3)
        );
        assert_eq!(v.delay(Function::C_Login, Some("b")), Duration::ZERO);
        assert_eq!(v.delay(Function::C_Login, None), Duration::ZERO);
        assert!(v.token_removed(Some("b")) && v.token_named_removed("b"));
        assert!(!v.token_removed(Some("a")) && !v.token_removed(None));

        let all = version("token-removed\n");
        assert!(!all.has_token_rules());
        assert!(all.token_removed(None) && all.token_removed(Some("a")));
        assert!(!all.token_named_removed("a"));
    }

    #[test]
    fn latencies_add_up() {
        let v = version("latency * 2ms\nlatency C_Encrypt 3ms\nlatency C_Sign 1ms..2ms\n");
        assert_eq!(v.delay(Function::C_Encrypt, None), Duration::from_millis(5));
        assert_eq!(v.delay(Function::C_Decrypt, None), Duration::from_millis(2));
        assert_eq!(v.delay(Function::C_GetFunctionList, None), Duration::ZERO);
        for _ in 0..100 {
            let d = v.delay(Function::C_Sign, None);
            assert!((Duration::from_millis(3)..=Duration::from_millis(4)).contains(&d));
        }
    }

    #[test]
    fn file_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let control = Control::new(path.clone());
        assert!(control.current().rules.rules.is_empty());

        install(&path, "fail C_Encrypt CKR_DEVICE_ERROR once\n").unwrap();
        let first = control.current();
        assert_eq!(
            first.failure(Function::C_Encrypt, None),
            Some(CKR_DEVICE_ERROR)
        );
        assert_eq!(first.failure(Function::C_Encrypt, None), None);
        assert!(Arc::ptr_eq(&first, &control.reload_now()), "unchanged file");

        // The same text again is a new version: `once` is re-armed.
        install(&path, "fail C_Encrypt CKR_DEVICE_ERROR once\n").unwrap();
        let second = control.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(
            second.failure(Function::C_Encrypt, None),
            Some(CKR_DEVICE_ERROR)
        );

        install(&path, "token-removed\nhang C_Login\n").unwrap();
        let third = control.current();
        assert!(third.token_removed(None) && third.hangs(Function::C_Login, None));

        fs::remove_file(&path).unwrap();
        std::thread::sleep(RELOAD_INTERVAL * 2);
        let gone = control.current();
        assert!(!gone.token_removed(None) && gone.rules.rules.is_empty());
    }
}
