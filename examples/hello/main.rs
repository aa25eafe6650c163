//! The floor for `make bench-lambda`: a hello-world Lambda built the way
//! the service is (lambda_http + axum on a current-thread runtime) that
//! answers GET /users with a page of the same shape and size as the
//! service's 50-row answer, without a database, a token or logs. What it
//! costs is what Lambda's runtime API, the adapter and the kernel cost;
//! every ratio in BENCHMARKS.md is taken against it, measured in the same
//! run.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let router = Router::new()
        .route("/users", get(list))
        .with_state(Arc::new(page()));
    lambda_http::run(router).await
}
