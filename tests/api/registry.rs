//! The tenant registry and the tier's limits, checked inside each request's
//! one round trip (`app_enter_tenant`): who may be served, how fast, how
//! many at once, and with which database settings; through PgBouncer in
//! transaction mode (the RDS Proxy stand-in) where environments share it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::pgbouncer::PgBouncer;
use crate::common::{TestApp, TestDb};

/// A tier of the test's own: `rate` requests/s with a bucket of `burst`,
/// `cap` transactions at once, `timeout_ms` per statement.
async fn tier(
    db: &TestDb,
    name: &str,
    rate: Option<f64>,
    burst: Option<i32>,
    cap: Option<i32>,
    timeout_ms: i32,
) {
    db.admin()
        .await
        .execute(
            "INSERT INTO tenant_tiers (tier, requests_per_second, burst, max_concurrent, statement_timeout_ms, work_mem_kb) \
             VALUES ($1, $2::float8::numeric, $3, $4, $5, 1024)",
            &[&name, &rate, &burst, &cap, &timeout_ms],
        )
        .await
        .unwrap();
}

async fn set_status(db: &TestDb, tenant: &str, status: &str) {
    db.admin()
        .await
        .execute(
            "UPDATE tenants SET status = $2 WHERE tenant_id = $1",
            &[&tenant, &status],
        )
        .await
        .unwrap();
}

/// `n` environments on `db`, each with its one connection through one
/// PgBouncer in transaction mode.
async fn environments(db: &Arc<TestDb>, bouncer: &PgBouncer, n: usize) -> Vec<Arc<TestApp>> {
    let env = bouncer.app_env(&db.app_user, "pw", &db.name);
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(Arc::new(
            TestApp::from_env_shared(db.clone(), env.clone()).await,
        ));
    }
    apps
}

fn problem(r: &crate::common::TestResponse, status: StatusCode) -> Value {
    r.assert_problem(status);
    r.json()
}

#[tokio::test]
async fn an_unregistered_tenant_is_refused_before_any_query_runs() {
    let app = TestApp::spawn().await;
    let token = app.token("umbrella");
    let r = app
        .post(
            "/users",
            &token,
            json!({"email": "a@umbrella.test", "name": "A"}),
        )
        .await;
    let body = problem(&r, StatusCode::FORBIDDEN);
    assert_eq!(body["title"], "Tenant not registered");
    assert_eq!(body["type"], "/problems/tenant-unknown");
    let r = app.get("/users", &token).await;
    r.assert_problem(StatusCode::FORBIDDEN);
    // Nothing was written: the refusal aborted the transaction first.
    assert!(app.all_rows().await.is_empty());
    // Registering it is all it takes.
    app.db.register("umbrella", "standard").await;
    let r = app
        .post(
            "/users",
            &token,
            json!({"email": "a@umbrella.test", "name": "A"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test]
async fn suspension_and_offboarding_take_effect_on_the_next_request() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);

    set_status(&app.db, "acme", "suspended").await;
    let r = app.get("/users", &token).await;
    let body = problem(&r, StatusCode::FORBIDDEN);
    assert_eq!(body["title"], "Tenant suspended");
    assert_eq!(body["type"], "/problems/tenant-suspended");
    let r = app
        .post(
            "/users",
            &token,
            json!({"email": "s@acme.test", "name": "S"}),
        )
        .await;
    r.assert_problem(StatusCode::FORBIDDEN);
    // Other tenants are served meanwhile.
    assert_eq!(
        app.get("/users", &app.token("globex")).await.status,
        StatusCode::OK
    );

    set_status(&app.db, "acme", "active").await;
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);

    set_status(&app.db, "acme", "offboarded").await;
    let body = problem(&app.get("/users", &token).await, StatusCode::FORBIDDEN);
    assert_eq!(body["type"], "/problems/tenant-unknown");
    assert!(app.all_rows().await.is_empty());
}

#[tokio::test]
async fn over_the_rate_is_429_with_retry_after_and_served_again_after_it() {
    let app = TestApp::spawn().await;
    tier(&app.db, "slow", Some(1.0), Some(3), None, 5000).await;
    app.db.register("slowco", "slow").await;
    let token = app.token("slowco");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(app.get("/users", &token).await);
    }
    let ok = statuses
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 3, "the burst, then refused");
    let refused = statuses.last().unwrap();
    let body = problem(refused, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["type"], "/problems/rate-limited");
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another tenant is not affected.
    assert_eq!(
        app.get("/users", &app.token("acme")).await.status,
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = app.get("/users", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_is_one_budget_across_environments_through_the_pooler() {
    let db = Arc::new(TestDb::create().await);
    tier(&db, "shared", Some(2.0), Some(20), None, 5000).await;
    db.register("busyco", "shared").await;
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw")], 2);
    let apps = environments(&db, &bouncer, 6).await;
    let token = apps[0].token("busyco");
    let started = Instant::now();
    let mut admitted = 0;
    let mut refused = 0;
    // Every environment asks as fast as it can, for about two seconds.
    while started.elapsed() < Duration::from_secs(2) {
        for app in &apps {
            match app.get("/users", &token).await.status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The bucket of 20 plus 2/s, however many environments ask.
    let most = 20.0 + 2.0 * elapsed + 1.0;
    assert!(
        admitted as f64 <= most && admitted >= 20,
        "admitted {admitted} in {elapsed:.1}s (at most {most:.0}), refused {refused}"
    );
    assert!(refused > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_refuses_a_second_transaction_while_one_runs() {
    let db = Arc::new(TestDb::create().await);
    tier(&db, "single", None, None, Some(1), 5000).await;
    db.register("soloco", "single").await;
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw")], 4);
    let apps = environments(&db, &bouncer, 2).await;
    let token = apps[0].token("soloco");
    assert_eq!(apps[0].get("/users", &token).await.status, StatusCode::OK);

    // Hold the users table so the first request's transaction stays open
    // (holding the tenant's one slot) while the second arrives.
    let admin = db.admin().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let first = {
        let (app, token) = (apps[0].clone(), token.clone());
        tokio::spawn(async move { app.get("/users", &token).await.status })
    };
    // Wait until the first is waiting on the lock inside its transaction.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the first request never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = apps[1].get("/users", &token).await;
    let body = problem(&second, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["type"], "/problems/too-many-concurrent");
    assert!(second.header("retry-after").is_some());
    // Another tenant is not capped by it (it waits for the lock, then runs).
    admin.batch_execute("COMMIT").await.unwrap();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    // The refused environment waits out its Retry-After locally, then is served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(apps[1].get("/users", &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_tiers_statement_timeout_applies_not_only_the_functions() {
    let app = TestApp::spawn().await;
    tier(&app.db, "hasty", None, None, None, 300).await;
    app.db.register("hastyco", "hasty").await;
    let admin = app.db.admin().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let r = app.get("/users", &app.token("hastyco")).await;
    let waited = started.elapsed();
    admin.batch_execute("COMMIT").await.unwrap();
    let body = problem(&r, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["type"], "/problems/timeout");
    // The function's own limit is 5 s (DbConfig::plain): the tier's 300 ms won.
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
}

#[tokio::test]
async fn tier_settings_are_transaction_local() {
    let db = TestDb::create().await;
    tier(&db, "tight", None, None, None, 1234).await;
    db.register("tightco", "tight").await;
    let app = db.app_client().await;
    let rows = app
        .simple_query(
            "BEGIN; SELECT public.app_enter_tenant('tightco', 5000, 0); \
             SELECT current_setting('statement_timeout'), current_setting('work_mem'), \
                    current_setting('app.current_tenant'); COMMIT; \
             SELECT current_setting('statement_timeout'), coalesce(current_setting('app.current_tenant', true), '')",
        )
        .await
        .unwrap();
    let values: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(values[1], ["1234ms", "1MB", "tightco"]);
    assert_ne!(values[2][0], "1234ms");
    assert_eq!(values[2][1], "");
}

#[tokio::test]
async fn the_app_role_reads_only_its_own_registry_row_and_changes_none() {
    let db = TestDb::create().await;
    let app = db.app_client().await;
    app.batch_execute("BEGIN; SELECT public.app_enter_tenant('acme', 5000, 0)")
        .await
        .unwrap();
    let seen: Vec<String> = app
        .query("SELECT tenant_id FROM tenants", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, ["acme"]);
    let buckets: i64 = app
        .query_one("SELECT count(*) FROM tenant_rate", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(buckets, 1);
    for (sql, what) in [
        (
            "UPDATE tenants SET status = 'active' WHERE tenant_id = 'acme'",
            "status",
        ),
        (
            "UPDATE tenants SET tier = 'premium' WHERE tenant_id = 'acme'",
            "tier",
        ),
        (
            "INSERT INTO tenants (tenant_id) VALUES ('acme2')",
            "registration",
        ),
        (
            "DELETE FROM tenants WHERE tenant_id = 'acme'",
            "deregistration",
        ),
        (
            "UPDATE tenant_tiers SET requests_per_second = 1000000",
            "limits",
        ),
        ("DELETE FROM tenant_rate", "the bucket row"),
    ] {
        app.batch_execute("SAVEPOINT s").await.unwrap();
        let error = app.batch_execute(sql).await.expect_err(what);
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{what}: {error}"
        );
        app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    }
    app.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn the_audit_holds_the_registry_to_the_tenant_table_rules() {
    let db = TestDb::create().await;
    let app = TestApp::on(db, &[]).await;
    let report = app.app.db.audit_report().await.unwrap();
    let text: Vec<String> = report.iter().map(|c| c.to_string()).collect();
    for table in ["public.tenants", "public.tenant_rate", "public.users"] {
        assert!(
            text.iter()
                .any(|c| c.contains(table) && c.contains("table-tenant-policy")),
            "{table} judged as a tenant table: {text:#?}"
        );
    }
    assert!(report.iter().all(|c| c.passed), "{text:#?}");

    // A registry that every tenant could read fails the audit.
    app.db
        .admin()
        .await
        .batch_execute("ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY; ALTER TABLE tenants DISABLE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let report = app.app.db.audit_report().await.unwrap();
    let failed: Vec<String> = report
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.to_string())
        .collect();
    assert!(
        failed.iter().any(|c| c.contains("public.tenants")),
        "{failed:#?}"
    );
}

#[tokio::test]
async fn a_lease_never_waits_for_another_environments_lease() {
    let db = TestDb::create().await;
    tier(&db, "roomy", Some(1.0), Some(50), None, 5000).await;
    db.register("roomyco", "roomy").await;
    let (holder, other) = (db.app_client().await, db.app_client().await);
    // One environment leases and keeps its transaction (the row lock) open.
    holder
        .batch_execute("BEGIN; SELECT public.app_enter_tenant('roomyco', 5000, 40)")
        .await
        .unwrap();
    // Another is not made to wait: tokens to spare, so it goes ahead, leasing none.
    let started = Instant::now();
    let granted: i32 = other
        .query_one("SELECT public.app_enter_tenant('roomyco', 5000, 4)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(granted, 0);
    assert!(started.elapsed() < Duration::from_secs(1));
    // Asking for more than the committed level could give: refused, at once.
    let error = other
        .query_one("SELECT public.app_enter_tenant('roomyco', 5000, 60)", &[])
        .await
        .expect_err("over the committed level");
    assert_eq!(error.code().map(|c| c.code()), Some("TU429"));
    holder.batch_execute("COMMIT").await.unwrap();
    // The holder's 40 are gone from the bucket; what is left is leased again.
    let granted: i32 = other
        .query_one("SELECT public.app_enter_tenant('roomyco', 5000, 60)", &[])
        .await
        .unwrap()
        .get(0);
    assert!((10..=12).contains(&granted), "granted {granted}");
}

/// The level of acme's bucket, as the owner sees it.
async fn acme_tokens(app: &TestApp) -> f64 {
    app.db
        .admin()
        .await
        .query_one(
            "SELECT tokens FROM tenant_rate WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_tenant_moved_from_unlimited_to_a_limited_tier_starts_it_full() {
    // Every test tenant is registered unlimited, whose bucket is kept at 0:
    // moved to basic (burst 20), it gets the burst at once, not a bucket
    // that fills from empty.
    let app = TestApp::spawn().await;
    app.db.register("acme", "basic").await;
    let tokens = acme_tokens(&app).await;
    assert_eq!(tokens, 20.0);
    let token = app.token("acme");
    for n in 0..15 {
        let r = app.get("/users", &token).await;
        assert_eq!(r.status, StatusCode::OK, "request {n}: {}", r.text());
    }
    // Back to a tier with a smaller burst: clamped, never raised.
    app.db.register("acme", "premium").await;
    app.db.register("acme", "basic").await;
    let tokens = acme_tokens(&app).await;
    assert!(tokens <= 20.0, "{tokens}");
}
