//! Opt-in watch of the configuration file (`[reload] watch_config`, ROT-2): the file is
//! checked every `watch_interval` and a change reloads it as SIGHUP would, so a Kubernetes
//! ConfigMap update or an edit in place applies without a signal.
//!
//! Polling, not inotify: kubelet updates a mounted ConfigMap by pointing the volume's `..data`
//! symlink at a new timestamped directory, so nothing happens to the file the configured path
//! names (an inotify watch on it keeps following the old, soon deleted, inode). Opening,
//! reading and hashing a file of a few kilobytes once a second costs nothing measurable, and
//! it runs on a blocking thread like the reload itself.
//!
//! A change is a different fingerprint: the path with every symlink resolved (a ConfigMap
//! update), the device and inode (a rename over the file), the size and modification time (so
//! `touch` reloads too), and a SHA-256 of the content (an edit in place that keeps the size
//! within a coarse modification-time granularity).
//!
//! Only the configuration file itself is watched. The files it names (secret files, PIN files,
//! TLS certificates, keys and CA bundles) are read again by every reload but not watched: after
//! replacing one, reload with SIGHUP or `POST /admin/reload`, or touch the configuration file.
//!
//! Debounce: a change is acted on once the file reads the same on two checks in a row, so a
//! burst of writes gives one reload and a file still being written is not loaded half-way (a
//! truncated but valid file could drop credentials for a moment). Each fingerprint is loaded at
//! most once, so a broken file is reported once, not every interval, and tried again only when
//! it changes. A file that cannot be read (a ConfigMap mid-swap, a deleted file) is logged once
//! at `warn` and the running configuration stays; the watch picks the file up when it is back.
//! For an edit by hand, writing a temporary file and renaming it over the old one never exposes
//! a partial file at all.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::time::MissedTickBehavior;

use super::Reloader;

/// Checks the reloader's configuration file every `interval` and reloads when it changed.
/// Runs until the runtime shuts down; reload results are logged and counted by the reloader.
pub async fn watch_config(reloader: Arc<Reloader>, interval: Duration) {
    let path = reloader.path().to_owned();
    let mut ticks = tokio::time::interval(interval);
    // A slow check or reload delays the next check instead of causing a catch-up burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick completes at once: it reads the file the process just started with (a
    // change in the few milliseconds since is missed until the next one).
    ticks.tick().await;
    let mut watch = Watch::default();
    let first = check(&path).await;
    if let Err(error) = &first {
        warn_unreadable(&path, error);
    }
    watch.start(first);
    tracing::info!(
        path = %path.display(),
        interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        "watching the configuration file for changes"
    );
    loop {
        ticks.tick().await;
        let was_unreadable = watch.unreadable;
        match watch.observe(check(&path).await) {
            Action::Wait => {}
            Action::Unreadable(error) => warn_unreadable(&path, &error),
            Action::Reload { change, target } => {
                tracing::info!(
                    reason = change.reason(),
                    path = %path.display(),
                    resolved = %target.display(),
                    "configuration file changed; reloading"
                );
                let reloader = Arc::clone(&reloader);
                if let Err(error) = tokio::task::spawn_blocking(move || reloader.reload()).await {
                    tracing::error!(%error, "configuration reload task failed");
                }
            }
        }
        if was_unreadable && !watch.unreadable {
            tracing::info!(path = %path.display(), "configuration file is readable again");
        }
    }
}

fn warn_unreadable(path: &Path, error: &io::Error) {
    tracing::warn!(
        path = %path.display(),
        %error,
        "cannot read the configuration file; the running configuration stays in effect \
         until it is back"
    );
}

/// Fingerprints the file on a blocking thread (file system calls block).
async fn check(path: &Path) -> io::Result<Fingerprint> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || Fingerprint::of(&path))
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

/// What the file reads as: any difference is a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    /// The path with every symlink resolved: a ConfigMap update changes it.
    target: PathBuf,
    /// Device and inode: a rename over the file changes them.
    file_id: (u64, u64),
    len: u64,
    modified: Option<SystemTime>,
    /// Catches an edit in place that keeps the size and, on a file system with coarse
    /// timestamps, the modification time.
    sha256: [u8; 32],
}

impl Fingerprint {
    /// Blocking.
    fn of(path: &Path) -> io::Result<Self> {
        let target = std::fs::canonicalize(path)?;
        // Inode, size, time and content all come from the one open file, so they agree with
        // each other even while the path is being swapped; the resolved path may lag by one
        // check, which the debounce absorbs.
        let mut file = std::fs::File::open(path)?;
        let metadata = file.metadata()?;
        let mut content = Vec::new();
        file.read_to_end(&mut content)?;
        Ok(Self {
            target,
            file_id: file_id(&metadata),
            len: metadata.len(),
            modified: metadata.modified().ok(),
            sha256: Sha256::digest(&content).into(),
        })
    }
}

#[cfg(unix)]
fn file_id(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

/// No portable inode elsewhere; the content hash still catches a replaced file.
#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Why the watch reloads, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Unreadable when the watch started; what the process runs is unknown, so load it.
    Appeared,
    Retargeted,
    Replaced,
    Content,
    /// Only the modification time: `touch`, e.g. to pick up a replaced secret file.
    Touched,
}

impl Change {
    /// The most telling difference: a ConfigMap update also replaces the file and usually
    /// its content, but "symlink target changed" says what happened.
    fn between(old: Option<&Fingerprint>, new: &Fingerprint) -> Self {
        match old {
            None => Self::Appeared,
            Some(old) if old.target != new.target => Self::Retargeted,
            Some(old) if old.file_id != new.file_id => Self::Replaced,
            Some(old) if old.sha256 != new.sha256 || old.len != new.len => Self::Content,
            Some(_) => Self::Touched,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Appeared => "file readable again",
            Self::Retargeted => "symlink target changed",
            Self::Replaced => "file replaced",
            Self::Content => "content changed",
            Self::Touched => "modification time changed",
        }
    }
}

/// What to do after a check.
#[derive(Debug)]
enum Action {
    Wait,
    /// The file became unreadable (reported once until it is readable again).
    Unreadable(io::Error),
    Reload {
        change: Change,
        target: PathBuf,
    },
}

/// The watch's decisions, apart from the I/O so that they can be tested alone.
#[derive(Debug, Default)]
struct Watch {
    /// The file as it was last loaded, at startup or by this watch, whether the load
    /// succeeded or not: the same file is never loaded twice in a row.
    loaded: Option<Fingerprint>,
    /// A change seen by the last check, acted on if this check sees it unchanged.
    pending: Option<Fingerprint>,
    /// The last check could not read the file.
    unreadable: bool,
}

impl Watch {
    /// The first check: what the process started with.
    fn start(&mut self, first: io::Result<Fingerprint>) {
        match first {
            Ok(first) => self.loaded = Some(first),
            Err(_) => self.unreadable = true,
        }
    }

    fn observe(&mut self, seen: io::Result<Fingerprint>) -> Action {
        let seen = match seen {
            Ok(seen) => seen,
            Err(error) => {
                // Settling starts over once the file is back.
                self.pending = None;
                let first = !std::mem::replace(&mut self.unreadable, true);
                return if first {
                    Action::Unreadable(error)
                } else {
                    Action::Wait
                };
            }
        };
        self.unreadable = false;
        if self.loaded.as_ref() == Some(&seen) {
            // Changed and changed back (or a swap that kept the file): nothing to do.
            self.pending = None;
            return Action::Wait;
        }
        if self.pending.as_ref() != Some(&seen) {
            self.pending = Some(seen);
            return Action::Wait;
        }
        self.pending = None;
        let change = Change::between(self.loaded.as_ref(), &seen);
        let target = seen.target.clone();
        self.loaded = Some(seen);
        Action::Reload { change, target }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn print(target: &str, inode: u64, content: &[u8], modified_s: u64) -> Fingerprint {
        Fingerprint {
            target: PathBuf::from(target),
            file_id: (1, inode),
            len: content.len() as u64,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(modified_s)),
            sha256: Sha256::digest(content).into(),
        }
    }

    fn reloads(action: Action) -> Option<Change> {
        match action {
            Action::Reload { change, .. } => Some(change),
            _ => None,
        }
    }

    fn gone() -> io::Result<Fingerprint> {
        Err(io::ErrorKind::NotFound.into())
    }

    #[test]
    fn a_change_reloads_once_after_it_settles() {
        let mut watch = Watch::default();
        watch.start(Ok(print("/c", 1, b"a", 1)));
        assert!(reloads(watch.observe(Ok(print("/c", 1, b"a", 1)))).is_none());
        // A burst of writes: each differs from the last, so none is loaded yet.
        assert!(reloads(watch.observe(Ok(print("/c", 1, b"ab", 2)))).is_none());
        assert!(reloads(watch.observe(Ok(print("/c", 1, b"abc", 2)))).is_none());
        assert_eq!(
            reloads(watch.observe(Ok(print("/c", 1, b"abc", 2)))),
            Some(Change::Content)
        );
        // Loaded once, whatever the reload's outcome: a broken file is not retried.
        for _ in 0..5 {
            assert!(reloads(watch.observe(Ok(print("/c", 1, b"abc", 2)))).is_none());
        }
    }

    #[test]
    fn a_change_reverted_before_it_settles_does_nothing() {
        let mut watch = Watch::default();
        watch.start(Ok(print("/c", 1, b"a", 1)));
        assert!(reloads(watch.observe(Ok(print("/c", 1, b"b", 2)))).is_none());
        assert!(reloads(watch.observe(Ok(print("/c", 1, b"a", 1)))).is_none());
        assert!(reloads(watch.observe(Ok(print("/c", 1, b"a", 1)))).is_none());
    }

    #[test]
    fn the_reason_names_the_most_telling_difference() {
        let old = print("/c/..2026_a/x.toml", 1, b"a", 1);
        let between = |new| Change::between(Some(&old), &new);
        assert_eq!(
            between(print("/c/..2026_b/x.toml", 2, b"b", 2)),
            Change::Retargeted
        );
        assert_eq!(
            between(print("/c/..2026_a/x.toml", 2, b"a", 1)),
            Change::Replaced
        );
        // Same size, same (coarse) modification time: only the hash tells.
        assert_eq!(
            between(print("/c/..2026_a/x.toml", 1, b"b", 1)),
            Change::Content
        );
        assert_eq!(
            between(print("/c/..2026_a/x.toml", 1, b"a", 9)),
            Change::Touched
        );
        assert_eq!(Change::between(None, &old), Change::Appeared);
    }

    #[test]
    fn an_unreadable_file_is_reported_once_and_picked_up_when_back() {
        let mut watch = Watch::default();
        watch.start(Ok(print("/c/..2026_a/x.toml", 1, b"a", 1)));
        assert!(matches!(watch.observe(gone()), Action::Unreadable(_)));
        for _ in 0..3 {
            assert!(matches!(watch.observe(gone()), Action::Wait));
        }
        let back = print("/c/..2026_b/x.toml", 2, b"b", 2);
        assert!(reloads(watch.observe(Ok(back.clone()))).is_none());
        assert!(!watch.unreadable);
        assert_eq!(reloads(watch.observe(Ok(back))), Some(Change::Retargeted));
        // Gone mid-settle: settling starts over.
        let next = print("/c/..2026_c/x.toml", 3, b"c", 3);
        assert!(reloads(watch.observe(Ok(next.clone()))).is_none());
        assert!(matches!(watch.observe(gone()), Action::Unreadable(_)));
        assert!(reloads(watch.observe(Ok(next.clone()))).is_none());
        assert!(reloads(watch.observe(Ok(next))).is_some());
    }

    #[test]
    fn unreadable_at_start_loads_the_file_once_it_is_back() {
        let mut watch = Watch::default();
        watch.start(gone());
        assert!(matches!(watch.observe(gone()), Action::Wait));
        let back = print("/c", 1, b"a", 1);
        assert!(reloads(watch.observe(Ok(back.clone()))).is_none());
        assert_eq!(reloads(watch.observe(Ok(back))), Some(Change::Appeared));
    }

    #[cfg(unix)]
    #[test]
    fn the_fingerprint_sees_edits_in_place_swaps_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("..2026_a");
        let b = dir.path().join("..2026_b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x.toml"), "level = 1").unwrap();
        std::fs::write(b.join("x.toml"), "level = 1").unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink("..2026_a", &data).unwrap();
        let path = dir.path().join("x.toml");
        std::os::unix::fs::symlink("..data/x.toml", &path).unwrap();
        let first = Fingerprint::of(&path).unwrap();

        // Same size, modification time set back: the hash still differs.
        let modified = std::fs::metadata(a.join("x.toml"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(a.join("x.toml"), "level = 2").unwrap();
        let file = std::fs::File::options()
            .write(true)
            .open(a.join("x.toml"))
            .unwrap();
        file.set_modified(modified).unwrap();
        let edited = Fingerprint::of(&path).unwrap();
        assert_eq!(Change::between(Some(&first), &edited), Change::Content);

        // kubelet's swap: a new symlink renamed over `..data`.
        std::os::unix::fs::symlink("..2026_b", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), &data).unwrap();
        let swapped = Fingerprint::of(&path).unwrap();
        assert_eq!(swapped.target, b.join("x.toml").canonicalize().unwrap());
        assert_eq!(Change::between(Some(&edited), &swapped), Change::Retargeted);

        // A rename over the file itself, same content.
        std::fs::write(dir.path().join("new.toml"), "level = 1").unwrap();
        std::fs::rename(dir.path().join("new.toml"), b.join("x.toml")).unwrap();
        let renamed = Fingerprint::of(&path).unwrap();
        assert_eq!(Change::between(Some(&swapped), &renamed), Change::Replaced);

        std::fs::remove_file(&data).unwrap();
        assert!(Fingerprint::of(&path).is_err());
    }
}
