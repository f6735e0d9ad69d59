//! What a key object's attributes mean to the proxy: its key spec (checklist K-2) and whether
//! its protection lets the proxy serve it (key hygiene, see `keys`).

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

use crate::hsm::{HsmError, KeySpec, KeyUsage};

/// How a key object is protected on its token, from `CKA_PRIVATE`, `CKA_SENSITIVE` and
/// `CKA_EXTRACTABLE` (an attribute the object lacks counts as the unsafe value).
///
/// The proxy serves only keys that are private, sensitive and never extractable: a public
/// object can be planted by anyone with token access, and the value of a readable or
/// extractable key can leave the HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_PRIVATE`: visible and usable only after a login.
    pub private: bool,
    /// `CKA_SENSITIVE`: the value can never be read in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the value can be wrapped out of the token.
    pub extractable: bool,
}

impl KeyProtection {
    /// Whether the proxy may serve a key protected like this.
    pub fn is_servable(self) -> bool {
        self.problems().is_empty()
    }

    /// Why the proxy refuses a key protected like this, in attribute order; empty when it
    /// is servable.
    pub fn problems(self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if !self.private {
            problems.push("not private (CKA_PRIVATE=false)");
        }
        if !self.sensitive {
            problems.push("not sensitive (CKA_SENSITIVE=false)");
        }
        if self.extractable {
            problems.push("extractable (CKA_EXTRACTABLE=true)");
        }
        problems
    }
}

/// Attributes of a key object, read once and cached with its handle: the class, key type
/// and size never change, and a cached key is protected in a way only a logged-in user could
/// weaken (and keys the proxy makes are not modifiable at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyInfo {
    /// `CKA_CLASS`.
    pub(super) class: ObjectClass,
    /// `CKA_KEY_TYPE`, absent on objects that are not keys.
    pub(super) key_type: Option<KeyType>,
    /// `CKA_VALUE_LEN` in bytes, present on secret keys.
    pub(super) value_len: Option<u64>,
    /// `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_EXTRACTABLE`.
    pub(super) protection: KeyProtection,
    /// The usage flags when `CKA_MODIFIABLE` is false, so they can never change and
    /// GetKeyMetadata needs no PKCS#11 call; `None` for a modifiable key, whose flags are read
    /// on every GetKeyMetadata.
    pub(super) fixed_usages: Option<UsageFlags>,
}

/// The seven usage flags of a key (K-3, K-4), as read in one `C_GetAttributeValue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct UsageFlags(u8);

impl UsageFlags {
    /// The attributes, in spec order: bit `i` of the flags is `ATTRIBUTES[i]`.
    pub(super) const ATTRIBUTES: [AttributeType; 7] = [
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Sign,
        AttributeType::Verify,
        AttributeType::Wrap,
        AttributeType::Unwrap,
        AttributeType::Derive,
    ];
    const USAGES: [KeyUsage; 7] = [
        KeyUsage::Encrypt,
        KeyUsage::Decrypt,
        KeyUsage::Sign,
        KeyUsage::Verify,
        KeyUsage::Wrap,
        KeyUsage::Unwrap,
        KeyUsage::Derive,
    ];

    /// Records `attribute` if it is a usage flag set to true; absent flags count as false.
    pub(super) fn record(&mut self, attribute: &Attribute) {
        let bit = match attribute {
            Attribute::Encrypt(true) => 0,
            Attribute::Decrypt(true) => 1,
            Attribute::Sign(true) => 2,
            Attribute::Verify(true) => 3,
            Attribute::Wrap(true) => 4,
            Attribute::Unwrap(true) => 5,
            Attribute::Derive(true) => 6,
            _ => return,
        };
        self.0 |= 1 << bit;
    }

    /// The usages that are set, in spec order.
    pub(super) fn usages(self) -> Vec<KeyUsage> {
        Self::USAGES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, usage)| *usage)
            .collect()
    }
}

impl KeyInfo {
    /// Key type and size as GetKeyMetadata reports them (K-2): truthful for every object.
    pub(super) fn spec(&self) -> KeySpec {
        let strip =
            |s: String, prefix: &str| s.strip_prefix(prefix).map(str::to_owned).unwrap_or(s);
        let Some(key_type) = self.key_type else {
            return KeySpec::Other(strip(self.class.to_string(), "CKO_"));
        };
        let type_name = strip(key_type.to_string(), "CKK_");
        if self.class != ObjectClass::SECRET_KEY {
            let class_name = strip(self.class.to_string(), "CKO_");
            return KeySpec::Other(format!("{type_name}_{class_name}"));
        }
        match (key_type, self.value_len) {
            (KeyType::AES, Some(16)) => KeySpec::Aes128,
            (KeyType::AES, Some(24)) => KeySpec::Aes192,
            (KeyType::AES, Some(32)) => KeySpec::Aes256,
            (_, Some(bytes)) => KeySpec::Other(format!("{type_name}_{}", bytes.saturating_mul(8))),
            (_, None) => KeySpec::Other(type_name),
        }
    }

    /// Succeeds for an AES-256 secret key, the only kind the proxy uses for customer crypto.
    pub(super) fn require_aes_256(&self) -> Result<(), HsmError> {
        match self.spec() {
            KeySpec::Aes256 => Ok(()),
            other => Err(HsmError::UnsupportedKey {
                found: other.as_str().to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(class: ObjectClass, key_type: Option<KeyType>, value_len: Option<u64>) -> KeyInfo {
        KeyInfo {
            class,
            key_type,
            value_len,
            protection: LOCKED,
            fixed_usages: None,
        }
    }

    #[test]
    fn usage_flags_come_out_in_spec_order() {
        let mut flags = UsageFlags::default();
        for attribute in [
            Attribute::Derive(true),
            Attribute::Sign(false),
            Attribute::Decrypt(true),
            Attribute::Encrypt(true),
            Attribute::Label(b"ignored".to_vec()),
        ] {
            flags.record(&attribute);
        }
        assert_eq!(
            flags.usages(),
            [KeyUsage::Encrypt, KeyUsage::Decrypt, KeyUsage::Derive]
        );
        assert!(UsageFlags::default().usages().is_empty());
    }

    const LOCKED: KeyProtection = KeyProtection {
        private: true,
        sensitive: true,
        extractable: false,
    };

    #[test]
    fn key_hygiene_only_private_sensitive_unextractable_keys_are_servable() {
        assert!(LOCKED.is_servable());
        assert!(LOCKED.problems().is_empty());
        let planted = KeyProtection {
            private: false,
            sensitive: false,
            extractable: true,
        };
        assert!(!planted.is_servable());
        assert_eq!(
            planted.problems(),
            [
                "not private (CKA_PRIVATE=false)",
                "not sensitive (CKA_SENSITIVE=false)",
                "extractable (CKA_EXTRACTABLE=true)"
            ]
        );
        for weakened in [
            KeyProtection {
                private: false,
                ..LOCKED
            },
            KeyProtection {
                sensitive: false,
                ..LOCKED
            },
            KeyProtection {
                extractable: true,
                ..LOCKED
            },
        ] {
            assert_eq!(weakened.problems().len(), 1, "{weakened:?}");
            assert!(!weakened.is_servable());
        }
    }

    #[test]
    fn k_2_aes_sizes_get_their_spec_names() {
        let secret = |len| info(ObjectClass::SECRET_KEY, Some(KeyType::AES), Some(len));
        assert_eq!(secret(16).spec(), KeySpec::Aes128);
        assert_eq!(secret(24).spec(), KeySpec::Aes192);
        assert_eq!(secret(32).spec(), KeySpec::Aes256);
        assert_eq!(secret(32).require_aes_256(), Ok(()));
        assert_eq!(
            secret(16).require_aes_256(),
            Err(HsmError::UnsupportedKey {
                found: "AES_128".into()
            })
        );
    }

    #[test]
    fn k_2_other_objects_are_described_truthfully() {
        let cases = [
            (
                info(
                    ObjectClass::SECRET_KEY,
                    Some(KeyType::GENERIC_SECRET),
                    Some(32),
                ),
                "GENERIC_SECRET_256",
            ),
            (
                info(ObjectClass::SECRET_KEY, Some(KeyType::AES), Some(8)),
                "AES_64",
            ),
            (
                info(ObjectClass::SECRET_KEY, Some(KeyType::DES3), None),
                "DES3",
            ),
            (
                info(ObjectClass::PRIVATE_KEY, Some(KeyType::RSA), None),
                "RSA_PRIVATE_KEY",
            ),
            (info(ObjectClass::DATA, None, None), "DATA"),
        ];
        for (info, spec) in cases {
            assert_eq!(info.spec(), KeySpec::Other(spec.into()));
            assert_eq!(
                info.require_aes_256(),
                Err(HsmError::UnsupportedKey { found: spec.into() })
            );
        }
    }
}
