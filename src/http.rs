//! HTTP routes: the same axum `Router` serves Lambda (through `lambda_http`)
//! and the local server. Handlers parse input into valid types, take the
//! caller from the verified token, and call the `users` module.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware;

use crate::problem::ApiError;
use crate::resource::{AppState, MAX_BODY_BYTES, Operation, Resource};
use crate::telemetry;
use crate::tenant::{TenantAdmin, TenantContext};
use crate::token::AuthError;
use crate::users;

/// Every resource the API serves. A new resource module is added here,
/// and its routes follow: the router, and the tests that hold
/// `openapi.yaml` and `template.yaml` to the router.
pub const RESOURCES: &[Resource] = &[users::RESOURCE];

/// Every operation of `resources`, as (method, path, handler).
fn operations(resources: &[Resource]) -> Vec<Operation> {
    resources.iter().flat_map(|r| (r.operations)()).collect()
}

/// The (method, path) pairs the router serves.
pub fn route_table() -> Vec<(Method, &'static str)> {
    operations(RESOURCES)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

pub fn router(app: AppState) -> Router {
    router_for(app, RESOURCES)
}

/// The router over `resources` (tests add resources of their own).
pub fn router_for(app: AppState, resources: &[Resource]) -> Router {
    // A second method on a path already routed merges into it.
    let mut router = Router::new();
    for (_, path, handler) in operations(resources) {
        router = router.route(path, handler);
    }
    #[cfg(feature = "test-panic")]
    {
        router = router.route("/__panic", axum::routing::get(test_panic));
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
async fn test_panic() -> axum::http::StatusCode {
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

/// A verified caller in the tenant-admin group; any other verified caller
/// gets 403 `/problems/admin-required` before the handler (and its body
/// parsing, and the database) runs.
pub struct Admin(pub TenantAdmin);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::from_request_parts(parts, app).await?;
        match caller.admin() {
            Some(admin) => Ok(Admin(admin)),
            None => {
                tracing::info!("write refused: the caller is not a tenant admin");
                Err(ApiError::admin_required())
            }
        }
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
