//! Every failure, mapped to an HTTP status and an RFC 9457
//! `application/problem+json` body, in this one place.
//!
//! Callers get a clear, safe `detail`; causes (SQL errors, connection
//! errors) go to the log with their chain, never to the caller.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db::{DbError, Refusal, Violation, ViolationKind, error_chain};
use crate::resource::InvalidInput;
use crate::token::AuthError;

pub const PROBLEM_JSON: &str = "application/problem+json";
const REALM: &str = "tenant-users";

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    /// The problem's title, when the status's reason phrase would not
    /// tell two problems of one status apart.
    title: Option<&'static str>,
    detail: String,
    www_authenticate: Option<String>,
    retry_after_seconds: Option<u32>,
    /// The field of the request at fault, as an extension member
    /// (`"field"`), where one is known.
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            title: None,
            detail: detail.into(),
            www_authenticate: None,
            retry_after_seconds: None,
            field: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-json", detail)
    }

    pub fn invalid(error: InvalidInput) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-input", error.0)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this route does not support that method",
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("request body is larger than {} KiB", limit / 1024),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "request body must be JSON (Content-Type: application/json)",
        )
    }

    /// A member (no [`crate::tenant::ADMIN_GROUP`] in the token) asked to
    /// write: refused before anything is touched.
    pub fn admin_required() -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "admin-required",
            format!(
                "this operation needs the {} role in your tenant; members may only read",
                crate::tenant::ADMIN_GROUP
            ),
        );
        e.title = Some("Tenant admin required");
        e
    }

    /// The email is taken in the user pool, which is shared by every
    /// tenant: the same answer as a duplicate row, naming no tenant.
    pub fn email_taken() -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "duplicate",
            "a user with this email already exists",
        );
        e.field = Some("email".into());
        e
    }

    /// The email of a user is its sign-in name in the user pool, which
    /// cannot be renamed.
    pub fn email_immutable() -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
            "email cannot be changed: it is the user's sign-in name; delete the user and create it again",
        );
        e.field = Some("email".into());
        e
    }

    /// The user pool could not be reached or refused the call; nothing of
    /// the request is left behind (the caller may retry).
    pub fn identity_unavailable() -> Self {
        Self::identity_unavailable_for(std::time::Duration::from_secs(1))
    }

    /// As [`ApiError::identity_unavailable`], with `Retry-After` the time
    /// until the pool is called again.
    pub fn identity_unavailable_for(wait: std::time::Duration) -> Self {
        Self::unavailable(
            "identity-unavailable",
            "the user directory is unavailable; nothing was changed, retry shortly",
            retry_after_seconds(wait),
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A problem of its own kind (`/problems/<kind>`), for callers outside
    /// this module: the control plane's operator check and conflicts.
    pub fn other(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(status, kind, detail)
    }

    /// 503 with `Retry-After`: a dependency is down or unconfigured.
    pub fn unavailable(kind: &'static str, detail: &str, retry_after: u32) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, detail);
        e.retry_after_seconds = Some(retry_after);
        e
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        // RFC 6750 §3: no error code when credentials are simply missing.
        let challenge = match &error {
            AuthError::Missing => format!("Bearer realm=\"{REALM}\""),
            AuthError::Malformed(_) => {
                format!("Bearer realm=\"{REALM}\", error=\"invalid_request\"")
            }
            AuthError::Invalid(_) => format!("Bearer realm=\"{REALM}\", error=\"invalid_token\""),
            AuthError::KeysUnavailable => {
                tracing::error!("rejecting request: token verification keys are unavailable");
                return Self::unavailable(
                    "auth-unavailable",
                    "token verification is temporarily unavailable",
                    5,
                );
            }
        };
        tracing::info!(reason = %error, "request not authenticated");
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string());
        e.www_authenticate = Some(challenge);
        e
    }
}

impl From<InvalidInput> for ApiError {
    fn from(error: InvalidInput) -> Self {
        Self::invalid(error)
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        let chain = error_chain(&error);
        match error {
            DbError::Refused(refusal) => Self::refused(refusal),
            DbError::Rejected(violation) => Self::rejected(&violation),
            DbError::Unavailable(_) => {
                tracing::error!(error = %chain, "database unavailable");
                Self::unavailable(
                    "database-unavailable",
                    "the database is unavailable; retry shortly",
                    1,
                )
            }
            DbError::Misconfigured(_) => {
                tracing::error!(error = %chain, "refusing to serve");
                Self::unavailable(
                    "misconfigured",
                    "the deployment is misconfigured: tenant isolation could not be verified",
                    30,
                )
            }
            DbError::Credentials { retry_after, .. } => {
                tracing::error!(error = %chain, "database credentials unavailable");
                Self::unavailable(
                    "credentials-unavailable",
                    "the database credentials are unavailable; retry shortly",
                    retry_after_seconds(retry_after),
                )
            }
            DbError::Timeout(_) => {
                tracing::error!(error = %chain, "statement timed out");
                Self::unavailable("timeout", "the request took too long; retry shortly", 1)
            }
            // Serialization failures, deadlocks, or a statement the schema
            // does not fit: never the request's fault, and never its text.
            DbError::Query(_) => {
                tracing::error!(error = %chain, "database error");
                Self::unavailable(
                    "database-error",
                    "the database could not complete the request; retry shortly",
                    1,
                )
            }
        }
    }
}

impl ApiError {
    /// A broken constraint, answered by what it says about the request,
    /// for every resource alike: 409 for a value taken or a row still
    /// referenced, 422 for a reference to nothing or a value the column
    /// refuses. The detail and the `field` member name the field, from the
    /// constraint's name (`db::constraint_field`).
    fn rejected(violation: &Violation) -> Self {
        tracing::info!(violation = %violation, "statement rejected");
        let table = violation.table.as_deref().unwrap_or("this resource");
        let field = violation.field();
        let named = field.as_deref().unwrap_or("a field");
        let (status, kind, detail) = match violation.kind {
            ViolationKind::Unique => (
                StatusCode::CONFLICT,
                "duplicate",
                match &field {
                    Some(f) => format!("a {table} row with this {f} already exists in your tenant"),
                    None => {
                        format!("a {table} row with these values already exists in your tenant")
                    }
                },
            ),
            ViolationKind::ForeignKey { deleting: true } => (
                StatusCode::CONFLICT,
                "still-referenced",
                format!(
                    "this row is still referenced by {table} ({named}): delete or change those rows first"
                ),
            ),
            ViolationKind::ForeignKey { deleting: false } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-reference",
                format!("{named} refers to nothing in your tenant"),
            ),
            ViolationKind::NotNull => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-input",
                format!("{named} is required"),
            ),
            ViolationKind::Check | ViolationKind::Data => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-input",
                format!("{named} has a value this resource does not accept"),
            ),
        };
        let mut e = Self::new(status, kind, detail);
        e.field = field;
        e
    }

    /// The registry's answer for the caller's tenant: 403 for a tenant that
    /// may not be served, 429 with `Retry-After` for one over its limits.
    fn refused(refusal: Refusal) -> Self {
        tracing::info!(reason = %refusal, "tenant refused");
        let (status, kind, title, detail, retry) = match refusal {
            Refusal::Unknown => (
                StatusCode::FORBIDDEN,
                "tenant-unknown",
                "Tenant not registered",
                "your tenant is not registered with this service",
                None,
            ),
            Refusal::Suspended => (
                StatusCode::FORBIDDEN,
                "tenant-suspended",
                "Tenant suspended",
                "your tenant is suspended; contact the service's operator",
                None,
            ),
            Refusal::RateLimited { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Tenant over its request rate",
                "your tenant is over its tier's request rate; retry after the time in Retry-After",
                Some(retry_after),
            ),
            Refusal::Busy { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-concurrent",
                "Tenant over its concurrent requests",
                "your tenant has as many requests running as its tier allows; retry after the time in Retry-After",
                Some(retry_after),
            ),
        };
        let mut e = Self::new(status, kind, detail);
        e.title = Some(title);
        e.retry_after_seconds = retry.map(retry_after_seconds);
        e
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_seconds(wait: std::time::Duration) -> u32 {
    u32::try_from(wait.as_millis().div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self
            .title
            .or(self.status.canonical_reason())
            .unwrap_or("Error");
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(challenge) = self
            .www_authenticate
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
