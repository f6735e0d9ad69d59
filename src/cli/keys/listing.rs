//! `keys list`: one table row per key object on every member, customer keys grouped by
//! external key id with their versions, and (in a fleet) the versions some members lack.
//!
//! The table is for scripts as much as for people: one header line, then one row per object
//! with whitespace-free columns `MEMBER KEY VERSION LABEL SPEC USAGES STATUS` (`-` for an
//! empty field; a label with whitespace is quoted) and a free-text `NOTE` last. Warnings go to
//! stderr, so the table on stdout stays unchanged by them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{load_key_admin, open_fleet, usage_names};
use crate::config::KeyControls;
use crate::hsm::pkcs11::KeyListing;
use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// The column titles, in order; `NOTE` is free text and last.
const HEADER: [&str; 8] = [
    "MEMBER", "KEY", "VERSION", "LABEL", "SPEC", "USAGES", "STATUS", "NOTE",
];

/// One table row.
struct Row {
    cells: [String; 7],
    note: String,
}

/// The keys of one member.
pub(super) struct MemberKeys {
    /// The member's id.
    pub(super) member: String,
    /// Its keys.
    pub(super) keys: Vec<KeyListing>,
}

/// `keys list --config path`.
pub(super) fn list_keys(path: &Path) -> Result<(), String> {
    let (hsm, controls) = load_key_admin(path)?;
    let fleet = open_fleet(&hsm)?;
    let mut members: Vec<MemberKeys> = Vec::new();
    for member in fleet.members() {
        let keys = member
            .backend()
            .list_keys()
            .map_err(|e| format!("member {}: cannot list keys: {e}", member.id()))?;
        members.push(MemberKeys {
            member: member.id().to_owned(),
            keys,
        });
    }
    let rows: Vec<Row> = members
        .iter()
        .flat_map(|m| member_rows(&m.member, &m.keys, &controls))
        .collect();
    print_table(&rows);
    let refused = members
        .iter()
        .flat_map(|m| &m.keys)
        .filter(|key| !key.protection.is_servable())
        .count();
    if refused > 0 {
        // On stderr, so that scripts reading the table still get it unchanged.
        eprintln!(
            "xks-proxy: warning: {refused} key(s) marked REFUSED: the proxy refuses to serve keys \
             that are not private, sensitive and non-extractable (anyone with token access can \
             plant a public key under a known value); recreate them with `keys create`"
        );
    }
    if members.len() > 1 {
        report_consistency(&members);
    }
    Ok(())
}

/// The fleet consistency section, on stderr: exit status stays 0, since a missing version is
/// something to repair, not a failure of `keys list`.
fn report_consistency(members: &[MemberKeys]) {
    let warnings = fleet_warnings(members);
    if warnings.is_empty() {
        let keys = customer_versions(members).len();
        eprintln!(
            "xks-proxy: fleet consistency: each of the {} members holds every version of the {keys} \
             key(s) listed, with the same usages",
            members.len()
        );
        return;
    }
    for warning in &warnings {
        eprintln!("xks-proxy: warning: {warning}");
    }
    eprintln!(
        "xks-proxy: warning: fleet inconsistent: a member that lacks a version cannot decrypt \
         what was encrypted under it; copy the missing versions there with the same key \
         material (the vendor's cloning tools), or, if no proxy has encrypted under them yet, \
         disable them in [[keys]] (disabled_versions)"
    );
}

/// Versions of a key some members hold and others lack, and versions whose usages differ
/// between members: one message per key (and per differing version). Only keys the proxy
/// would serve count; the health-check key is per member and never compared.
pub(super) fn fleet_warnings(members: &[MemberKeys]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (id, versions) in customer_versions(members) {
        for MemberKeys { member, .. } in members {
            let missing: Vec<String> = versions
                .iter()
                .filter(|(_, holders)| !holders.iter().any(|(m, _)| m == member))
                .map(|(version, _)| version.to_string())
                .collect();
            if !missing.is_empty() {
                warnings.push(format!(
                    "key {id}: MISSING on member {member}: {}",
                    missing.join(", ")
                ));
            }
        }
        for (version, holders) in &versions {
            if holders.windows(2).any(|pair| pair[0].1 != pair[1].1) {
                let each: Vec<String> = holders
                    .iter()
                    .map(|(member, usages)| format!("{member} {usages}"))
                    .collect();
                warnings.push(format!(
                    "key {id} {version}: usages differ between members: {}",
                    each.join("; ")
                ));
            }
        }
    }
    warnings
}

/// Holders (member id, usages) of every version of every customer key the proxy would serve.
type Holders<'a> = BTreeMap<KeyVersion, Vec<(&'a str, String)>>;

fn customer_versions(members: &[MemberKeys]) -> BTreeMap<&ExternalKeyId, Holders<'_>> {
    let mut keys: BTreeMap<&ExternalKeyId, Holders<'_>> = BTreeMap::new();
    for MemberKeys {
        member,
        keys: listing,
    } in members
    {
        for key in listing {
            let Some(version) = key.version.as_ref() else {
                continue;
            };
            if key.health_check || !key.protection.is_servable() || !key.is_findable() {
                continue;
            }
            keys.entry(&version.id)
                .or_default()
                .entry(version.version)
                .or_default()
                .push((member.as_str(), usage_names(&key.usages)));
        }
    }
    keys
}

/// The rows of one member's keys: grouped by key id, versions in order.
fn member_rows(member: &str, keys: &[KeyListing], controls: &KeyControls) -> Vec<Row> {
    // Private objects the proxy would find under each version: more than one is ambiguous,
    // and the proxy then serves none of them.
    let mut found: HashMap<&VersionedKey, usize> = HashMap::new();
    for key in keys {
        if let Some(version) = key.version.as_ref().filter(|_| key.is_findable())
            && key.protection.private
        {
            *found.entry(version).or_default() += 1;
        }
    }
    let ambiguous = |version: &VersionedKey| found.get(version).is_some_and(|n| *n > 1);
    // The version each key encrypts under: the newest one the proxy may use.
    let mut encrypting: HashMap<&ExternalKeyId, KeyVersion> = HashMap::new();
    for key in keys {
        let Some(version) = key.version.as_ref() else {
            continue;
        };
        let usable = !key.health_check
            && key.protection.is_servable()
            && key.is_findable()
            && !ambiguous(version)
            && controls.key_enabled(&version.id)
            && controls.version_enabled(&version.id, version.version);
        if usable {
            let newest = encrypting.entry(&version.id).or_insert(version.version);
            *newest = (*newest).max(version.version);
        }
    }
    let mut sorted: Vec<&KeyListing> = keys.iter().collect();
    sorted.sort_by(|a, b| {
        let group = |k: &KeyListing| {
            k.version
                .as_ref()
                .map_or(k.label.clone(), |v| v.id.as_str().to_owned())
        };
        (group(a), version_of(a), &a.label).cmp(&(group(b), version_of(b), &b.label))
    });
    sorted
        .into_iter()
        .map(|key| {
            let (status, note) = status(key, controls, &ambiguous, &encrypting);
            let (id, number) = key
                .version
                .as_ref()
                .map_or(("-".to_owned(), "-".to_owned()), |v| {
                    (v.id.to_string(), v.version.get().to_string())
                });
            Row {
                cells: [
                    member.to_owned(),
                    id,
                    number,
                    shown_label(&key.label),
                    key.spec.as_str().to_owned(),
                    usage_names(&key.usages),
                    status.to_owned(),
                ],
                note,
            }
        })
        .collect()
}

/// The STATUS cell and the NOTE of one object.
fn status(
    key: &KeyListing,
    controls: &KeyControls,
    ambiguous: &dyn Fn(&VersionedKey) -> bool,
    encrypting: &HashMap<&ExternalKeyId, KeyVersion>,
) -> (&'static str, String) {
    let problems = key.protection.problems();
    if !problems.is_empty() {
        return (
            "REFUSED",
            format!("REFUSED: {}; never served", problems.join(", ")),
        );
    }
    if key.health_check {
        return (
            "health-check",
            "(health-check key, not served to KMS)".to_owned(),
        );
    }
    let Some(version) = key.version.as_ref() else {
        // Not a key id nor a version label: KMS can never name it.
        return ("-", String::new());
    };
    if ambiguous(version) {
        return (
            "AMBIGUOUS",
            "several private objects are this version; none is served".to_owned(),
        );
    }
    if !key.is_findable() {
        return (
            "UNFINDABLE",
            format!(
                "CKA_ID is not {}: the proxy never finds this version",
                version.id
            ),
        );
    }
    if !controls.key_enabled(&version.id) {
        return ("DISABLED", "key disabled by [[keys]]".to_owned());
    }
    if !controls.version_enabled(&version.id, version.version) {
        return (
            "version-disabled",
            "version disabled by [[keys]]".to_owned(),
        );
    }
    if encrypting.get(&version.id) == Some(&version.version) {
        ("encrypts", String::new())
    } else {
        ("enabled", String::new())
    }
}

/// A label as one whitespace-free cell: quoted (Rust string syntax) when it is empty or has
/// whitespace or control characters, so that columns stay splittable.
fn shown_label(label: &str) -> String {
    if label.is_empty() || label.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("{label:?}")
    } else {
        label.to_owned()
    }
}

/// The listing's version number (for sorting).
fn version_of(key: &KeyListing) -> Option<KeyVersion> {
    key.version.as_ref().map(|v| v.version)
}

fn print_table(rows: &[Row]) {
    let mut widths: [usize; 7] = std::array::from_fn(|i| HEADER[i].len());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(&row.cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7], note: &str| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        text.push_str(note);
        println!("{}", text.trim_end());
    };
    let [title @ .., note] = HEADER;
    line(title, note);
    for row in rows {
        line(row.cells.each_ref().map(String::as_str), &row.note);
    }
}
