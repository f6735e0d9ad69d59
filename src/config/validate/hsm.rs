//! `[hsm]` and `[[hsm.members]]`: module, token, PIN, pool sizes, fleet members.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::super::error::Errors;
use super::super::raw::RawHsm;
use super::super::{Fleet, Hsm, HsmMemberSettings, HsmSettings, TokenSelector};

use super::{existing_file, range, secret};
use crate::xks::ExternalKeyId;

/// Most HSM members GetHealthStatus can report (`ekmFleetDetails`, H-12).
const MAX_HSM_MEMBERS: usize = 10;

pub(super) fn validate_hsm(raw: RawHsm, errors: &mut Errors) -> Option<Hsm> {
    let RawHsm {
        module,
        token_label,
        token_serial,
        user_pin,
        user_pin_file,
        members,
        ..
    } = raw;
    let sessions =
        range("hsm.sessions", raw.sessions, 1..=1024, errors).and_then(NonZeroUsize::new);
    let queue_depth = range("hsm.queue_depth", raw.queue_depth, 0..=100_000, errors);
    let health_key_label = errors.check(
        "hsm.health_key_label",
        ExternalKeyId::parse(&raw.health_key_label).map_err(|e| e.to_string()),
    );
    let common = |module, token, user_pin| {
        Some(HsmSettings {
            module,
            token,
            user_pin,
            sessions: sessions?,
            queue_depth: queue_depth?,
            health_key_label: health_key_label.clone()?,
            create_health_key: raw.create_health_key,
        })
    };
    if members.is_empty() {
        let module = existing_file("hsm.module", module, errors);
        let token = token_selector("hsm", token_label, token_serial, errors);
        let user_pin = pin("hsm", user_pin, user_pin_file, errors);
        return match (module, token, user_pin) {
            (Some(module), Some(token), Some(user_pin)) => {
                common(module, token, user_pin).map(Hsm::Single)
            }
            _ => None,
        };
    }
    for (field, set) in [
        ("hsm.token_label", token_label.is_some()),
        ("hsm.token_serial", token_serial.is_some()),
    ] {
        if set {
            errors.push(
                field,
                "must be absent when [[hsm.members]] are configured: each member names its token",
            );
        }
    }
    if members.len() > MAX_HSM_MEMBERS {
        errors.push(
            "hsm.members",
            format!(
                "{} members configured; GetHealthStatus reports at most {MAX_HSM_MEMBERS} (H-12)",
                members.len()
            ),
        );
    }
    // Only read when a member has no PIN of its own.
    let default_pin = (user_pin.is_some() || user_pin_file.is_some())
        .then(|| pin("hsm", user_pin, user_pin_file, errors))
        .flatten();
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    let mut fleet = Vec::new();
    for (i, member) in members.into_iter().enumerate() {
        let at = format!("hsm.members[{i}]");
        let id = member.id.map(|id| id.trim().to_owned());
        match &id {
            Some(id) if !valid_member_id(id) => errors.push(
                format!("{at}.id"),
                "must be 1–64 printable ASCII characters",
            ),
            Some(id) if !ids.insert(id.clone()) => {
                errors.push(format!("{at}.id"), format!("duplicate member id {id:?}"));
            }
            _ => {}
        }
        let member_module = existing_file(
            &format!("{at}.module"),
            member.module.unwrap_or_else(|| module.clone()),
            errors,
        );
        let token = token_selector(&at, member.token_label, member.token_serial, errors);
        if let (Some(path), Some(token)) = (&member_module, &token) {
            let key = (
                std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()),
                token.clone(),
            );
            if !tokens.insert(key) {
                errors.push(
                    format!("{at}.token_label"),
                    format!("{token:?} on {} is already another member", path.display()),
                );
            }
        }
        let member_pin = if member.user_pin.is_some() || member.user_pin_file.is_some() {
            pin(&at, member.user_pin, member.user_pin_file, errors)
        } else if default_pin.is_none() {
            errors.push(
                format!("{at}.user_pin"),
                "set user_pin or user_pin_file here or in [hsm]",
            );
            None
        } else {
            default_pin.clone()
        };
        if let (Some(module), Some(token), Some(user_pin)) = (member_module, token, member_pin)
            && let Some(hsm) = common(module, token, user_pin)
        {
            fleet.push(HsmMemberSettings { id, hsm });
        }
    }
    Fleet::new(fleet).map(Hsm::Fleet)
}

fn valid_member_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// `token_label` xor `token_serial` of `section`.
fn token_selector(
    section: &str,
    label: Option<String>,
    serial: Option<String>,
    errors: &mut Errors,
) -> Option<TokenSelector> {
    match (label, serial) {
        (Some(label), None) if !label.trim().is_empty() => {
            Some(TokenSelector::Label(label.trim().to_owned()))
        }
        (None, Some(serial)) if !serial.trim().is_empty() => {
            Some(TokenSelector::Serial(serial.trim().to_owned()))
        }
        (Some(_), Some(_)) => {
            errors.push(
                format!("{section}.token_label"),
                "set token_label or token_serial, not both",
            );
            None
        }
        _ => {
            errors.push(
                format!("{section}.token_label"),
                "set token_label or token_serial (slot indexes are not accepted: they change)",
            );
            None
        }
    }
}

/// The non-empty CKU_USER PIN of `section`.
fn pin(
    section: &str,
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    errors: &mut Errors,
) -> Option<SecretString> {
    let field = format!("{section}.user_pin");
    secret(&field, inline, file, errors).and_then(|pin| {
        (!pin.expose_secret().is_empty())
            .then_some(pin)
            .or_else(|| {
                errors.push(field, "must not be empty");
                None
            })
    })
}
