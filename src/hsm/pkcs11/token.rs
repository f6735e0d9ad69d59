//! Token selection, token identity and logged-in sessions (PKCS#11 v3.2 §5.5 slot and token
//! management, §5.6 session management; XKS spec GetHealthStatus `ekmFleetDetails`, H-9/H-10).
//!
//! A token is chosen by its label or serial number, compared without PKCS#11's blank padding,
//! never by slot index: slot numbers change across reboots and, with SoftHSM, on every
//! `--init-token`. Login state belongs to the application, not to a session, so a second
//! `C_Login` answering `CKR_USER_ALREADY_LOGGED_IN` is success.

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use secrecy::SecretString;

use super::errors::{Operation, fail};
use super::timing::{call, timed};
use crate::config::TokenSelector;
use crate::hsm::HsmError;
use crate::hsm::HsmObserver;

/// Who the token says it is, from `C_GetTokenInfo`; for startup logs and health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// `manufacturerID`, e.g. `SoftHSM project`.
    pub manufacturer: String,
    /// `model`, e.g. `SoftHSM v2`.
    pub model: String,
    /// `serialNumber`: unique within the fleet (H-10).
    pub serial: String,
    /// The token label.
    pub label: String,
    /// `hardwareVersion` as `major.minor`.
    pub hardware_version: String,
    /// `firmwareVersion` as `major.minor`.
    pub firmware_version: String,
}

impl TokenIdentity {
    /// `<model> hw <x.y> fw <x.y>`, the `ekmFleetDetails[].model` string (H-9).
    pub fn model_description(&self) -> String {
        format!(
            "{} hw {} fw {}",
            self.model, self.hardware_version, self.firmware_version
        )
    }

    fn from_info(info: &TokenInfo) -> Self {
        Self {
            manufacturer: info.manufacturer_id().trim().to_owned(),
            model: info.model().trim().to_owned(),
            serial: info.serial_number().trim().to_owned(),
            label: info.label().trim().to_owned(),
            hardware_version: info.hardware_version().to_string(),
            firmware_version: info.firmware_version().to_string(),
        }
    }
}

/// Finds the one initialised token that `selector` names.
pub(super) fn select(
    pkcs11: &Pkcs11,
    observer: &dyn HsmObserver,
    selector: &TokenSelector,
) -> Result<Slot, HsmError> {
    let slots = call(observer, "C_GetSlotList", Operation::Session, || {
        pkcs11.get_slots_with_initialized_token()
    })?;
    let mut matches = Vec::new();
    let mut seen = Vec::new();
    for slot in slots {
        let info = call(observer, "C_GetTokenInfo", Operation::Session, || {
            pkcs11.get_token_info(slot)
        })?;
        let (label, serial) = (info.label().trim(), info.serial_number().trim());
        let hit = match selector {
            TokenSelector::Label(want) => label == want.trim(),
            TokenSelector::Serial(want) => serial == want.trim(),
        };
        if hit {
            matches.push(slot);
        }
        seen.push(format!("label {label:?} serial {serial:?}"));
    }
    match matches.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(HsmError::Unavailable(format!(
            "no initialised token matches {selector:?}; tokens present: [{}]",
            seen.join(", ")
        ))),
        several => Err(HsmError::Unavailable(format!(
            "{} tokens match {selector:?}; select the token by serial number instead",
            several.len()
        ))),
    }
}

/// Reads the token identity of `slot`.
pub(super) fn identity(
    pkcs11: &Pkcs11,
    observer: &dyn HsmObserver,
    slot: Slot,
    op: Operation,
) -> Result<TokenIdentity, HsmError> {
    let info = call(observer, "C_GetTokenInfo", op, || {
        pkcs11.get_token_info(slot)
    })?;
    Ok(TokenIdentity::from_info(&info))
}

/// Opens a session on `slot` (R/W when `read_write`) and makes sure the user is logged in.
pub(super) fn open_session(
    pkcs11: &Pkcs11,
    observer: &dyn HsmObserver,
    slot: Slot,
    pin: &SecretString,
    read_write: bool,
) -> Result<Session, HsmError> {
    let op = Operation::Session;
    let session = call(observer, "C_OpenSession", op, || {
        if read_write {
            pkcs11.open_rw_session(slot)
        } else {
            pkcs11.open_ro_session(slot)
        }
    })?;
    login(&session, observer, pin).map_err(|e| fail(&e, op))?;
    Ok(session)
}

/// `C_Login` as CKU_USER; an application that is already logged in counts as success.
///
/// cryptoki exposes the PIN only for the duration of the call; `SecretString` wipes it on drop.
pub(super) fn login(
    session: &Session,
    observer: &dyn HsmObserver,
    pin: &SecretString,
) -> Result<(), Error> {
    match timed(observer, "C_Login", || {
        session.login(UserType::User, Some(pin))
    }) {
        Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) | Ok(()) => Ok(()),
        Err(err) => Err(err),
    }
}
