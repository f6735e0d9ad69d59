//! `xks-proxy keys create|import|rotate|list`: key administration on the configured token, or
//! on every member of an HSM fleet (`[[hsm.members]]`).
//!
//! These commands read only `[hsm]` (and, for `list` and `rotate`, the optional `[[keys]]` kill
//! switch): a new user makes keys before writing any key store. Key versions are named as
//! `crate::hsm::labels` says: version 1 of `K` is labelled `K`, version `n ≥ 2` is labelled
//! `K#v<n>` and carries `CKA_ID = K`.

mod listing;

use std::path::Path;
use std::sync::Arc;

use clap::Subcommand;
use zeroize::Zeroizing;

use super::{ConfigArg, init_cli_logging};
use crate::config::{self, Hsm, KeyControls};
use crate::hsm::labels::token_label;
use crate::hsm::{FleetBackend, FleetMember, KeyUsage, NoObserver};
use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// `keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an AES-256 token key: private, sensitive, non-extractable, neither modifiable
    /// nor copyable, with exactly the given usages. On a single token the key is generated
    /// inside the token. In a fleet (`[[hsm.members]]`, two or more) no two tokens can
    /// generate the same non-extractable key, so one AES-256 key is drawn from the OS CSPRNG
    /// and imported into every member, exactly as `keys import` does.
    Create {
        /// Configuration file; only its `[hsm]` section is read.
        #[command(flatten)]
        config: ConfigArg,
        /// The key's label, used by KMS as `XksKeyId` (A-Z a-z 0-9 - . _, ≤ 128).
        #[arg(long)]
        label: String,
        /// Comma-separated usages from encrypt, decrypt, wrap, unwrap, sign, verify, derive;
        /// `none` (or an empty string) for a key that may do nothing.
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
    },
    /// Generate one AES-256 key (OS CSPRNG) and create it, with the same key material, in
    /// every HSM member's token (`[[hsm.members]]`, else the `[hsm]` token), so that a
    /// SoftHSM/test fleet holds the same keys. Refuses if any member already has the label.
    /// For real HSM clusters, replicate keys with the vendor's own cloning tools instead.
    Import {
        /// Configuration file; only its `[hsm]` section is read.
        #[command(flatten)]
        config: ConfigArg,
        /// The key's label, used by KMS as `XksKeyId` (A-Z a-z 0-9 - . _, ≤ 128).
        #[arg(long)]
        label: String,
        /// Comma-separated usages, as for `keys create`.
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
    },
    /// Create the next version of a key: n+1, where n is the highest version any member
    /// holds, labelled `<label>#v<n+1>` with `CKA_ID = <label>`, protected like `keys create`
    /// makes keys, in every member's token with the same key material (generated inside the
    /// token when there is only one). Running proxies encrypt under it after their next
    /// reload; older versions keep decrypting what they encrypted. Refuses, creating nothing,
    /// if the key does not exist or any member already holds the new label.
    Rotate {
        /// Configuration file; only `[hsm]` and `[[keys]]` are read.
        #[command(flatten)]
        config: ConfigArg,
        /// The external key id (`XksKeyId`) to rotate.
        #[arg(long)]
        label: String,
        /// Comma-separated usages, as for `keys create`; default: those of the newest version.
        #[arg(long)]
        usage: Option<String>,
    },
    /// List the keys on every member's token, one row per object: each customer key with its
    /// versions (label, key spec, usages), the version that encrypts and the `[[keys]]` kill
    /// switch's status. Keys the proxy refuses to serve (not private, not sensitive or
    /// extractable) are marked REFUSED with the reason. In a fleet, versions that some members
    /// lack are reported on stderr.
    List {
        /// Configuration file; only `[hsm]` and `[[keys]]` are read.
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs a `keys` subcommand.
pub(super) fn run(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create {
            config,
            label,
            usage,
        } => create_key(&config.config, &label, &usage),
        KeysCommand::Import {
            config,
            label,
            usage,
        } => import_key(&config.config, &label, &usage),
        KeysCommand::Rotate {
            config,
            label,
            usage,
        } => rotate_key(&config.config, &label, usage.as_deref()),
        KeysCommand::List { config } => listing::list_keys(&config.config),
    }
}

/// Parses `--usage`: comma-separated names, `none` or empty for no usage at all.
fn parse_usages(list: &str) -> Result<Vec<KeyUsage>, String> {
    let mut usages = Vec::new();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "none")
    {
        usages.push(match name.to_ascii_lowercase().as_str() {
            "encrypt" => KeyUsage::Encrypt,
            "decrypt" => KeyUsage::Decrypt,
            "wrap" => KeyUsage::Wrap,
            "unwrap" => KeyUsage::Unwrap,
            "sign" => KeyUsage::Sign,
            "verify" => KeyUsage::Verify,
            "derive" => KeyUsage::Derive,
            _ => {
                return Err(format!(
                    "--usage: unknown usage {name:?}; use encrypt, decrypt, wrap, unwrap, sign, \
                     verify, derive or none"
                ));
            }
        });
    }
    usages.sort();
    usages.dedup();
    Ok(usages)
}

/// `ENCRYPT,DECRYPT`, or `-` for none.
fn usage_names(usages: &[KeyUsage]) -> String {
    if usages.is_empty() {
        return "-".to_owned();
    }
    let names: Vec<_> = usages.iter().map(|u| u.as_str()).collect();
    names.join(",")
}

/// `[hsm]` of `path`.
fn load_hsm(path: &Path) -> Result<Hsm, String> {
    config::load_hsm(path).map_err(|errors| format!("{}: {errors}", path.display()))
}

/// `[hsm]` and `[[keys]]` of `path`.
fn load_key_admin(path: &Path) -> Result<(Hsm, KeyControls), String> {
    config::load_key_admin(path).map_err(|errors| format!("{}: {errors}", path.display()))
}

/// Opens every member: the fleet, or the single token as a fleet of one (its id is then the
/// token serial).
fn open_fleet(hsm: &Hsm) -> Result<FleetBackend, String> {
    init_cli_logging();
    FleetBackend::open(&hsm.members(), Arc::new(NoObserver))
        .map_err(|e| format!("cannot open the HSM: {e}"))
}

fn create_key(path: &Path, label: &str, usage: &str) -> Result<(), String> {
    let label = ExternalKeyId::parse(label).map_err(|e| format!("--label: {e}"))?;
    let usages = parse_usages(usage)?;
    let fleet = open_fleet(&load_hsm(path)?)?;
    if let [member] = fleet.members() {
        member
            .backend()
            .create_key(&label, &usages)
            .map_err(|e| format!("cannot create key {label}: {e}"))?;
        println!(
            "created AES-256 key {label} with usages [{}]",
            usage_names(&usages)
        );
        return Ok(());
    }
    let key = VersionedKey::first(label);
    let done = import_everywhere(&fleet, &key, &usages, "created")?;
    println!(
        "created AES-256 key {} with usages [{}] in {} member(s): {} (a fleet cannot generate \
         one non-extractable key in several tokens: the same fresh key material, from the OS \
         CSPRNG, was imported into every member, as `keys import` does)",
        key.id,
        usage_names(&usages),
        done.len(),
        done.join(", ")
    );
    Ok(())
}

fn import_key(path: &Path, label: &str, usage: &str) -> Result<(), String> {
    let label = ExternalKeyId::parse(label).map_err(|e| format!("--label: {e}"))?;
    let usages = parse_usages(usage)?;
    let fleet = open_fleet(&load_hsm(path)?)?;
    let key = VersionedKey::first(label);
    let done = import_everywhere(&fleet, &key, &usages, "imported")?;
    println!(
        "imported AES-256 key {} with usages [{}] into {} member(s): {}",
        key.id,
        usage_names(&usages),
        done.len(),
        done.join(", ")
    );
    Ok(())
}

/// Creates `key` from one fresh AES-256 value (OS CSPRNG, zeroized on drop) in every member,
/// after checking that none holds its label yet; returns the members' ids. On a failure
/// midway, the error names the members that already got it.
fn import_everywhere(
    fleet: &FleetBackend,
    key: &VersionedKey,
    usages: &[KeyUsage],
    verb: &str,
) -> Result<Vec<String>, String> {
    refuse_taken_label(fleet, key, verb)?;
    let mut value = Zeroizing::new([0u8; 32]);
    getrandom::fill(value.as_mut_slice()).map_err(|e| format!("no randomness: {e}"))?;
    let mut done = Vec::new();
    for member in fleet.members() {
        member
            .backend()
            .import_key_version(key, &value, usages)
            .map_err(|e| partial_failure(member, key, &e, &done))?;
        done.push(member.id().to_owned());
    }
    Ok(done)
}

/// Fails, naming the members, if any member holds a private object labelled like `key`.
fn refuse_taken_label(fleet: &FleetBackend, key: &VersionedKey, verb: &str) -> Result<(), String> {
    let label = token_label(key);
    let mut taken = Vec::new();
    for member in fleet.members() {
        let exists = member
            .backend()
            .key_version_exists(key)
            .map_err(|e| format!("member {}: cannot look for {label}: {e}", member.id()))?;
        if exists {
            taken.push(member.id());
        }
    }
    match taken.as_slice() {
        [] => Ok(()),
        [one] => Err(format!(
            "member {one} already has a key labelled {label}; nothing {verb}"
        )),
        several => Err(format!(
            "members {}: each already has a key labelled {label}; nothing {verb}",
            several.join(", ")
        )),
    }
}

/// The error of a creation that failed on `member` after succeeding on `done`.
fn partial_failure(
    member: &FleetMember,
    key: &VersionedKey,
    err: &crate::hsm::HsmError,
    done: &[String],
) -> String {
    let mut message = format!(
        "member {}: cannot create {} ({key}): {err}",
        member.id(),
        token_label(key)
    );
    if !done.is_empty() {
        message.push_str(&format!(
            "; already created on: {} (`keys list` reports the version missing on the others)",
            done.join(", ")
        ));
    }
    message
}

fn rotate_key(path: &Path, label: &str, usage: Option<&str>) -> Result<(), String> {
    let id = ExternalKeyId::parse(label).map_err(|e| format!("--label: {e}"))?;
    let usages = usage.map(parse_usages).transpose()?;
    let (hsm, controls) = load_key_admin(path)?;
    if hsm.primary().health_key_label == id {
        return Err(format!(
            "{id} is the health-check key, never served to KMS; nothing to rotate"
        ));
    }
    let fleet = open_fleet(&hsm)?;
    let mut held = Vec::new();
    for member in fleet.members() {
        let versions = member.backend().key_versions_admin(&id).map_err(|e| {
            format!(
                "member {}: cannot list the versions of {id}: {e}",
                member.id()
            )
        })?;
        held.push(listing::MemberKeys {
            member: member.id().to_owned(),
            keys: versions,
        });
    }
    // The newest version anywhere decides both the next number and the usages to copy.
    let newest = held
        .iter()
        .flat_map(|m| &m.keys)
        .filter_map(|key| Some((key.version.as_ref()?.version, key)))
        .max_by_key(|(version, _)| *version);
    let Some((current, newest)) = newest else {
        return Err(format!(
            "key {id} does not exist on any member (no private object labelled {id} or \
             carrying CKA_ID {id}); create it with `keys create`; nothing created"
        ));
    };
    let next = current
        .next()
        .ok_or_else(|| format!("key {id} is at the last version {current}; nothing created"))?;
    let usages = usages.unwrap_or_else(|| newest.usages.clone());
    let key = VersionedKey::new(id, next);
    let done = if let [member] = fleet.members() {
        refuse_taken_label(&fleet, &key, "created")?;
        member
            .backend()
            .generate_key_version(&key, &usages)
            .map_err(|e| partial_failure(member, &key, &e, &[]))?;
        vec![member.id().to_owned()]
    } else {
        import_everywhere(&fleet, &key, &usages, "created")?
    };
    report_rotation(&key, &usages, &done, current, &controls);
    for warning in listing::fleet_warnings(&held) {
        eprintln!("xks-proxy: warning: before this rotation, {warning}");
    }
    Ok(())
}

/// What `keys rotate` made, and what happens next.
fn report_rotation(
    key: &VersionedKey,
    usages: &[KeyUsage],
    done: &[String],
    previous: KeyVersion,
    controls: &KeyControls,
) {
    let how = if done.len() > 1 {
        " (the same fresh key material, from the OS CSPRNG, imported into each)"
    } else {
        " (generated inside the token)"
    };
    println!(
        "created version {} of key {}: label {}, CKA_ID {}, AES-256, usages [{}], on {} \
         member(s): {}{how}",
        key.version.get(),
        key.id,
        token_label(key),
        key.id,
        usage_names(usages),
        done.len(),
        done.join(", ")
    );
    let older = if previous == KeyVersion::FIRST {
        "v1".to_owned()
    } else {
        format!("v1..{previous}")
    };
    println!(
        "next: running proxies encrypt under {} after their next reload (`systemctl reload \
         xks-proxy`, SIGHUP or POST /admin/reload) or within a minute; ciphertexts made under \
         {older} keep decrypting with their own version",
        key.version
    );
    if !controls.key_enabled(&key.id) {
        eprintln!(
            "xks-proxy: warning: key {} is disabled by [[keys]]: no version of it encrypts or \
             decrypts until it is enabled",
            key.id
        );
    } else if !controls.version_enabled(&key.id, key.version) {
        eprintln!(
            "xks-proxy: warning: [[keys]] disables {} of key {}: the proxy will not use it",
            key.version, key.id
        );
    }
}
