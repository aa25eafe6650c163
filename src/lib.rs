//! Pooled multi-tenant users API, isolated by PostgreSQL Row Level Security.
//!
//! The modules follow one request down the stack:
//! [`config`] (read once at cold start) → [`token`] (verify the bearer JWT,
//! yielding a [`tenant::TenantContext`]) → [`db`] (the one connection, and the
//! tenant scope every statement runs in) → [`users`] (the SQL) →
//! [`http`] (routes) and [`problem`] (every error as problem+json).
//! [`app`] wires them together; [`migrate`] and [`dev`] are the admin-side
//! commands, and [`custom_resource`] runs `migrate` at deploy time.

pub mod admin_conn;
pub mod app;
pub mod audit;
pub mod clock;
pub mod config;
pub mod custom_resource;
pub mod db;
pub mod dev;
pub mod gate;
pub mod http;
pub mod migrate;
pub mod problem;
pub mod secret;
pub mod telemetry;
pub mod tenant;
pub mod token;
pub mod users;
