//! The AWS path end to end, with real stand-ins: moto (STS, IAM, Secrets
//! Manager, IAM enforced) and PgBouncer with TLS (RDS Proxy). Cold start
//! assumes the reader role, reads the secret, connects with verify-full TLS
//! through the proxy and serves; every failure is a 503 that heals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use crate::common::moto::{Moto, OTHER_ROLE};
use crate::common::pgbouncer::PgBouncer;
use crate::common::{TestApp, TestDb};

fn secret_json(db: &TestDb, bouncer: &PgBouncer, password: &str) -> String {
    json!({
        "engine": "postgres",
        "host": "localhost",
        "port": bouncer.port,
        "username": db.app_user,
        "password": password,
        "dbname": db.name,
    })
    .to_string()
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// A database behind PgBouncer (TLS, password "pw-1") and a moto holding
/// the secret for it: what a deployed function finds at cold start.
struct Stack {
    db: TestDb,
    bouncer: PgBouncer,
    moto: Moto,
    arn: String,
}

impl Stack {
    async fn new() -> Self {
        let db = TestDb::create().await;
        let bouncer = PgBouncer::start(&[(&db.app_user, "pw-1")], 2);
        let moto = Moto::start().await;
        let arn = moto
            .create_secret("tenant-users/db", &secret_json(&db, &bouncer, "pw-1"))
            .await;
        Stack {
            db,
            bouncer,
            moto,
            arn,
        }
    }

    /// The function's environment: its keys, the secret, the proxy's CA.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let ca = self.bouncer.certs.ca_file().display().to_string();
        with(
            with(self.moto.function_env(&self.arn), &[("DB_CA_FILE", &ca)]),
            extra,
        )
    }
}

async fn assert_serves(app: &TestApp) {
    let token = app.token("acme");
    let email = format!("{}@acme.test", uuid::Uuid::new_v4().simple());
    let r = app
        .post(
            "/users",
            &token,
            json!({"email": email, "name": "Via Proxy"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert!(app.emails_seen_by("acme").await.contains(&email));
}

async fn assert_unavailable(app: &TestApp) -> String {
    let r = app.get("/users", &app.token("acme")).await;
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
    detail
}

#[tokio::test]
async fn cold_start_reads_the_secret_as_the_assumed_role_and_serves_through_the_proxy_with_tls() {
    let stack = Stack::new().await;
    // Default DB_SSLMODE with a secret is verify-full.
    let env = stack.env(&[]);
    let app = TestApp::from_env(stack.db, env).await;
    assert_serves(&app).await;
    assert_eq!(
        app.app.db.session_settings().await.unwrap().0,
        "",
        "no tenant left in the session"
    );
}

#[tokio::test]
async fn tls_is_verified_and_required() {
    let db = TestDb::create().await;
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw-1")], 2);
    let url = format!(
        "postgres://{}:pw-1@localhost:{}/{}",
        db.app_user, bouncer.port, db.name
    );
    let env = |extra: &[(&str, &str)]| with(vec![("DATABASE_URL".to_owned(), url.clone())], extra);
    let ca = bouncer.certs.ca_file().display().to_string();

    // The proxy's certificate is not from a CA we trust: refused.
    let untrusted = TestApp::from_env(
        TestDb::create().await,
        env(&[("DB_SSLMODE", "verify-full")]),
    )
    .await;
    assert_unavailable(&untrusted).await;
    // Without TLS the proxy refuses us.
    let plain = TestApp::from_env(TestDb::create().await, env(&[("DB_SSLMODE", "disable")])).await;
    assert_unavailable(&plain).await;
    // Encrypted but unverified, as libpq's `require`.
    let require =
        TestApp::from_env(TestDb::create().await, env(&[("DB_SSLMODE", "require")])).await;
    assert_eq!(
        require.get("/users", &require.token("acme")).await.status,
        StatusCode::OK
    );
    // Verified against the right CA, by host name.
    let verified = TestApp::from_env(
        db,
        env(&[("DB_SSLMODE", "verify-full"), ("DB_CA_FILE", &ca)]),
    )
    .await;
    assert_serves(&verified).await;
    // A CA file that is not a certificate is a misconfiguration, not a crash.
    let junk = bouncer.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let bad_ca = TestApp::from_env(
        TestDb::create().await,
        env(&[
            ("DB_SSLMODE", "verify-full"),
            ("DB_CA_FILE", &junk.display().to_string()),
        ]),
    )
    .await;
    assert!(assert_unavailable(&bad_ca).await.contains("misconfigured"));
}

#[tokio::test]
async fn only_the_reader_role_can_read_the_secret() {
    let stack = Stack::new().await;
    let base = stack.env(&[]);

    // A role the function may not assume: AccessDenied from STS.
    let other = TestApp::from_env(
        TestDb::create().await,
        with(base.clone(), &[("DB_SECRET_ROLE_ARN", OTHER_ROLE)]),
    )
    .await;
    assert!(assert_unavailable(&other).await.contains("credentials"));
    // No role at all: the function's own identity may not read the secret.
    let direct: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "DB_SECRET_ROLE_ARN")
        .cloned()
        .collect();
    let direct = TestApp::from_env(TestDb::create().await, direct).await;
    assert!(assert_unavailable(&direct).await.contains("credentials"));
    // The configured reader role: served.
    let app = TestApp::from_env(stack.db, base).await;
    assert_serves(&app).await;
}

#[tokio::test]
async fn a_missing_or_malformed_secret_is_503_until_it_is_fixed() {
    let db = TestDb::create().await;
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw-1")], 2);
    let moto = Moto::start().await;
    let ca = bouncer.certs.ca_file().display().to_string();
    let name = "tenant-users/later";
    // Back-off capped at 1 s: after each change, waiting 1.1 s makes sure the
    // next request really fetches the secret again.
    let env = with(
        moto.function_env(name),
        &[("DB_CA_FILE", &ca), ("DB_SECRET_REFRESH_SECONDS", "1")],
    );
    let app = TestApp::from_env(db, env).await;
    let backoff = Duration::from_millis(1100);

    assert!(
        assert_unavailable(&app).await.contains("credentials"),
        "secret missing"
    );
    moto.create_secret(name, r#"{"username": "app", "password": }"#)
        .await;
    tokio::time::sleep(backoff).await;
    let before = moto.calls();
    assert!(
        assert_unavailable(&app).await.contains("credentials"),
        "secret malformed"
    );
    assert!(moto.calls() > before, "the secret was fetched again");
    moto.put_secret(name, r#"{"username": "app"}"#).await;
    tokio::time::sleep(backoff).await;
    assert!(
        assert_unavailable(&app).await.contains("credentials"),
        "no password"
    );
    moto.put_secret(name, &secret_json(&app.db, &bouncer, "pw-1"))
        .await;
    tokio::time::sleep(backoff).await;
    assert_serves(&app).await;
}

/// A TCP relay to moto that can be switched off: Secrets Manager and STS
/// unreachable, then back, without losing moto's state.
async fn relay_to(target: u16, up: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !up.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn unreachable_secrets_manager_is_503_and_recovers() {
    let stack = Stack::new().await;
    let up = Arc::new(AtomicBool::new(false));
    let relay = relay_to(stack.moto.port, up.clone()).await;
    let endpoint = format!("http://127.0.0.1:{relay}");
    let env = stack.env(&[
        ("AWS_ENDPOINT_URL", &endpoint),
        ("DB_SECRET_REFRESH_SECONDS", "1"),
    ]);
    let app = TestApp::from_env(stack.db, env).await;
    assert!(assert_unavailable(&app).await.contains("credentials"));
    up.store(true, Ordering::SeqCst);
    heals_within(&app, Duration::from_secs(3)).await;
    assert_serves(&app).await;
}

#[tokio::test]
async fn a_rotated_password_is_picked_up() {
    let db = TestDb::create().await;
    let user = db.app_user.clone();
    let mut bouncer = PgBouncer::start(&[(&user, "pw-1")], 2);
    let moto = Moto::start().await;
    let arn = moto
        .create_secret("tenant-users/db", &secret_json(&db, &bouncer, "pw-1"))
        .await;
    let ca = bouncer.certs.ca_file().display().to_string();
    let env = with(moto.function_env(&arn), &[("DB_CA_FILE", &ca)]);
    let app = TestApp::from_env(db, env).await;
    assert_serves(&app).await;

    // Rotation: new password in the secret and at the proxy; the proxy
    // drops its clients, so the function must log in again. A successful
    // refetch opens the way for the next rotation at once.
    for password in ["pw-2", "pw-3"] {
        moto.put_secret(&arn, &secret_json(&app.db, &bouncer, password))
            .await;
        bouncer.restart_with_users(&[(&user, password)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_serves(&app).await;
    }
    assert!(
        bouncer.log().contains("password authentication failed"),
        "the stale password was tried and refused"
    );
}

/// `count` requests spread over `over`, each answered 503 with
/// `Retry-After`.
async fn unavailable_for(app: &TestApp, count: u32, over: Duration) {
    for _ in 0..count {
        let r = app.get("/users", &app.token("acme")).await;
        let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(detail.contains("credentials"), "{detail}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=2).contains(&retry),
            "Retry-After {retry} within the 2 s cap"
        );
        tokio::time::sleep(over / count).await;
    }
}

/// Polls until the app serves again; returns how long it took.
async fn heals_within(app: &TestApp, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let r = app.get("/users", &app.token("acme")).await;
        if r.status == StatusCode::OK {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not healed: {}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_missing_secret_costs_a_handful_of_aws_calls_not_one_per_request() {
    let db = TestDb::create().await;
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw-1")], 2);
    let moto = Moto::start().await;
    let ca = bouncer.certs.ca_file().display().to_string();
    let name = "tenant-users/missing";
    let env = with(
        moto.function_env(name),
        &[("DB_CA_FILE", &ca), ("DB_SECRET_REFRESH_SECONDS", "2")],
    );
    let before = moto.calls();
    let app = TestApp::from_env(db, env).await;
    unavailable_for(&app, 100, Duration::from_secs(3)).await;
    let calls = moto.calls() - before;
    eprintln!("missing secret: 100 requests over 3 s made {calls} AWS calls");
    // Cold start plus back-off over 3 s (0.5-1, 1-2, then every 1-2 s):
    // at most 5 attempts, each an AssumeRole and a GetSecretValue.
    assert!(
        (2..=10).contains(&calls),
        "100 requests made {calls} AWS calls"
    );

    moto.create_secret(name, &secret_json(&app.db, &bouncer, "pw-1"))
        .await;
    heals_within(&app, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_refused_password_is_not_tried_again_on_every_request() {
    let db = TestDb::create().await;
    let user = db.app_user.clone();
    let bouncer = PgBouncer::start(&[(&user, "pw-1")], 2);
    let moto = Moto::start().await;
    let arn = moto
        .create_secret("tenant-users/db", &secret_json(&db, &bouncer, "wrong"))
        .await;
    let ca = bouncer.certs.ca_file().display().to_string();
    let env = with(
        moto.function_env(&arn),
        &[("DB_CA_FILE", &ca), ("DB_SECRET_REFRESH_SECONDS", "2")],
    );
    let before = moto.calls();
    let app = TestApp::from_env(db, env).await;
    unavailable_for(&app, 100, Duration::from_secs(3)).await;
    let logins = bouncer
        .log()
        .matches("password authentication failed")
        .count();
    let calls = moto.calls() - before;
    eprintln!("refused password: 100 requests over 3 s made {logins} logins, {calls} AWS calls");
    assert!(
        (1..=6).contains(&logins),
        "100 requests made {logins} logins"
    );
    assert!(
        (2..=10).contains(&calls),
        "100 requests made {calls} AWS calls"
    );

    // The operator fixes the secret (say, a rotation finished): healed
    // without a restart.
    moto.put_secret(&arn, &secret_json(&app.db, &bouncer, "pw-1"))
        .await;
    heals_within(&app, Duration::from_secs(5)).await;
}
