//! A fast in-memory [`KeyBackend`] for tests of the layers above the HSM (routing, the
//! request pipeline, every spec error): real AES-256-GCM (`ring`), keys with usages, and
//! injected failures. Never a stand-in for the PKCS#11 tests, which run against SoftHSM2.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::labels::{parse_token_label, token_label};
use super::{
    DecryptRequest, EncryptRequest, GCM_IV_LEN, GCM_TAG_LEN, GcmCiphertext, HsmError, HsmHealth,
    KeyBackend, KeyMetadata, KeySpec, KeyStatus, KeyUsage, MemberHealth, MemberStatus, Served,
    ServedFuture,
};
use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// The member id every answer of the fake names.
pub(crate) const FAKE_MEMBER: &str = "fake-hsm-1";

/// An in-memory key store; see the module docs.
#[derive(Default)]
pub(crate) struct MemoryBackend {
    keys: Mutex<HashMap<String, FakeKey>>,
    /// Answered by the next call instead of doing the work.
    next_failure: Mutex<Option<HsmError>>,
}

struct FakeKey {
    material: Zeroizing<[u8; 32]>,
    usages: Vec<KeyUsage>,
}

impl MemoryBackend {
    /// Adds version 1 of an AES-256 key with random material and the given usages.
    pub(crate) fn with_key(self, label: &str, usages: &[KeyUsage]) -> Self {
        self.with_key_version(label, 1, usages)
    }

    /// Adds version `version` of an AES-256 key with random material and the given usages,
    /// stored under its token label ([`crate::hsm::labels`]).
    pub(crate) fn with_key_version(self, id: &str, version: u32, usages: &[KeyUsage]) -> Self {
        let mut material = Zeroizing::new([0u8; 32]);
        // Test-only code: a machine without an OS RNG cannot run the tests anyway.
        #[allow(clippy::expect_used)]
        getrandom::fill(material.as_mut()).expect("OS random number generator");
        self.with_key_material(id, version, &material, usages)
    }

    /// Adds version `version` of an AES-256 key with the given material, so that a test can
    /// make ciphertexts for it independently.
    pub(crate) fn with_key_material(
        self,
        id: &str,
        version: u32,
        material: &[u8; 32],
        usages: &[KeyUsage],
    ) -> Self {
        #[allow(clippy::expect_used)]
        let key = VersionedKey::new(
            ExternalKeyId::parse(id).expect("a valid test key id"),
            KeyVersion::new(version).expect("versions start at 1"),
        );
        let label = token_label(&key);
        self.keys.lock().insert(
            label,
            FakeKey {
                material: Zeroizing::new(*material),
                usages: usages.to_vec(),
            },
        );
        self
    }

    /// The next call answers `failure` (e.g. [`HsmError::Busy`], a device failure).
    pub(crate) fn fail_next(&self, failure: HsmError) {
        *self.next_failure.lock() = Some(failure);
    }

    fn answer<T>(&self, work: impl FnOnce() -> Result<T, HsmError>) -> Served<T> {
        let result = match self.next_failure.lock().take() {
            Some(failure) => Err(failure),
            None => work(),
        };
        Served::by(FAKE_MEMBER, result)
    }

    /// The key's AEAD key, if it exists and permits `usage`.
    fn key_for(&self, key: &VersionedKey, usage: KeyUsage) -> Result<LessSafeKey, HsmError> {
        let keys = self.keys.lock();
        let found = keys.get(&token_label(key)).ok_or(HsmError::KeyNotFound)?;
        if !found.usages.contains(&usage) {
            return Err(HsmError::KeyUsageNotPermitted {
                operation: if usage == KeyUsage::Encrypt {
                    "encrypt"
                } else {
                    "decrypt"
                },
            });
        }
        let unbound = UnboundKey::new(&AES_256_GCM, found.material.as_ref())
            .map_err(|_| HsmError::Unavailable("fake key material rejected".into()))?;
        Ok(LessSafeKey::new(unbound))
    }
}

fn ready<'a, T: Send + 'a>(served: Served<T>) -> ServedFuture<'a, T> {
    Box::pin(std::future::ready(served))
}

impl KeyBackend for MemoryBackend {
    fn key_versions(&self, key: ExternalKeyId, _: Instant) -> ServedFuture<'_, Arc<[KeyVersion]>> {
        ready(self.answer(|| {
            let mut versions: Vec<KeyVersion> = self
                .keys
                .lock()
                .keys()
                .filter_map(|label| parse_token_label(label))
                .filter(|found| found.id == key)
                .map(|found| found.version)
                .collect();
            versions.sort_unstable();
            if versions.is_empty() {
                return Err(HsmError::KeyNotFound);
            }
            Ok(versions.into())
        }))
    }

    fn forget_keys(&self) {}

    fn key_metadata(&self, key: VersionedKey, _: Instant) -> ServedFuture<'_, KeyMetadata> {
        ready(self.answer(|| {
            let keys = self.keys.lock();
            let found = keys.get(&token_label(&key)).ok_or(HsmError::KeyNotFound)?;
            Ok(KeyMetadata {
                spec: KeySpec::Aes256,
                usages: found.usages.clone(),
                status: KeyStatus::Enabled,
            })
        }))
    }

    fn encrypt(
        &self,
        key: VersionedKey,
        request: EncryptRequest,
        _: Instant,
    ) -> ServedFuture<'_, GcmCiphertext> {
        ready(self.answer(|| {
            let aead = self.key_for(&key, KeyUsage::Encrypt)?;
            let mut iv = [0u8; GCM_IV_LEN];
            getrandom::fill(&mut iv).map_err(|_| HsmError::Unavailable("no OS RNG".into()))?;
            let mut ciphertext = request.plaintext.to_vec();
            let tag = aead
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(&request.aad),
                    &mut ciphertext,
                )
                .map_err(|_| HsmError::InputTooLarge)?;
            let mut tag_bytes = [0u8; GCM_TAG_LEN];
            tag_bytes.copy_from_slice(tag.as_ref());
            Ok(GcmCiphertext {
                ciphertext,
                iv,
                tag: tag_bytes,
            })
        }))
    }

    fn decrypt(
        &self,
        key: VersionedKey,
        request: DecryptRequest,
        _: Instant,
    ) -> ServedFuture<'_, Zeroizing<Vec<u8>>> {
        ready(self.answer(|| {
            let aead = self.key_for(&key, KeyUsage::Decrypt)?;
            // ring only takes 12-byte nonces; a 16-byte IV cannot authenticate here, as a
            // ciphertext made under another IV would not in an HSM.
            let iv: [u8; GCM_IV_LEN] = request
                .iv
                .as_slice()
                .try_into()
                .map_err(|_| HsmError::InvalidCiphertext)?;
            let mut sealed = Zeroizing::new(request.ciphertext.clone());
            sealed.extend_from_slice(&request.tag);
            let plaintext_len = aead
                .open_in_place(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(&request.aad),
                    &mut sealed,
                )
                .map_err(|_| HsmError::InvalidCiphertext)?
                .len();
            Ok(Zeroizing::new(sealed[..plaintext_len].to_vec()))
        }))
    }

    fn health(&self, _: Instant) -> ServedFuture<'_, HsmHealth> {
        ready(self.answer(|| {
            Ok(HsmHealth {
                vendor: "xks-proxy test fake".into(),
                members: vec![MemberHealth {
                    id: FAKE_MEMBER.into(),
                    model: "in-memory".into(),
                    status: MemberStatus::Active,
                }],
            })
        }))
    }
}
