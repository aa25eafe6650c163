//! Pooled multi-tenant users API, isolated by PostgreSQL Row Level Security.
//!
//! The modules follow one request down the stack:
//! [`app::Config`] (read once at cold start, each module's settings parsed
//! next to it) → [`token`] (verify the bearer JWT, yielding a
//! [`tenant::TenantContext`]; `token/verify.rs` is where a token is
//! verified) → [`secret`] (the database credentials) → [`db`] (the one
//! connection, and the tenant scope every statement runs in: where the
//! tenant is set) → [`users`] (a resource: its SQL and routes, on the
//! parts every resource shares, [`resource`]) → [`http`] (the router) and
//! [`problem`] (every error as problem+json); [`telemetry`] writes each
//! request's log line and metrics.
//!
//! Where things are:
//!
//! - [`config`]: the configuration error and the parsers every module's
//!   settings share; [`token::config`], [`db::config`] and
//!   [`secret::config`] the settings themselves.
//! - [`token`]: `verify.rs` (the [`token::TokenManager`]), `jwks.rs` (the
//!   JWKS client and its refetch policy), `cache.rs` (verified tokens),
//!   [`token::fast_rs256`] (the `ring` RS256 verifier).
//! - [`db`]: the connection, the tenant scope, [`audit`] (the isolation
//!   self-audit of every new connection) and [`gate`] (the back-off gate
//!   for credentials).
//! - [`identity`]: the tenant users' identities in the Cognito user pool,
//!   kept in step with the `users` rows (and used by the control plane).
//! - [`clock`]: the time the guards keep (the system's, or a test's).
//!
//! [`app`] wires them together.
//!
//! One binary per function links this library: `api` (src/bin/api.rs, the
//! users API), `migrate` (crates/migrate: the migrations, the schema custom
//! resource and the local `migrate`/`audit` commands) and the local tool
//! `tenant-users` (crates/local: `serve`, `dev`, `token`). The API's
//! bootstrap therefore carries no migration runner or custom resource.

pub mod app;
pub mod audit;
pub mod clock;
pub mod coldstart;
pub mod config;
pub mod db;
pub mod entry;
pub mod gate;
pub mod http;
pub mod https;
pub mod identity;
pub mod problem;
pub mod resource;
pub mod secret;
pub mod telemetry;
pub mod tenant;
pub mod token;
pub mod users;
