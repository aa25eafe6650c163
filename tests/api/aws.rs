//! The AWS path end to end, with real stand-ins: moto (STS, IAM, Secrets
//! Manager, IAM enforced) and PgBouncer with TLS (RDS Proxy). Cold start
//! assumes the reader role, reads the secret, connects with verify-full TLS
//! through the proxy and serves; every failure is a 503 that heals.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tenant_users::clock::Clock;

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
    // Back-off capped at 1 s: after each change, moving the app's clock
    // 1.1 s on makes sure the next request really fetches the secret again.
    let env = with(
        moto.function_env(name),
        &[("DB_CA_FILE", &ca), ("DB_SECRET_REFRESH_SECONDS", "1")],
    );
    let clock = Clock::manual();
    let app = TestApp::from_env_with_clock(db, env, clock.clone()).await;
    let backoff = Duration::from_millis(1100);

    assert!(
        assert_unavailable(&app).await.contains("credentials"),
        "secret missing"
    );
    moto.create_secret(name, r#"{"username": "app", "password": }"#)
        .await;
    clock.advance(backoff);
    let before = moto.calls();
    assert!(
        assert_unavailable(&app).await.contains("credentials"),
        "secret malformed"
    );
    assert!(moto.calls() > before, "the secret was fetched again");
    moto.put_secret(name, r#"{"username": "app"}"#).await;
    clock.advance(backoff);
    assert!(
        assert_unavailable(&app).await.contains("credentials"),
        "no password"
    );
    moto.put_secret(name, &secret_json(&app.db, &bouncer, "pw-1"))
        .await;
    clock.advance(backoff);
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
    let clock = Clock::manual();
    let app = TestApp::from_env_with_clock(stack.db, env, clock.clone()).await;
    assert!(assert_unavailable(&app).await.contains("credentials"));
    up.store(true, Ordering::SeqCst);
    // The next attempt waits for the gate (at most the 1 s cap), then heals.
    clock.advance(Duration::from_secs(1));
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
        app.wait_for_connection_drop().await;
        assert_serves(&app).await;
    }
    assert!(
        bouncer.log().contains("password authentication failed"),
        "the stale password was tried and refused"
    );
}

/// `count` requests spread over `over` of the app's (manual) clock, each
/// answered 503 with `Retry-After`; returns when, after the cold start,
/// the last one was made. The clock, not the machine, sets the pace, so
/// a slow run makes the same requests at the same moments.
async fn unavailable_for(app: &TestApp, clock: &Clock, count: u32, over: Duration) -> Duration {
    let cold_start = clock.now();
    let mut last = Duration::ZERO;
    for _ in 0..count {
        last = clock.now() - cold_start;
        let r = app.get("/users", &app.token("acme")).await;
        let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(detail.contains("credentials"), "{detail}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=2).contains(&retry),
            "Retry-After {retry} within the 2 s cap"
        );
        clock.advance(over / count);
    }
    last
}

/// How many attempts (the cold start's included) the credential gate's
/// schedule allows up to `last`, for requests every `step` after the cold
/// start: after the n-th failure in a row the gate stays closed for a
/// delay in [d/2, d), d = min(2^(n-1) s, cap), and the first request at
/// or past its end makes the next attempt. Fewest: every delay just
/// under d and a request one step late; most: every delay d/2 to the dot.
fn attempts_allowed(last: Duration, step: Duration, cap: Duration) -> RangeInclusive<usize> {
    let attempts = |share: f64, late: Duration| {
        let (mut at, mut made) = (Duration::ZERO, 1);
        loop {
            let full = Duration::from_secs(1 << (made - 1).min(20)).min(cap);
            at += full.mul_f64(share) + late;
            if at > last {
                return made;
            }
            made += 1;
        }
    };
    attempts(1.0, step)..=attempts(0.5, Duration::ZERO)
}

/// Each attempt is one GetSecretValue; the assumed role's credentials
/// are one AssumeRole, which the SDK caches for their lifetime (an hour),
/// far longer than the test.
fn assert_aws_calls_fit(calls: usize, attempts: &RangeInclusive<usize>, requests: u32) {
    assert!(
        (attempts.start() + 1..=attempts.end() + 1).contains(&calls),
        "{requests} requests made {calls} AWS calls; the schedule allows {attempts:?} attempts"
    );
}

#[test]
fn the_schedule_for_three_seconds_allows_two_to_four_attempts() {
    let step = Duration::from_millis(30);
    let cap = Duration::from_secs(2);
    // 0, then at most 0.5, 1.5, 2.5; at least by 1.03 (then 3.06 is too late).
    assert_eq!(
        attempts_allowed(Duration::from_millis(2970), step, cap),
        2..=4
    );
    assert_eq!(attempts_allowed(Duration::ZERO, step, cap), 1..=1);
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
    let (count, over, cap) = (100, Duration::from_secs(3), Duration::from_secs(2));
    let clock = Clock::manual();
    let before = moto.calls();
    let app = TestApp::from_env_with_clock(db, env, clock.clone()).await;
    let last = unavailable_for(&app, &clock, count, over).await;
    let calls = moto.calls() - before;
    let attempts = attempts_allowed(last, over / count, cap);
    eprintln!(
        "missing secret: {count} requests over {last:?} made {calls} AWS calls \
         (the schedule allows {attempts:?} attempts)"
    );
    assert_aws_calls_fit(calls, &attempts, count);

    moto.create_secret(name, &secret_json(&app.db, &bouncer, "pw-1"))
        .await;
    clock.advance(cap);
    assert_serves(&app).await;
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
    let (count, over, cap) = (100, Duration::from_secs(3), Duration::from_secs(2));
    let clock = Clock::manual();
    let before = moto.calls();
    let app = TestApp::from_env_with_clock(db, env, clock.clone()).await;
    let last = unavailable_for(&app, &clock, count, over).await;
    let logins = bouncer
        .log()
        .matches("password authentication failed")
        .count();
    let calls = moto.calls() - before;
    let attempts = attempts_allowed(last, over / count, cap);
    eprintln!(
        "refused password: {count} requests over {last:?} made {logins} logins, {calls} AWS calls \
         (the schedule allows {attempts:?} attempts)"
    );
    // Each attempt is one login with the password just fetched.
    assert!(
        attempts.contains(&logins),
        "{count} requests made {logins} logins; the schedule allows {attempts:?}"
    );
    assert_aws_calls_fit(calls, &attempts, count);

    // The operator fixes the secret (say, a rotation finished): healed
    // without a restart, at the gate's next attempt.
    moto.put_secret(&arn, &secret_json(&app.db, &bouncer, "pw-1"))
        .await;
    clock.advance(cap);
    assert_serves(&app).await;
}
