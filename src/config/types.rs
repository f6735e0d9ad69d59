//! Validated newtypes for configuration values.

use std::fmt;

/// Longest path prefix: `XksProxyUriPath` is at most 128 characters and ends with the
/// 11-character `/kms/xks/v1` (URI-2).
pub(crate) const MAX_PREFIX_LEN: usize = 128 - "/kms/xks/v1".len();

/// A key store's path prefix (URI-1, URI-2): empty, or `/`-separated non-empty segments of
/// `a-z A-Z 0-9 _ -`, without a trailing slash, at most 117 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UriPrefix(String);

impl UriPrefix {
    /// Validates a prefix.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(Self(String::new()));
        }
        if raw.len() > MAX_PREFIX_LEN {
            return Err(format!(
                "must be at most {MAX_PREFIX_LEN} characters (URI-2)"
            ));
        }
        let Some(rest) = raw.strip_prefix('/') else {
            return Err("must start with '/' (or be empty)".into());
        };
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !rest.split('/').all(segment_ok) {
            return Err(
                "must be '/'-separated non-empty segments of a-z A-Z 0-9 _ - with no trailing '/'"
                    .into(),
            );
        }
        if raw.ends_with("/kms/xks/v1") {
            return Err("must not include '/kms/xks/v1'; give only the part before it".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The prefix, e.g. `/tenant-a` or the empty string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `XksProxyUriPath` KMS is configured with: prefix plus `/kms/xks/v1`.
    pub fn uri_path(&self) -> String {
        format!("{}/kms/xks/v1", self.0)
    }
}

impl fmt::Display for UriPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UriPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UriPrefix({:?})", self.0)
    }
}

/// A SigV4 access key id as KMS accepts it: 20–30 characters of `A-Z 2-7` (AU-14).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccessKeyId(String);

impl AccessKeyId {
    /// Validates an access key id.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let charset_ok = raw
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
        if !(20..=30).contains(&raw.len()) || !charset_ok {
            return Err("must be 20-30 characters of A-Z and 2-7 (AU-14)".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessKeyId({})", self.0)
    }
}

/// An accepted mTLS client name, e.g. `cks.kms.eu-west-1.amazonaws.com` (MT-4). Stored in
/// lowercase; matched exactly (no wildcards) against the subject CN or a SAN dNSName.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientSubjectName(String);

impl ClientSubjectName {
    /// Validates a name: a DNS-like string of `a-z 0-9 . -`, 1–253 characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.to_ascii_lowercase();
        let ok = !lower.is_empty()
            && lower.len() <= 253
            && lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !lower.starts_with('.')
            && !lower.ends_with('.');
        if !ok {
            return Err("must be a DNS name such as cks.kms.eu-west-1.amazonaws.com".into());
        }
        Ok(Self(lower))
    }

    /// The lowercase name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a name from a certificate matches (ASCII case-insensitive, exact).
    pub fn matches(&self, presented: &str) -> bool {
        self.0.eq_ignore_ascii_case(presented)
    }
}

impl fmt::Display for ClientSubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientSubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientSubjectName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_2_prefixes() {
        for ok in [
            "",
            "/a",
            "/keystores/4a0d79d6-1d1b-49fd-9dbe-799cb9c0fb3f",
            "/a_b/C-9",
        ] {
            assert_eq!(
                UriPrefix::parse(ok).map(|p| p.to_string()),
                Ok(ok.to_owned())
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PREFIX_LEN));
        for bad in [
            "a",
            "/",
            "/a/",
            "//a",
            "/a b",
            "/a.b",
            "/x/kms/xks/v1",
            long.as_str(),
        ] {
            assert!(UriPrefix::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            UriPrefix::parse("/t").map(|p| p.uri_path()),
            Ok("/t/kms/xks/v1".to_owned())
        );
    }

    #[test]
    fn au_14_access_key_ids() {
        assert!(AccessKeyId::parse("AKIAI2SFODNN7EXAMPLE").is_ok());
        assert!(AccessKeyId::parse(&"A".repeat(30)).is_ok());
        for bad in [
            "AKIAI2SFODNN7EXAMPL",
            "akiai2sfodnn7example",
            "AKIAI2SFODNN7EXAMPLE1",
            "",
        ] {
            assert!(AccessKeyId::parse(bad).is_err(), "{bad}");
        }
        assert!(AccessKeyId::parse(&"A".repeat(31)).is_err());
    }

    #[test]
    fn mt_6_client_names_match_case_insensitively_and_exactly() {
        let name = ClientSubjectName::parse("CKS.kms.eu-west-1.amazonaws.com").unwrap();
        assert!(name.matches("cks.kms.eu-west-1.amazonaws.com"));
        assert!(name.matches("CKS.KMS.EU-WEST-1.AMAZONAWS.COM"));
        assert!(!name.matches("*.kms.eu-west-1.amazonaws.com"));
        assert!(!name.matches("cks.kms.eu-west-1.amazonaws.com.evil"));
        assert!(ClientSubjectName::parse("*.amazonaws.com").is_err());
    }
}
