//! Black-box tests of the service against real PostgreSQL.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod auth;
mod aws;
mod connection;
mod control;
mod custom_resource;
mod events;
mod faults;
mod hostile;
mod isolation;
mod lifecycle;
mod migrate;
mod model;
mod openapi;
mod proxy;
mod registry;
mod resource_kit;
mod roles;
mod rotation;
mod round_trips;
mod routes;
mod telemetry;
