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
//!
//! `HELLO_SCOPE` picks the tenant scope, so `make bench-lambda` can price
//! the tenant registry without a switch in the service:
//! - `registry` (the default): what the service sends on a warm request,
//!   `app_enter_tenant($1, $2, 0)` (registry read, tier settings, the
//!   concurrency cap; no tokens asked for, the environment's lease holds),
//!   its granted count read back; `HELLO_TENANT` must be registered;
//! - `pre-registry`: the scope as it was before the registry (migrations/V2:
//!   the tenant and the statement timeout set transaction-locally, nothing
//!   else), as `bench_pre_registry_scope($1, $2)`, a function that only the
//!   benchmark's own database has (benches/lambda.rs creates it).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;
use tenant_users::resource::{self, Cursor, PageRequest};
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

/// Which tenant scope the transaction opens with (`HELLO_SCOPE`).
#[derive(Clone, Copy)]
enum Scope {
    Registry,
    PreRegistry,
}

struct Db {
    client: tokio_postgres::Client,
    tenant: String,
    scope: Scope,
}

async fn list_from_db(
    State(db): State<Arc<Db>>,
) -> Result<axum::Json<resource::Page<users::User>>, StatusCode> {
    let (limit, timeout_ms, want): (i64, i32, i32) = (51, 5000, 0);
    let c = &db.client;
    let scope_params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&db.tenant, Type::TEXT),
        (&timeout_ms, Type::INT4),
        (&want, Type::INT4),
    ];
    let list_params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&db.tenant, Type::TEXT), (&limit, Type::INT8)];
    // Either scope queues its message on its first poll, as the others do,
    // so the four still go out in order and in one round trip.
    let scope = async {
        match db.scope {
            Scope::Registry => c
                .query_typed("SELECT public.app_enter_tenant($1, $2, $3)", &scope_params)
                .await
                .map(|rows| {
                    rows.first()
                        .and_then(|row| row.try_get::<_, i32>(0).ok())
                        .unwrap_or(0)
                }),
            Scope::PreRegistry => c
                .execute_typed(
                    "SELECT public.bench_pre_registry_scope($1, $2)",
                    &scope_params[..2],
                )
                .await
                .map(|_| 0),
        }
    };
    let (begin, scope, rows, commit) = tokio::join!(
        c.execute_typed("BEGIN", &[]),
        scope,
        c.query_typed(users::LIST_FIRST, &list_params),
        c.execute_typed("COMMIT", &[]),
    );
    let failed = |_| StatusCode::INTERNAL_SERVER_ERROR;
    begin.map_err(failed)?;
    scope.map_err(failed)?;
    commit.map_err(failed)?;
    let rows = rows.map_err(failed)?;
    let request = PageRequest {
        limit: 50,
        after: None,
    };
    Ok(axum::Json(resource::Page::from_rows(
        "users",
        &rows,
        &request,
        |row| users::User {
            user_id: row.get(0),
            email: row.get(1),
            name: row.get(2),
            created_at: row.get(3),
            updated_at: row.get(4),
        },
        |row| Cursor {
            created_at: row.get(5),
            id: row.get(0),
        },
    )))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let router = match std::env::var("HELLO_DATABASE_URL") {
        Ok(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let tenant = std::env::var("HELLO_TENANT").unwrap_or_else(|_| "t1".to_owned());
            let scope = match std::env::var("HELLO_SCOPE").as_deref() {
                Ok("registry") | Err(_) => Scope::Registry,
                Ok("pre-registry") => Scope::PreRegistry,
                Ok(other) => {
                    return Err(
                        format!("HELLO_SCOPE={other}: expected registry or pre-registry").into(),
                    );
                }
            };
            Router::new()
                .route("/users", get(list_from_db))
                .with_state(Arc::new(Db {
                    client,
                    tenant,
                    scope,
                }))
        }
        Err(_) => Router::new()
            .route("/users", get(list))
            .with_state(Arc::new(page())),
    };
    lambda_http::run(router).await
}
