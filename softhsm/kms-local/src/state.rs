//! Custom key stores and KMS keys: in memory, optionally persisted to a JSON file after every
//! change so a restart keeps them.
//!
//! The file holds the stores' XKS proxy secrets and every key's AWS-side key in the clear (this
//! is test tooling; real KMS keeps them in its HSMs). It is written with mode 0600, atomically
//! (a temporary file renamed over the old one). `Debug` never prints secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

/// `ConnectionState` of a custom key store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionState {
    /// Health check passed; keys usable.
    Connected,
    /// Never reached here: connecting resolves before ConnectCustomKeyStore answers.
    Connecting,
    /// The last connection attempt failed; see the error code.
    Failed,
    /// Not connected (new stores start here).
    Disconnected,
}

impl ConnectionState {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "CONNECTED",
            Self::Connecting => "CONNECTING",
            Self::Failed => "FAILED",
            Self::Disconnected => "DISCONNECTED",
        }
    }
}

/// An external key store.
#[derive(Clone, Serialize, Deserialize)]
pub struct CustomKeyStore {
    /// `cks-` and 17 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `https://host[:port]`.
    pub uri_endpoint: String,
    /// `[/prefix]/kms/xks/v1`.
    pub uri_path: String,
    /// The SigV4 access key id KMS signs with.
    pub access_key_id: String,
    /// The SigV4 secret; never logged.
    pub secret: Zeroizing<String>,
    /// Connection state.
    pub state: ConnectionState,
    /// `ConnectionErrorCode` when `state` is `Failed`.
    pub error_code: Option<String>,
    /// Epoch seconds.
    pub creation_date: f64,
}

impl fmt::Debug for CustomKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomKeyStore")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("uri_endpoint", &self.uri_endpoint)
            .field("uri_path", &self.uri_path)
            .field("access_key_id", &self.access_key_id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Where a key's material lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyOrigin {
    /// This front alone.
    AwsKms,
    /// This front (AWS-side layer) and the XKS proxy's HSM.
    ExternalKeyStore,
}

impl KeyOrigin {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsKms => "AWS_KMS",
            Self::ExternalKeyStore => "EXTERNAL_KEY_STORE",
        }
    }
}

/// A KMS key (always `SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`).
#[derive(Clone, Serialize, Deserialize)]
pub struct Key {
    /// UUID.
    pub id: String,
    /// Free text.
    pub description: String,
    /// `EnableKey`/`DisableKey`.
    pub enabled: bool,
    /// Origin.
    pub origin: KeyOrigin,
    /// The store of an external key.
    pub custom_key_store_id: Option<String>,
    /// The proxy's key id of an external key.
    pub xks_key_id: Option<String>,
    /// The AWS-side AES-256 key; never logged. Base64 in the file.
    #[serde(with = "base64_bytes")]
    pub aws_key: Zeroizing<Vec<u8>>,
    /// Epoch seconds.
    pub creation_date: f64,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("enabled", &self.enabled)
            .field("origin", &self.origin)
            .field("custom_key_store_id", &self.custom_key_store_id)
            .field("xks_key_id", &self.xks_key_id)
            .finish_non_exhaustive()
    }
}

/// Everything the front knows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// By id.
    pub stores: BTreeMap<String, CustomKeyStore>,
    /// By key id.
    pub keys: BTreeMap<String, Key>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a state document.
    #[error("state file {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// The state behind a lock, and where it is persisted.
#[derive(Debug)]
pub struct Db {
    state: Mutex<State>,
    path: Option<PathBuf>,
}

impl Db {
    /// Loads `path` if it exists (an absent file is an empty state); `None` keeps everything in
    /// memory.
    pub fn open(path: Option<PathBuf>) -> Result<Self, StateError> {
        let state = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read(p).map_err(|source| StateError::Io {
                    path: p.clone(),
                    source,
                })?;
                serde_json::from_slice(&text).map_err(|source| StateError::Json {
                    path: p.clone(),
                    source,
                })?
            }
            _ => State::default(),
        };
        Ok(Self {
            state: Mutex::new(state),
            path,
        })
    }

    /// A copy of the current state (taken under the lock, which is then released: callers
    /// never hold it across a call to the proxy).
    pub async fn snapshot(&self) -> State {
        self.state.lock().await.clone()
    }

    /// Applies `change` and persists the result if it succeeded. The change sees the state as
    /// it is now, so checks done before a proxy call are repeated inside it.
    pub async fn update<T, E: From<StateError>>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let out = change(&mut next)?;
        if let Some(path) = &self.path {
            write_atomically(path, &next)?;
        }
        *state = next;
        Ok(out)
    }
}

fn write_atomically(path: &Path, state: &State) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec_pretty(state).map_err(|source| StateError::Json {
        path: path.to_owned(),
        source,
    })?;
    let staged = path.with_extension("tmp");
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&staged).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&staged, path).map_err(io)
}

/// Keys as Base64 strings in the state file rather than arrays of numbers.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use zeroize::Zeroizing;

    pub(super) fn serialize<S: Serializer>(
        bytes: &Zeroizing<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Zeroizing::new(STANDARD.encode(bytes.as_slice())))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        STANDARD
            .decode(text.as_bytes())
            .map(Zeroizing::new)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let db = Db::open(Some(path.clone())).unwrap();
        db.update(|s| {
            s.keys.insert(
                "k".into(),
                Key {
                    id: "k".into(),
                    description: String::new(),
                    enabled: true,
                    origin: KeyOrigin::AwsKms,
                    custom_key_store_id: None,
                    xks_key_id: None,
                    aws_key: Zeroizing::new(vec![1; 32]),
                    creation_date: 1.5,
                },
            );
            Ok::<_, StateError>(())
        })
        .await
        .unwrap();
        let again = Db::open(Some(path.clone())).unwrap().snapshot().await;
        assert_eq!(again.keys["k"].aws_key.as_slice(), &[1; 32]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A failed change is neither applied nor written.
        let failed: Result<(), StateError> = db
            .update(|s| {
                s.keys.clear();
                Err(StateError::Io {
                    path: path.clone(),
                    source: std::io::Error::other("no"),
                })
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(db.snapshot().await.keys.len(), 1);
    }
}
