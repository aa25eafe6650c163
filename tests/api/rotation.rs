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
//!
//! The cluster checks passwords as RDS does, so every password the master
//! sets is the one the proxy's logins must use. The environments run on a
//! multi-threaded runtime, and each switch waits for events (the proxy
//! shows it loaded the new user list, every environment has served again),
//! not for time to pass, so a failure can be held to its switch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use tenant_users::db::Database;
use tenant_users::db::config::DbConfig;

use crate::common::cluster::Cluster;
use crate::common::moto::Moto;
use crate::common::pgbouncer::PgBouncer;
use crate::common::{TestApp, TestDb, connect};

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

/// How far the rehearsal is, as the environments see it.
struct Progress {
    /// Switches begun (the master changed the database for switch `n`).
    begun: AtomicUsize,
    /// Switches whose proxy reloaded its users and dropped its clients.
    dropped: AtomicUsize,
    /// Per environment: 1 + the `dropped` count at the start of its latest
    /// round (a create and a list) that fully succeeded; 0 before any.
    served: Vec<AtomicUsize>,
    stop: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            begun: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            served: (0..ENVIRONMENTS).map(|_| AtomicUsize::new(0)).collect(),
            stop: AtomicBool::new(false),
        }
    }

    /// Waits until every environment has served a full round begun after
    /// the latest drop: it has followed the switch. Deadline generous
    /// enough for a loaded machine.
    async fn every_environment_served(&self) {
        let want = self.dropped.load(Ordering::SeqCst) + 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .served
            .iter()
            .any(|served| served.load(Ordering::SeqCst) < want)
        {
            assert!(
                Instant::now() < deadline,
                "not every environment served after switch {}",
                want - 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What one environment saw while the rotation ran.
#[derive(Default)]
struct Traffic {
    requests: usize,
    /// (switches begun when it failed, status, detail) of every failed
    /// request.
    failures: Vec<(usize, StatusCode, String)>,
    /// Emails created per tenant.
    created: HashMap<String, Vec<String>>,
    /// Creates answered 503: the connection broke, the outcome is unknown
    /// (the row may or may not exist), exactly as the client is told.
    uncertain: HashMap<String, Vec<String>>,
    /// A list response that held another tenant's row.
    leaks: Vec<String>,
}

/// Creates a user and lists users for each tenant in turn, until `stop`.
async fn serve_traffic(app: Arc<TestApp>, env: usize, progress: Arc<Progress>) -> Traffic {
    let mut traffic = Traffic::default();
    let mut step = 0usize;
    let switch = || progress.begun.load(Ordering::SeqCst);
    while !progress.stop.load(Ordering::SeqCst) {
        // A client's pace, failed round or not.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let round_after = progress.dropped.load(Ordering::SeqCst);
        let mut round_ok = true;
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
                traffic.failures.push((switch(), status, r.text()));
                round_ok = false;
            }
        }
        let r = app.get("/users?limit=100", &token).await;
        traffic.requests += 1;
        if r.status != StatusCode::OK {
            traffic.failures.push((switch(), r.status, r.text()));
            continue;
        }
        if round_ok {
            progress.served[env].fetch_max(round_after + 1, Ordering::SeqCst);
        }
        for user in r.json()["users"].as_array().into_iter().flatten() {
            let seen = user["email"].as_str().unwrap_or_default();
            if !seen.ends_with(&format!("@{tenant}.test")) {
                traffic.leaks.push(format!("{tenant} saw {seen}"));
            }
        }
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

/// The audit, connected as `user` with `password` (the cluster checks it).
async fn audit_passes_as(db: &TestDb, user: &str, password: &str) {
    let mut config = db.admin_config();
    config.user(user).password(password);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_user_rotation_while_serving_through_the_proxy() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    cluster.require_passwords().await;
    let db = TestDb::create_on(cluster.admin()).await;
    let user = db.app_user.clone();
    let first_password = db.app_password.clone();
    let clone = format!("{user}_clone");
    // The master, as on RDS: not a superuser, logs in with its password.
    // (PostgreSQL 16 on wants ADMIN OPTION on a role to change it.)
    let su = db.admin().await;
    su.batch_execute(&format!(
        "CREATE ROLE tu_rotation_master WITH LOGIN CREATEROLE PASSWORD 'master-pw'; \
         DO $$ BEGIN IF current_setting('server_version_num')::int >= 160000 THEN \
         GRANT {user} TO tu_rotation_master WITH ADMIN OPTION; END IF; END $$"
    ))
    .await
    .unwrap();
    let mut master_login = db.admin_config();
    master_login
        .user("tu_rotation_master")
        .password("master-pw");
    let master = connect(&master_login).await;

    let mut bouncer = PgBouncer::start_for(&cluster.admin(), &[(&user, &first_password)], 4);
    let moto = Moto::start().await;
    let arn = moto
        .create_secret(
            "tenant-users/app",
            &secret_json(&db, &bouncer, &user, &first_password),
        )
        .await;
    let ca = bouncer.certs.ca_file().display().to_string();
    let mut env = moto.function_env(&arn);
    env.push(("DB_CA_FILE".into(), ca));
    env.push(("DB_SECRET_REFRESH_SECONDS".into(), "2".into()));
    let db = Arc::new(db);

    let mut apps = Vec::new();
    for _ in 0..ENVIRONMENTS {
        apps.push(Arc::new(
            TestApp::from_env_shared(db.clone(), env.clone()).await,
        ));
    }
    let progress = Arc::new(Progress::new());
    let tasks: Vec<_> = apps
        .iter()
        .enumerate()
        .map(|(i, app)| tokio::spawn(serve_traffic(app.clone(), i, progress.clone())))
        .collect();
    let mut cold_starts = Vec::new();

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
    for (n, (to, password, master_sql)) in switches.iter().enumerate() {
        // Every environment serves (and has followed the last switch).
        progress.every_environment_served().await;
        progress.begun.store(n + 1, Ordering::SeqCst);
        // setSecret: the master changes the database.
        master.batch_execute(master_sql).await.unwrap();
        // testSecret: the new user passes the isolation audit.
        audit_passes_as(&db, to, password).await;
        // finishSecret: AWSCURRENT now names the new user; the proxy
        // follows the secret, and drops its clients, so every environment
        // must log in again with what it has cached.
        moto.put_secret(&arn, &secret_json(&db, &bouncer, to, password))
            .await;
        bouncer.reload_with_users(&db.name, &[(to, password)]).await;
        bouncer.kill_clients(&db.name).await;
        progress.dropped.store(n + 1, Ordering::SeqCst);
        // A new environment starting now reads the new secret and serves.
        let fresh = TestApp::from_env_shared(db.clone(), env.clone()).await;
        let r = fresh.get("/users", &fresh.token("acme")).await;
        cold_starts.push((to.clone(), r.status));
    }
    progress.every_environment_served().await;
    progress.stop.store(true, Ordering::SeqCst);

    let mut created: HashMap<String, Vec<String>> = HashMap::new();
    let mut uncertain: HashMap<String, Vec<String>> = HashMap::new();
    let (mut requests, mut failures) = (0, Vec::new());
    for (env, task) in tasks.into_iter().enumerate() {
        let traffic = task.await.unwrap();
        assert!(traffic.leaks.is_empty(), "{:?}", traffic.leaks);
        requests += traffic.requests;
        failures.extend(
            traffic
                .failures
                .into_iter()
                .map(|(switch, status, detail)| (switch, env, status, detail)),
        );
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
    let mut per_switch: HashMap<(usize, usize), Vec<&str>> = HashMap::new();
    for (switch, env, status, detail) in &failures {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{detail}");
        assert!(
            *switch > 0,
            "environment {env} failed before any switch: {detail}"
        );
        per_switch.entry((*switch, *env)).or_default().push(detail);
    }
    for ((switch, env), details) in &per_switch {
        assert!(
            details.len() <= 1,
            "at most the one request in flight fails per switch and environment; \
             switch {switch} cost environment {env} {}: {details:?}",
            details.len()
        );
    }
    for (to, status) in &cold_starts {
        assert_eq!(
            *status,
            StatusCode::OK,
            "cold start after the switch to {to}"
        );
    }
    audit_passes_as(&db, &user, "pw-2").await;
    audit_passes_as(&db, &clone, "pw-3").await;

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
