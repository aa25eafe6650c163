//! The one connection per execution environment: reused across requests,
//! reopened when it is found closed, and a 503 (never a hang or a panic)
//! while the database cannot be reached. A write whose outcome is unknown
//! (the connection broke mid-flight) is a 503, never retried. TLS is
//! verified, host name included, and `make dev` uses it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::pgbouncer::PgBouncer;
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
    // The client side sees the connection drop, as a thawed Lambda would.
    app.wait_for_connection_drop().await;

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
    let config = tenant_users::app::Config {
        token: tenant_users::token::config::token_config(&|k| {
            (k == "JWT_HS256_SECRET").then(|| crate::common::SECRET.to_owned())
        })
        .unwrap(),
        db: tenant_users::db::config::DbConfig::plain(pg),
        identity: None,
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
    for i in 0..4 {
        app.db.register(&format!("pool-{i}"), "unlimited").await;
    }
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

/// What the relay does to the next bytes a client sends.
const PASS: u8 = 0;
/// Forward them, swallow every answer, cut the connection after a while:
/// the server acts (and commits), the client never learns it did.
const SWALLOW_ANSWER: u8 = 1;
/// Cut the connection without forwarding them: nothing reaches the server.
const DROP_REQUEST: u8 = 2;

/// A TCP relay to PostgreSQL that breaks a connection mid-request on
/// demand (the armed mode applies once, to the next bytes any client
/// sends; new connections after that pass normally).
async fn fault_relay(target: u16, arm: Arc<AtomicU8>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let arm = arm.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let (mut client_in, mut client_out) = inbound.into_split();
                let (mut server_in, mut server_out) = outbound.into_split();
                let swallow = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let swallowing = swallow.clone();
                let answers = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = server_in.read(&mut buf).await {
                        if !swallowing.load(Ordering::SeqCst)
                            && client_out.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = client_in.read(&mut buf).await {
                    match arm.swap(PASS, Ordering::SeqCst) {
                        DROP_REQUEST => break,
                        SWALLOW_ANSWER => {
                            swallow.store(true, Ordering::SeqCst);
                            if server_out.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            // Whatever else the client pipelines in this
                            // window still reaches the server.
                            let rest = async {
                                while let Ok(n @ 1..) = client_in.read(&mut buf).await {
                                    if server_out.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            };
                            let _ = tokio::time::timeout(Duration::from_millis(500), rest).await;
                            break;
                        }
                        _ => {
                            if server_out.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // Dropping every half closes both connections.
                answers.abort();
            });
        }
    });
    port
}

/// The app connected to its database through a fault relay.
async fn app_behind_relay() -> (TestApp, Arc<AtomicU8>) {
    let db = TestDb::create().await;
    let arm = Arc::new(AtomicU8::new(PASS));
    let relay = fault_relay(
        db.base.get_ports().first().copied().unwrap_or(5432),
        arm.clone(),
    )
    .await;
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{relay}/{}",
        db.app_user, db.app_password, db.name
    );
    let app = TestApp::from_env(db, vec![("DATABASE_URL".into(), url)]).await;
    (app, arm)
}

async fn rows_with_id(app: &TestApp, id: &str) -> i64 {
    app.db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM users WHERE user_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_delete_whose_answer_is_lost_is_503_not_a_retried_404() {
    let (app, arm) = app_behind_relay().await;
    let token = app.token("acme");
    let id = app.create_user("acme", "ada@acme.test", "Ada").await;

    arm.store(SWALLOW_ANSWER, Ordering::SeqCst);
    let r = app.delete(&format!("/users/{id}"), &token).await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
    // The delete did happen; a retry would have answered 404 for it.
    assert_eq!(rows_with_id(&app, &id).await, 0, "the server committed");
    assert_eq!(
        app.get(&format!("/users/{id}"), &token).await.status,
        StatusCode::NOT_FOUND,
        "the caller can look, over a new connection"
    );
}

#[tokio::test]
async fn a_delete_cut_before_it_reached_the_database_is_503_and_deletes_nothing() {
    let (app, arm) = app_behind_relay().await;
    let token = app.token("acme");
    let id = app.create_user("acme", "ada@acme.test", "Ada").await;

    arm.store(DROP_REQUEST, Ordering::SeqCst);
    let r = app.delete(&format!("/users/{id}"), &token).await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rows_with_id(&app, &id).await, 1, "the row is still there");
    let again = app.delete(&format!("/users/{id}"), &token).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT, "{}", again.text());
    assert_eq!(rows_with_id(&app, &id).await, 0);
}

#[tokio::test]
async fn verify_full_refuses_a_valid_certificate_for_another_host_name() {
    let db = TestDb::create().await;
    // Signed by the CA we trust, but for db.other.test, not localhost.
    let bouncer = PgBouncer::start_with_cert(
        &[(&db.app_user, "pw-1")],
        2,
        "db.other.test",
        "DNS:db.other.test",
    );
    let shared = Arc::new(db);
    let env = |mode: &str| {
        let mut env = bouncer.app_env(&shared.app_user, "pw-1", &shared.name);
        env.retain(|(k, _)| k != "DB_SSLMODE");
        env.push(("DB_SSLMODE".into(), mode.into()));
        env
    };
    let login = format!("login attempt: db={}", shared.name);
    let verified = TestApp::from_env_shared(shared.clone(), env("verify-full")).await;
    let r = verified.get("/users", &verified.token("acme")).await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !bouncer
            .log()
            .contains(&format!("login attempt: db={}", shared.name)),
        "no login was attempted over the unverified channel"
    );
    // The chain itself is fine: encrypted without verification connects,
    // so the refusal above is the host name check.
    let unverified = TestApp::from_env_shared(shared.clone(), env("require")).await;
    let r = unverified.get("/users", &unverified.token("acme")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(bouncer.log().contains(&login), "{}", bouncer.log());
}

#[tokio::test]
async fn make_dev_connects_the_app_role_with_the_admin_tls_settings() {
    use tenant_users::db::config::{SslMode, TlsConfig};
    use tenant_users_migrate::AppRole;

    let db = TestDb::create().await;
    // A "remote" server that only speaks TLS: the proxy stand-in.
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw-1")], 2);
    let admin: tokio_postgres::Config =
        format!("postgres://postgres@localhost:{}/{}", bouncer.port, db.name)
            .parse()
            .unwrap();
    let role = AppRole {
        name: db.app_user.clone(),
        password: Some("pw-1".into()),
    };
    let build = |tls: TlsConfig| {
        let db_config = tenant_users_migrate::app_db_config(&admin, &role, tls);
        let token = tenant_users::token::config::token_config(&|k| {
            (k == "JWT_HS256_SECRET").then(|| crate::common::SECRET.to_owned())
        })
        .unwrap();
        tenant_users::app::Config {
            token,
            db: db_config,
            identity: None,
            metrics: tenant_users::telemetry::Metrics::disabled(),
        }
    };
    let mut app = TestApp::on(db, &[]).await;
    for (tls, expected) in [
        (TlsConfig::DISABLED, StatusCode::SERVICE_UNAVAILABLE),
        (
            TlsConfig {
                mode: SslMode::VerifyFull,
                ca_file: Some(bouncer.certs.ca_file()),
                roots: tenant_users::db::config::Roots::System,
            },
            StatusCode::OK,
        ),
    ] {
        app.app = tenant_users::app::App::build(build(tls.clone())).await;
        app.router = tenant_users::http::router(app.app.clone());
        let r = app.get("/users", &app.token("acme")).await;
        assert_eq!(r.status, expected, "{tls:?}: {}", r.text());
    }
}
