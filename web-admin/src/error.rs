//! The crate's one error type, shared by the traits and the handlers.

use serde::Serialize;
use utoipa::ToSchema;

/// One field of a request or a form that failed validation, with the message the
/// operator sees beside it (in the HTML form) or in a problem document's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Name of the field as it appears in the JSON body or the form (`name`, `pin`, ...).
    pub field: String,
    /// Human-readable explanation of what is wrong and what is accepted.
    pub message: String,
}

/// Every failure the admin can report. The traits that supernode implements return it,
/// so a store's error maps to the right HTTP status without the crate knowing the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// Input was rejected; each field names what is wrong (HTTP 422).
    #[error("invalid input: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The request itself is malformed (bad JSON, wrong content type) (HTTP 400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The named object does not exist (HTTP 404).
    #[error("{0} not found")]
    NotFound(String),
    /// The object already exists or the change conflicts with the current state (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A service needed for this request is down or not configured (HTTP 503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else that went wrong inside the node (HTTP 500); the text is logged-safe.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    /// Shorthand for a single-field validation error.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        AdminError::Invalid(vec![FieldError {
            field: field.to_string(),
            message: message.into(),
        }])
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            AdminError::Invalid(_) => S::UNPROCESSABLE_ENTITY,
            AdminError::BadRequest(_) => S::BAD_REQUEST,
            AdminError::NotFound(_) => S::NOT_FOUND,
            AdminError::Conflict(_) => S::CONFLICT,
            AdminError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            AdminError::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message for `field`, if this is a validation error naming it.
    pub fn field_message(&self, field: &str) -> Option<&str> {
        match self {
            AdminError::Invalid(errs) => errs
                .iter()
                .find(|e| e.field == field)
                .map(|e| e.message.as_str()),
            _ => None,
        }
    }
}

/// Result alias used by every trait method.
pub type AdminResult<T> = Result<T, AdminError>;
