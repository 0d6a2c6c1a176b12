//! API errors and their `meta.k8s.io/v1` `Status` bodies.
//!
//! Owns the mapping from a failed request to the HTTP code, `reason` and
//! message a real kube-apiserver would send. It never decides *whether* a
//! request fails; the store, patch and apply modules do.

use serde_json::{Value, json};

/// One field-manager conflict reported by server-side apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    /// The manager that owns the field.
    pub manager: String,
    /// Dotted path such as `.spec.keyId`.
    pub field: String,
}

/// A request failure, rendered as a Kubernetes `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { kind: String, name: String },
    #[error("Apply failed with {} conflict{}: {}", .conflicts.len(), if .conflicts.len() == 1 { "" } else { "s" }, render_conflicts(.conflicts))]
    ApplyConflicts { conflicts: Vec<ApplyConflict> },
    #[error("{0}")]
    BadRequest(String),
    #[error("{kind} \"{name}\" is invalid: {message}")]
    Invalid {
        kind: String,
        name: String,
        message: String,
    },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server has received too many requests and has asked us to try again later")]
    TooManyRequests,
    #[error("Internal error occurred: {0}")]
    Internal(String),
    #[error(
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
    )]
    UnsupportedMediaType,
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PatchFailed(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("Unauthorized")]
    Unauthorized,
}

fn render_conflicts(conflicts: &[ApplyConflict]) -> String {
    conflicts
        .iter()
        .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ApiError {
    pub fn not_found(kind: &str, name: &str) -> Self {
        ApiError::NotFound {
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    pub fn invalid(kind: &str, name: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            kind: kind.to_string(),
            name: name.to_string(),
            message: message.into(),
        }
    }

    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflicts { .. } => 409,
            ApiError::BadRequest(_) => 400,
            ApiError::Invalid { .. } | ApiError::PatchFailed(_) => 422,
            ApiError::MethodNotAllowed => 405,
            ApiError::Forbidden(_) => 403,
            ApiError::Unauthorized => 401,
            ApiError::TooManyRequests => 429,
            ApiError::Internal(_) => 500,
            ApiError::UnsupportedMediaType => 415,
            ApiError::Gone(_) => 410,
        }
    }

    /// The bounded `reason` string of the `Status`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflicts { .. } => "Conflict",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Invalid { .. } | ApiError::PatchFailed(_) => "Invalid",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::TooManyRequests => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
            ApiError::UnsupportedMediaType => "UnsupportedMediaType",
            ApiError::Gone(_) => "Expired",
        }
    }

    /// The `Status` object a real apiserver would return.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { kind, name }
            | ApiError::AlreadyExists { kind, name }
            | ApiError::Conflict { kind, name }
            | ApiError::Invalid { kind, name, .. } => Some(json!({"name": name, "kind": kind})),
            ApiError::ApplyConflicts { conflicts } => Some(json!({
                "causes": conflicts.iter().map(|c| json!({
                    "type": "FieldManagerConflict",
                    "message": format!("conflict with \"{}\"", c.manager),
                    "field": c.field,
                })).collect::<Vec<_>>()
            })),
            ApiError::TooManyRequests => Some(json!({"retryAfterSeconds": 1})),
            _ => None,
        };
        if let (Some(details), Some(map)) = (details, status.as_object_mut()) {
            map.insert("details".into(), details);
        }
        status
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
