//! What every tenant-scoped resource shares, so a new one is a migration
//! and a module (`users.rs` is the worked example; README, "Add a
//! tenant-scoped resource"):
//!
//! - [`Resource`]: a module's routes and statements, which the router, the
//!   OpenAPI test, the template test and the statement check all read;
//! - [`InvalidInput`] and [`parse_id`] for request values;
//! - [`PageRequest`], [`Cursor`] and [`Page`]: keyset pagination over
//!   `(created_at, id)` within the caller's tenant;
//! - [`JsonObject`]: the body as one JSON object, or the right 4xx;
//! - [`not_found`]: the one answer for "absent" and "another tenant's".
//!
//! Database errors are mapped by constraint in `problem.rs`, for every
//! resource alike.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::routing::MethodRouter;
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::app::App;
use crate::problem::ApiError;

/// The router's state: the app built once at cold start.
pub type AppState = Arc<App>;

/// One route of a resource: method, path (axum syntax, `{param}`) and
/// handler.
pub type Operation = (Method, &'static str, MethodRouter<AppState>);

/// A tenant-scoped resource as the rest of the service sees it.
#[derive(Clone, Copy)]
pub struct Resource {
    /// The collection's name, e.g. `users` (its path is `/users`).
    pub name: &'static str,
    /// The tenant table it keeps its rows in; the self-audit checks that
    /// the app role may SELECT, INSERT, UPDATE and DELETE in it.
    pub table: &'static str,
    /// Its routes; the router serves exactly these, and tests hold
    /// `openapi.yaml` and `template.yaml` to them.
    pub operations: fn() -> Vec<Operation>,
    /// Every SQL statement it runs, each checked by [`check_statement`].
    pub statements: &'static [&'static str],
}

/// Request bodies above this get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 100;

/// The caller sent something we cannot accept; the text says what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidInput(pub String);

pub fn invalid(msg: impl Into<String>) -> InvalidInput {
    InvalidInput(msg.into())
}

/// A statement may run for a tenant only if it filters on the tenant
/// itself (`tenant_id = $1`) or writes its row with the tenant as the first
/// value (`VALUES ($1, ...`): a second layer under RLS, and the reason `$1`
/// is always the token's tenant ([`crate::db::Database::run`] binds it).
pub fn check_statement(sql: &str) -> Result<(), String> {
    let normalized = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let upper = normalized.to_ascii_uppercase();
    let filters = normalized.contains("tenant_id = $1");
    if upper.starts_with("INSERT INTO ") {
        if !upper.contains(" VALUES ($1,") {
            return Err(format!(
                "an INSERT must write the tenant as its first value, VALUES ($1, ...): {sql}"
            ));
        }
        if !upper.contains("(TENANT_ID,") {
            return Err(format!(
                "an INSERT must name tenant_id as its first column: {sql}"
            ));
        }
        return Ok(());
    }
    if !filters {
        return Err(format!(
            "a statement must filter on tenant_id = $1 itself: {sql}"
        ));
    }
    Ok(())
}

pub fn parse_limit(raw: Option<&str>) -> Result<i64, InvalidInput> {
    match raw {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "limit must be a whole number from 1 to {MAX_PAGE_SIZE}"
                ))
            }),
    }
}

/// A UUID path or body value; `field` names it in the error.
pub fn parse_id(raw: &str, field: &str) -> Result<Uuid, InvalidInput> {
    Uuid::try_parse(raw).map_err(|_| invalid(format!("{field} must be a UUID")))
}

/// The `{id}` of a resource's path, as a UUID, or 400 naming `field`.
pub fn path_id(path: Result<Path<String>, PathRejection>, field: &str) -> Result<Uuid, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::bad_request(format!("{field} must be a UUID")))?;
    parse_id(&raw, field).map_err(|e| ApiError::bad_request(e.0))
}

/// Absent and "in another tenant" look the same: never reveal the latter.
pub fn not_found(noun: &str) -> ApiError {
    ApiError::not_found(format!("no such {noun}"))
}

/// Position after the last row of a page: (created_at, id), the order
/// every list walks within a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: SystemTime,
    pub id: Uuid,
}

impl Cursor {
    /// `<created_at in µs since 1970>-<id as 32 hex digits>`: opaque to
    /// clients, but of a shape the API spec can state exactly.
    pub fn encode(&self) -> String {
        let micros = self
            .created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        format!("{micros}-{}", self.id.simple())
    }

    pub fn decode(raw: &str) -> Result<Self, InvalidInput> {
        let bad = || invalid("cursor is invalid: pass back next_cursor unchanged");
        let (micros, id) = raw.split_once('-').ok_or_else(bad)?;
        if !(1..=17).contains(&micros.len())
            || !micros.bytes().all(|b| b.is_ascii_digit())
            || id.len() != 32
            || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let micros: u64 = micros.parse().map_err(|_| bad())?;
        let created_at = UNIX_EPOCH
            .checked_add(Duration::from_micros(micros))
            .ok_or_else(bad)?;
        let id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Self { created_at, id })
    }
}

/// `?limit=&cursor=` of a list route, parsed: 400 for anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Rows to fetch: one more than the page, to learn whether another
    /// page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<ListParams>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "invalid query string: {} (allowed: limit, cursor)",
                    e.body_text()
                ))
            })?;
        let bad = |e: InvalidInput| ApiError::bad_request(e.0);
        Ok(PageRequest {
            limit: parse_limit(params.limit.as_deref()).map_err(bad)?,
            after: params
                .cursor
                .as_deref()
                .map(Cursor::decode)
                .transpose()
                .map_err(bad)?,
        })
    }
}

/// One page of a list, serialized as `{"<key>": [...], "next_cursor": ...}`.
#[derive(Debug)]
pub struct Page<T> {
    key: &'static str,
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The page from rows fetched with `LIMIT request.fetch()`: at most
    /// `limit` items, and a cursor when more rows followed. `position`
    /// reads (created_at, id) from a row.
    pub fn from_rows(
        key: &'static str,
        rows: &[Row],
        request: &PageRequest,
        item: impl Fn(&Row) -> T,
        position: impl Fn(&Row) -> Cursor,
    ) -> Self {
        let limit = usize::try_from(request.limit).unwrap_or(0);
        let page = &rows[..rows.len().min(limit)];
        let next_cursor = match page.last() {
            Some(last) if rows.len() > limit => Some(position(last).encode()),
            _ => None,
        };
        Page {
            key,
            items: page.iter().map(item).collect(),
            next_cursor,
        }
    }
}

impl<T: Serialize> Serialize for Page<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(self.key, &self.items)?;
        map.serialize_entry("next_cursor", &self.next_cursor)?;
        map.end()
    }
}

/// The request body as one JSON object: 415 for a non-JSON content type,
/// 413 past [`MAX_BODY_BYTES`], 400 for malformed JSON, 422 for JSON that
/// is not an object.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::unsupported_media_type());
            }
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::payload_too_large(MAX_BODY_BYTES)
                } else {
                    ApiError::bad_request(format!(
                        "could not read the request body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::invalid(invalid(
                "request body must be a JSON object",
            ))),
            Err(e) => Err(ApiError::malformed_json(format!(
                "request body is not valid JSON: {e}"
            ))),
        }
    }
}

/// A string field of a body, bounded and trimmed, without control
/// characters: the shape most text columns want.
pub fn text(field: &str, raw: &str, max_chars: usize) -> Result<String, InvalidInput> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max_chars {
        return Err(invalid(format!(
            "{field} must be 1 to {max_chars} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// The refusal for a body that names the tenant: it comes from the token.
pub fn tenant_in_body() -> InvalidInput {
    invalid("tenant_id must not be sent: the tenant comes from your token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_statement_of_every_resource_filters_on_the_tenant_itself() {
        for resource in crate::http::RESOURCES {
            assert!(!resource.statements.is_empty(), "{}", resource.name);
            for sql in resource.statements {
                check_statement(sql).unwrap();
            }
        }
    }

    #[test]
    fn the_statement_check_refuses_what_it_should() {
        for bad in [
            "SELECT * FROM users",
            "SELECT * FROM users WHERE user_id = $1",
            "DELETE FROM users WHERE tenant_id = $2",
            "INSERT INTO users (email, tenant_id) VALUES ($2, $1)",
            "INSERT INTO users (tenant_id, email) SELECT $1, $2",
            "UPDATE users SET name = $3 WHERE user_id = $2",
        ] {
            assert!(check_statement(bad).is_err(), "{bad}");
        }
        for good in [
            "SELECT a FROM t WHERE tenant_id = $1 AND id = $2",
            "INSERT INTO t (tenant_id, a) VALUES ($1, $2) RETURNING a",
            "UPDATE t SET a = $3 WHERE tenant_id = $1\n AND id = $2",
        ] {
            assert!(check_statement(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None), Ok(50));
        assert_eq!(parse_limit(Some("100")), Ok(100));
        for bad in ["0", "101", "-1", "ten", "1e2", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_fields_are_trimmed_and_bounded() {
        assert_eq!(text("name", "  Ada ", 200).unwrap(), "Ada");
        assert!(text("name", "   ", 200).is_err());
        assert!(text("name", &"x".repeat(201), 200).is_err());
        assert!(text("name", "a\u{0}b", 200).is_err());
    }

    proptest! {
        #[test]
        fn cursors_round_trip(micros in 0u64..99_999_999_999_999_999, id in any::<u128>()) {
            let c = Cursor { created_at: UNIX_EPOCH + Duration::from_micros(micros), id: Uuid::from_u128(id) };
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn junk_cursors_are_refused_not_panicking(raw in any::<String>()) {
            let _ = Cursor::decode(&raw);
        }
    }
}
