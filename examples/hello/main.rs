//! The floor for `make bench-lambda`: a hello-world Lambda built the way
//! the service is (lambda_http + axum on a current-thread runtime) that
//! answers GET /users with a page of the same shape and size as the
//! service's 50-row answer, without a database, a token or logs. What it
//! costs is what Lambda's runtime API, the adapter and the kernel cost;
//! every ratio in BENCHMARKS.md is taken against it, measured in the same
//! run.
//!
//! With `HELLO_DATABASE_URL` it is the second floor, hello + the database:
//! one connection opened at init, and per request the service's own
//! transaction for GET /users (BEGIN, the tenant scope, `LIST_FIRST` with
//! LIMIT 51, COMMIT, pipelined: one round trip) as `HELLO_TENANT`, the rows
//! read into the service's own `User` and serialised. Still no token, no
//! logs, no metrics, no pool or guards: the service ÷ this is what the
//! service adds on top of one database round trip.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;
use tenant_users::users;
use tokio_postgres::types::{ToSql, Type};

#[derive(Serialize)]
struct User {
    user_id: String,
    email: String,
    name: String,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
struct Page {
    users: Vec<User>,
    next_cursor: Option<String>,
}

/// Fifty users shaped like the seeded ones the benchmark reads; built
/// once, serialised per request as the service serialises its rows.
fn page() -> Page {
    let users = (1..=50)
        .map(|i| User {
            user_id: format!("00000000-0000-4000-8000-{i:012}"),
            email: format!("u{i}@t42.test"),
            name: format!("User {i}"),
            created_at: "2026-11-27T08:00:00.000000Z".into(),
            updated_at: "2026-11-27T08:00:00.000000Z".into(),
        })
        .collect();
    Page {
        users,
        next_cursor: Some("MTc5NTY4MzYwMDAwMDAwMC4wMDAwMDAwMC0wMDAw".into()),
    }
}

async fn list(State(page): State<Arc<Page>>) -> axum::Json<Arc<Page>> {
    axum::Json(page)
}

struct Db {
    client: tokio_postgres::Client,
    tenant: String,
}

async fn list_from_db(State(db): State<Arc<Db>>) -> Result<axum::Json<users::Page>, StatusCode> {
    let (limit, timeout_ms): (i64, i32) = (51, 5000);
    let c = &db.client;
    let scope_params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&db.tenant, Type::TEXT), (&timeout_ms, Type::INT4)];
    let list_params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&db.tenant, Type::TEXT), (&limit, Type::INT8)];
    let (begin, scope, rows, commit) = tokio::join!(
        c.execute_typed("BEGIN", &[]),
        c.execute_typed("SELECT public.app_set_tenant($1, $2)", &scope_params),
        c.query_typed(users::LIST_FIRST, &list_params),
        c.execute_typed("COMMIT", &[]),
    );
    let failed = |_| StatusCode::INTERNAL_SERVER_ERROR;
    begin.map_err(failed)?;
    scope.map_err(failed)?;
    commit.map_err(failed)?;
    let rows = rows.map_err(failed)?;
    Ok(axum::Json(users::Page {
        users: rows
            .iter()
            .take(50)
            .map(|row| users::User {
                user_id: row.get(0),
                email: row.get(1),
                name: row.get(2),
                created_at: row.get(3),
                updated_at: row.get(4),
            })
            .collect(),
        next_cursor: (rows.len() > 50)
            .then(|| "MTc5NTY4MzYwMDAwMDAwMC4wMDAwMDAwMC0wMDAw".to_owned()),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let router = match std::env::var("HELLO_DATABASE_URL") {
        Ok(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let tenant = std::env::var("HELLO_TENANT").unwrap_or_else(|_| "t1".to_owned());
            Router::new()
                .route("/users", get(list_from_db))
                .with_state(Arc::new(Db { client, tenant }))
        }
        Err(_) => Router::new()
            .route("/users", get(list))
            .with_state(Arc::new(page())),
    };
    lambda_http::run(router).await
}
