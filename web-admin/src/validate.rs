//! Input rules shared by the JSON API and the HTML forms, so both refuse the same input
//! with the same field message before anything is stored.

use crate::error::{AdminError, AdminResult, FieldError};
use crate::model::{NewAccount, NewRoom, RoomUpdate};

/// Check a SIP user part as used for room names and account users: 1-64 characters of
/// letters, digits, `.`, `_`, `-`, `~` (RFC 3261 unreserved), starting with a letter or digit.
pub fn sip_user_part(field: &str, value: &str) -> Option<FieldError> {
    let msg = if value.is_empty() {
        Some("is required")
    } else if value.len() > 64 {
        Some("must be at most 64 characters")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~'))
    {
        Some("may contain only letters, digits, '.', '_', '-' and '~' (a SIP user part)")
    } else if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("must start with a letter or digit")
    } else {
        None
    };
    msg.map(|m| FieldError {
        field: field.to_string(),
        message: m.to_string(),
    })
}

fn pin(p: &Option<String>) -> Option<FieldError> {
    let p = p.as_deref()?;
    if (4..=12).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) {
        None
    } else {
        Some(FieldError {
            field: "pin".into(),
            message: "must be 4 to 12 digits".into(),
        })
    }
}

fn max(m: Option<u32>) -> Option<FieldError> {
    match m {
        Some(n) if !(2..=1000).contains(&n) => Some(FieldError {
            field: "max_participants".into(),
            message: "must be between 2 and 1000".into(),
        }),
        _ => None,
    }
}

fn collect(errs: Vec<Option<FieldError>>) -> AdminResult<()> {
    let errs: Vec<FieldError> = errs.into_iter().flatten().collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(AdminError::Invalid(errs))
    }
}

/// Validate a room to create.
pub fn new_room(r: &NewRoom) -> AdminResult<()> {
    collect(vec![
        sip_user_part("name", &r.name),
        pin(&r.pin),
        max(r.max_participants),
    ])
}

/// Validate a room change.
pub fn room_update(r: &RoomUpdate) -> AdminResult<()> {
    collect(vec![pin(&r.pin), max(r.max_participants)])
}

/// Validate a SIP account password.
pub fn password(p: &str) -> Option<FieldError> {
    if (8..=128).contains(&p.chars().count()) {
        None
    } else {
        Some(FieldError {
            field: "password".into(),
            message: "must be 8 to 128 characters".into(),
        })
    }
}

/// Validate an account to add.
pub fn new_account(a: &NewAccount) -> AdminResult<()> {
    collect(vec![sip_user_part("user", &a.user), password(&a.password)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(sip_user_part("name", "standup-1").is_none());
        assert!(sip_user_part("name", "").is_some());
        assert!(sip_user_part("name", "a b").is_some());
        assert!(sip_user_part("name", "-x").is_some());
        assert!(sip_user_part("name", "a@b").is_some());
        assert!(sip_user_part("name", &"a".repeat(65)).is_some());
    }
}
