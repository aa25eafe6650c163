//! The one connection per execution environment: reused across requests,
//! reopened when it is found closed, and a 503 (never a hang or a panic)
//! while the database cannot be reached.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::{TestApp, TestDb};

#[tokio::test]
async fn requests_reuse_one_connection() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    for i in 0..5 {
        app.post(
            "/users",
            &token,
            json!({"email": format!("u{i}@acme.test"), "name": "U"}),
        )
        .await;
        app.get("/users", &token).await;
    }
    assert_eq!(app.app_activity().await.len(), 1);
}

#[tokio::test]
async fn a_terminated_backend_is_replaced_on_the_next_request() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    let before = app.app_activity().await;
    let admin = app.db.admin().await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&app.db.app_user],
        )
        .await
        .unwrap();
    // Let the client side see the connection drop, as a thawed Lambda would.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let r = app
        .post(
            "/users",
            &token,
            json!({"email": "after@acme.test", "name": "After"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    let after = app.app_activity().await;
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].0, before[0].0, "a new backend serves now");
    assert_eq!(app.all_rows().await.len(), 1);
}

#[tokio::test]
async fn an_unreachable_database_is_503_with_retry_after() {
    let db = TestDb::create().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut app = TestApp::on(db, &[]).await;
    // Rebuild the app against a port nothing listens on.
    let mut pg = app.db.app_config();
    pg.port(port);
    let config = tenant_users::config::Config {
        token: tenant_users::config::token_config(&|k| {
            (k == "JWT_HS256_SECRET").then(|| crate::common::SECRET.to_owned())
        })
        .unwrap(),
        db: tenant_users::config::DbConfig::plain(pg),
        metrics: tenant_users::telemetry::Metrics::disabled(),
    };
    app.app = tenant_users::app::App::build(config).await;
    app.router = tenant_users::http::router(app.app.clone());
    let r = app.get("/users", &app.token("acme")).await;
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("database"), "{detail}");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pool_spreads_concurrent_requests_over_its_connections() {
    let db = TestDb::create().await;
    let url = db.app_url();
    let app = std::sync::Arc::new(
        TestApp::from_env(
            db,
            vec![
                ("DATABASE_URL".into(), url),
                ("DB_POOL_SIZE".into(), "4".into()),
            ],
        )
        .await,
    );
    let mut tasks = Vec::new();
    for i in 0..32 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let tenant = format!("pool-{}", i % 4);
            let email = format!("u{i}@{tenant}.test");
            app.post(
                "/users",
                &app.token(&tenant),
                json!({"email": email, "name": "P"}),
            )
            .await
            .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    let backends = app.app_activity().await.len();
    assert!((2..=4).contains(&backends), "{backends} connections");
    for t in 0..4 {
        let emails = app.emails_seen_by(&format!("pool-{t}")).await;
        assert_eq!(emails.len(), 8);
        assert!(
            emails
                .iter()
                .all(|e| e.ends_with(&format!("@pool-{t}.test")))
        );
    }
}

#[tokio::test]
async fn test_databases_and_roles_are_dropped_afterwards() {
    let db = TestDb::create().await;
    let (name, user) = (db.name.clone(), db.app_user.clone());
    drop(db);
    let admin = crate::common::connect(&crate::common::admin_base()).await;
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1) + (SELECT count(*) FROM pg_roles WHERE rolname = $2)",
            &[&name, &user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "the test database {name} or role {user} was left behind"
    );
}
