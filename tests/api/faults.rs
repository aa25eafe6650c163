//! Faults: the database goes away before, between and during requests, or
//! a statement runs away. Each is a 503 problem with Retry-After, nothing is
//! half-written, and the function heals without a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use crate::common::cluster::Cluster;
use crate::common::{TestApp, TestDb};

fn assert_503(r: &crate::common::TestResponse) -> String {
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some(), "Retry-After");
    detail
}

/// An admin session holding user `id`'s row lock until it says ROLLBACK.
async fn hold_row_lock(app: &TestApp, id: &str) -> tokio_postgres::Client {
    let locker = app.db.admin().await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM users WHERE user_id = '{id}' FOR UPDATE"
        ))
        .await
        .unwrap();
    locker
}

/// Waits until the app role's backend is waiting on a lock.
async fn until_blocked(app: &TestApp) -> i32 {
    let admin = app.db.admin().await;
    let started = Instant::now();
    loop {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'",
                &[&app.db.app_user],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the request never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_backend_killed_mid_request_is_503_writes_nothing_and_the_next_request_succeeds() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let id = app.create_user("acme", "ada@acme.test", "Before").await;

    // Hold the row so the PATCH blocks inside its transaction.
    let locker = hold_row_lock(&app, &id).await;

    let path = format!("/users/{id}");
    let patch = app.patch(&path, &token, json!({"name": "After"}));
    let kill = async {
        let pid = until_blocked(&app).await;
        let admin = app.db.admin().await;
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
    };
    let (response, ()) = tokio::join!(patch, kill);
    assert_503(&response);
    locker.batch_execute("ROLLBACK").await.unwrap();

    assert_eq!(app.all_rows().await[0].2, "Before", "nothing half-written");
    let r = app
        .patch(&format!("/users/{id}"), &token, json!({"name": "After"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn a_runaway_statement_is_cut_by_the_transaction_statement_timeout() {
    let db = TestDb::create().await;
    let url = db.app_url();
    let app = TestApp::from_env(
        db,
        vec![
            ("DATABASE_URL".into(), url),
            ("DB_STATEMENT_TIMEOUT_MS".into(), "300".into()),
        ],
    )
    .await;
    let token = app.token("acme");
    let id = app.create_user("acme", "ada@acme.test", "Before").await;
    let locker = hold_row_lock(&app, &id).await;

    let started = Instant::now();
    let r = app
        .patch(&format!("/users/{id}"), &token, json!({"name": "After"}))
        .await;
    let waited = started.elapsed();
    let detail = assert_503(&r);
    assert!(detail.contains("too long"), "{detail}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();

    assert_eq!(app.all_rows().await[0].2, "Before");
    // The connection is still good, and the timeout was transaction-local.
    assert_eq!(
        app.patch(&format!("/users/{id}"), &token, json!({"name": "After"}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(app.app.db.session_settings().await.unwrap().1, "0");
}

#[tokio::test]
async fn database_down_at_cold_start_and_during_traffic_is_503_then_heals() {
    let cluster = Cluster::start();
    let db = TestDb::create_on(cluster.admin()).await;
    let url = db.app_url();
    cluster.down();

    // Cold start with the database down: the process comes up and says 503.
    let app = Arc::new(TestApp::from_env(db, vec![("DATABASE_URL".into(), url)]).await);
    let token = app.token("acme");
    assert!(assert_503(&app.get("/users", &token).await).contains("database"));

    cluster.up();
    assert_eq!(
        app.get("/users", &token).await.status,
        StatusCode::OK,
        "healed without a restart"
    );
    app.create_user("acme", "ada@acme.test", "Ada").await;

    // Down during traffic.
    cluster.down();
    assert_503(&app.get("/users", &token).await);
    let r = app
        .post(
            "/users",
            &token,
            json!({"email": "lost@acme.test", "name": "Lost"}),
        )
        .await;
    assert_503(&r);

    cluster.up();
    assert_eq!(
        app.emails_seen_by("acme").await,
        vec!["ada@acme.test"],
        "nothing half-written"
    );
}
