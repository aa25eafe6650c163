//! Pooled multi-tenant users API, isolated by PostgreSQL Row Level Security.
//!
//! The modules follow one request down the stack:
//! [`config`] (read once at cold start) → [`token`] (verify the bearer JWT,
//! yielding a [`tenant::TenantContext`]) → [`db`] (the one connection, and the
//! tenant scope every statement runs in) → [`users`] (the SQL) →
//! [`http`] (routes) and [`problem`] (every error as problem+json).
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
pub mod config;
pub mod db;
pub mod gate;
pub mod http;
pub mod problem;
pub mod secret;
pub mod telemetry;
pub mod tenant;
pub mod token;
pub mod users;
