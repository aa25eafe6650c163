//! Rotation rehearsed: what Secrets Manager's PostgreSQL multi-user
//! rotation (alternating users) does, step by step, while several execution
//! environments serve traffic through PgBouncer (standing in for RDS Proxy,
//! which authenticates clients with the secret's current value).
//!
//! The multi-user rotation function, with the master credentials, creates
//! `<user>_clone` (`CREATE ROLE ... LOGIN PASSWORD`, `GRANT <user> TO
//! <clone>`), then on every rotation sets a new password on the user the
//! secret does *not* currently name and switches the secret to it. The
//! function must follow each switch (re-reading the secret when its cached
//! password is refused), at most the one request in flight when the proxy
//! drops the connections may fail (503, never 401 or 500), the audit must
//! pass for both users, and no tenant may ever see another's rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tokio::sync::Mutex;

use tenant_users::config::DbConfig;
use tenant_users::db::Database;

use crate::common::moto::Moto;
use crate::common::pgbouncer::PgBouncer;
use crate::common::{TestApp, TestDb};

const ENVIRONMENTS: usize = 3;
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

fn secret_json(db: &TestDb, bouncer: &PgBouncer, user: &str, password: &str) -> String {
    json!({
        "engine": "postgres",
        "host": "localhost",
        "port": bouncer.port,
        "username": user,
        "password": password,
        "dbname": db.name,
    })
    .to_string()
}

/// What one environment saw while the rotation ran.
#[derive(Default)]
struct Traffic {
    requests: usize,
    /// (status, detail) of every failed request.
    failures: Vec<(StatusCode, String)>,
    /// Emails created per tenant.
    created: HashMap<String, Vec<String>>,
    /// Creates answered 503: the connection broke, the outcome is unknown
    /// (the row may or may not exist), exactly as the client is told.
    uncertain: HashMap<String, Vec<String>>,
    /// A list response that held another tenant's row.
    leaks: Vec<String>,
}

/// Creates a user and lists users for each tenant in turn, until `stop`.
async fn serve_traffic(app: Arc<TestApp>, env: usize, stop: Arc<AtomicBool>) -> Traffic {
    let mut traffic = Traffic::default();
    let mut step = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let tenant = TENANTS[step % TENANTS.len()];
        step += 1;
        let token = app.token(tenant);
        let email = format!("e{env}-{step}@{tenant}.test");
        let r = app
            .post(
                "/users",
                &token,
                json!({"email": email, "name": "Rotation"}),
            )
            .await;
        traffic.requests += 1;
        match r.status {
            StatusCode::CREATED => traffic
                .created
                .entry(tenant.to_owned())
                .or_default()
                .push(email),
            status => {
                traffic
                    .uncertain
                    .entry(tenant.to_owned())
                    .or_default()
                    .push(email);
                traffic.failures.push((status, r.text()));
            }
        }
        let r = app.get("/users?limit=100", &token).await;
        traffic.requests += 1;
        if r.status != StatusCode::OK {
            traffic.failures.push((r.status, r.text()));
            continue;
        }
        for user in r.json()["users"].as_array().into_iter().flatten() {
            let seen = user["email"].as_str().unwrap_or_default();
            if !seen.ends_with(&format!("@{tenant}.test")) {
                traffic.leaks.push(format!("{tenant} saw {seen}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    traffic
}

/// Every email `tenant` sees, following the pages.
async fn all_emails(app: &TestApp, tenant: &str) -> Vec<String> {
    let (mut emails, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/users?limit=100&cursor={c}"),
            None => "/users?limit=100".to_owned(),
        };
        let r = app.get(&path, &app.token(tenant)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let body = r.json();
        for user in body["users"].as_array().into_iter().flatten() {
            emails.push(user["email"].as_str().unwrap().to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return emails,
        }
    }
}

/// The audit, connected as `user` (the shared test server trusts local
/// logins, so the password does not matter here; the proxy checks it).
async fn audit_passes_as(db: &TestDb, user: &str) {
    let mut config = db.admin_config();
    config.user(user);
    let report = Database::new(DbConfig::plain(config))
        .await
        .audit_report()
        .await
        .unwrap();
    let failed: Vec<String> = report
        .iter()
        .filter(|c| !c.passed)
        .map(ToString::to_string)
        .collect();
    assert!(failed.is_empty(), "audit as {user}: {failed:#?}");
}

#[tokio::test]
async fn multi_user_rotation_while_serving_through_the_proxy() {
    let db = TestDb::create().await;
    let user = db.app_user.clone();
    let clone = format!("{user}_clone");
    let bouncer = PgBouncer::start(&[(&user, "pw-0")], 4);
    let moto = Moto::start().await;
    let arn = moto
        .create_secret(
            "tenant-users/app",
            &secret_json(&db, &bouncer, &user, "pw-0"),
        )
        .await;
    let ca = bouncer.certs.ca_file().display().to_string();
    let mut env = moto.function_env(&arn);
    env.push(("DB_CA_FILE".into(), ca));
    env.push(("DB_SECRET_REFRESH_SECONDS".into(), "2".into()));
    let db = Arc::new(db);
    let admin = db.admin().await;

    let mut apps = Vec::new();
    for _ in 0..ENVIRONMENTS {
        apps.push(Arc::new(
            TestApp::from_env_shared(db.clone(), env.clone()).await,
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = apps
        .iter()
        .enumerate()
        .map(|(i, app)| tokio::spawn(serve_traffic(app.clone(), i, stop.clone())))
        .collect();
    let cold_starts = Arc::new(Mutex::new(Vec::new()));

    // (user the secret switches to, its new password, what the master runs)
    let switches: Vec<(String, &str, String)> = vec![
        (
            clone.clone(),
            "pw-1",
            format!("CREATE ROLE {clone} WITH LOGIN PASSWORD 'pw-1'; GRANT {user} TO {clone}"),
        ),
        (
            user.clone(),
            "pw-2",
            format!("ALTER ROLE {user} WITH PASSWORD 'pw-2'"),
        ),
        (
            clone.clone(),
            "pw-3",
            format!("ALTER ROLE {clone} WITH PASSWORD 'pw-3'"),
        ),
    ];
    for (to, password, master_sql) in &switches {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // setSecret: the master changes the database.
        admin.batch_execute(master_sql).await.unwrap();
        // testSecret: the new user passes the isolation audit.
        audit_passes_as(&db, to).await;
        // finishSecret: AWSCURRENT now names the new user; the proxy
        // follows the secret, and drops its clients, so every environment
        // must log in again with what it has cached.
        moto.put_secret(&arn, &secret_json(&db, &bouncer, to, password))
            .await;
        bouncer.reload_with_users(&[(to, password)]);
        bouncer.kill_clients(&db.name).await;
        // A new environment starting now reads the new secret and serves.
        let fresh = TestApp::from_env_shared(db.clone(), env.clone()).await;
        let r = fresh.get("/users", &fresh.token("acme")).await;
        cold_starts.lock().await.push((to.clone(), r.status));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);

    let mut created: HashMap<String, Vec<String>> = HashMap::new();
    let mut uncertain: HashMap<String, Vec<String>> = HashMap::new();
    let (mut requests, mut failures) = (0, Vec::new());
    for task in tasks {
        let traffic = task.await.unwrap();
        assert!(traffic.leaks.is_empty(), "{:?}", traffic.leaks);
        requests += traffic.requests;
        failures.extend(traffic.failures);
        for (tenant, emails) in traffic.created {
            created.entry(tenant).or_default().extend(emails);
        }
        for (tenant, emails) in traffic.uncertain {
            uncertain.entry(tenant).or_default().extend(emails);
        }
    }
    eprintln!(
        "rotation: {requests} requests over {} switches in {ENVIRONMENTS} environments, {} failed: {failures:?}",
        switches.len(),
        failures.len()
    );
    for (status, detail) in &failures {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{detail}");
    }
    assert!(
        failures.len() <= switches.len() * ENVIRONMENTS,
        "at most the one request in flight per switch and environment fails: {failures:?}"
    );
    for (to, status) in cold_starts.lock().await.iter() {
        assert_eq!(
            *status,
            StatusCode::OK,
            "cold start after the switch to {to}"
        );
    }
    audit_passes_as(&db, &user).await;
    audit_passes_as(&db, &clone).await;

    // Every environment serves after the last switch, and each tenant sees
    // exactly the rows created for it, whichever user wrote them (plus,
    // perhaps, a create whose answer was lost with the connection).
    for app in &apps {
        for tenant in TENANTS {
            let seen = all_emails(app, tenant).await;
            let expected = created.get(tenant).cloned().unwrap_or_default();
            let maybe = uncertain.get(tenant).cloned().unwrap_or_default();
            assert!(!expected.is_empty(), "traffic reached {tenant}");
            let missing: Vec<&String> = expected.iter().filter(|e| !seen.contains(e)).collect();
            let foreign: Vec<&String> = seen
                .iter()
                .filter(|e| !expected.contains(e) && !maybe.contains(e))
                .collect();
            assert!(missing.is_empty(), "{tenant} lost {missing:?}");
            assert!(foreign.is_empty(), "{tenant} sees {foreign:?}");
        }
    }
}
