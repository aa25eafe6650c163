//! HTTP routes: the same axum `Router` serves Lambda (through `lambda_http`)
//! and the local server. Handlers parse input into valid types, take the
//! caller from the verified token, and call the `users` module.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::app::App;
use crate::problem::ApiError;
use crate::telemetry;
use crate::tenant::TenantContext;
use crate::token::AuthError;
use crate::users::{self, Cursor, InvalidInput, NewUser, UserPatch};

/// Request bodies above this get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

type AppState = Arc<App>;

/// Every operation the API serves, as (method, path, handler). The router
/// is built from this table, and a test holds it equal to `openapi.yaml`.
fn operations() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/users", get(list_users)),
        (Method::POST, "/users", post(create_user)),
        (Method::GET, "/users/{user_id}", get(get_user)),
        (Method::PATCH, "/users/{user_id}", patch(update_user)),
        (Method::DELETE, "/users/{user_id}", delete(delete_user)),
    ]
}

/// The (method, path) pairs the router serves.
pub fn route_table() -> Vec<(Method, &'static str)> {
    operations()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

pub fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in operations() {
        router = router.route(path, handler);
    }
    #[cfg(feature = "test-panic")]
    {
        router = router.route("/__panic", get(test_panic));
    }
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            app.metrics.clone(),
            telemetry::observe,
        ))
        .with_state(app)
}

/// `GET /__panic`, only in builds with the `test-panic` feature (never a
/// deployed one): scripts/panic-check.sh proves with it that a panic costs
/// one failed invocation, and the next is served warm by the same process.
#[cfg(feature = "test-panic")]
async fn test_panic() -> StatusCode {
    panic!("GET /__panic: deliberate panic (feature test-panic)")
}

/// Serves the router on a local address until Ctrl-C.
pub async fn serve(app: AppState, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (is the port taken? set PORT)"),
        )
    })?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// The verified caller, taken from `Authorization: Bearer <jwt>`.
pub struct Caller(pub TenantContext);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        let caller = app.tokens.verify(token).await?;
        telemetry::record_tenant(caller.tenant().as_str());
        Ok(Caller(caller))
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed(
            "send exactly one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("Authorization header must be ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed(
        "Authorization header must be 'Bearer <token>'",
    ))?;
    // RFC 6750 schemes are case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "only the Bearer authorization scheme is accepted",
        ));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(AuthError::Malformed("bearer token is malformed"));
    }
    Ok(token)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_users(
    Caller(caller): Caller,
    State(app): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "invalid query string: {} (allowed: limit, cursor)",
            e.body_text()
        ))
    })?;
    let limit = users::parse_limit(params.limit.as_deref()).map_err(bad_request)?;
    let after = params
        .cursor
        .as_deref()
        .map(Cursor::decode)
        .transpose()
        .map_err(bad_request)?;
    let page = users::list(&app.db, &caller, limit, after).await?;
    Ok(Json(page).into_response())
}

async fn get_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = user_id(id)?;
    match users::get(&app.db, &caller, id).await? {
        Some(user) => Ok(Json(user).into_response()),
        None => Err(no_such_user()),
    }
}

async fn create_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let new = NewUser::from_json(json_object(&headers, body)?)?;
    let user = users::create(&app.db, &caller, &new).await?;
    let location = format!("/users/{}", user.user_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(user),
    )
        .into_response())
}

async fn update_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = user_id(id)?;
    let patch = UserPatch::from_json(json_object(&headers, body)?)?;
    match users::update(&app.db, &caller, id, &patch).await? {
        Some(user) => Ok(Json(user).into_response()),
        None => Err(no_such_user()),
    }
}

async fn delete_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = user_id(id)?;
    if users::delete(&app.db, &caller, id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(no_such_user())
    }
}

/// Absent and "in another tenant" look the same: never reveal the latter.
fn no_such_user() -> ApiError {
    ApiError::not_found("no such user")
}

fn bad_request(error: InvalidInput) -> ApiError {
    ApiError::bad_request(error.0)
}

fn user_id(path: Result<Path<String>, PathRejection>) -> Result<uuid::Uuid, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::bad_request("user_id must be a UUID"))?;
    users::parse_user_id(&raw).map_err(bad_request)
}

/// Reads the body as one JSON object: 415 for a non-JSON content type, 413
/// past the size limit, 400 for malformed JSON, 422 for JSON that is not an
/// object.
fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
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
    let bytes = body.map_err(|rejection| {
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
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid(InvalidInput(
            "request body must be a JSON object".into(),
        ))),
        Err(e) => Err(ApiError::malformed_json(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}
