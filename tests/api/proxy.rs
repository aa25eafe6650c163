//! Through the RDS Proxy stand-in (PgBouncer, transaction pooling, TLS
//! verify-full): many execution environments, each with its one connection,
//! share a server pool smaller than their number and interleave tenants.
//! Server connections are handed from tenant to tenant at every
//! transaction boundary, so any session state would leak here.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;

use crate::common::pgbouncer::PgBouncer;
use crate::common::{TestApp, TestDb};

const ENVIRONMENTS: usize = 12;
const STEPS: usize = 12;
const TENANTS: [&str; 4] = ["t-red", "t-green", "t-blue", "t-gold"];
const POOL: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_environments_through_a_small_pool_never_cross_tenants() {
    let db = Arc::new(TestDb::create().await);
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw")], POOL);
    let env = bouncer.app_env(&db.app_user, "pw", &db.name);
    for tenant in TENANTS {
        db.register(tenant, "unlimited").await;
    }
    let mut tasks = Vec::new();
    for e in 0..ENVIRONMENTS {
        let app = TestApp::from_env_shared(db.clone(), env.clone()).await;
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut created: Vec<(String, String)> = Vec::new();
            for step in 0..STEPS {
                let tenant = TENANTS[(e + step) % TENANTS.len()];
                let other = TENANTS[(e + step + 1) % TENANTS.len()];
                let email = format!("e{e}s{step}@{tenant}.test");
                let r = app
                    .post(
                        "/users",
                        &app.token(tenant),
                        json!({"email": email, "name": "N"}),
                    )
                    .await;
                if r.status != StatusCode::CREATED {
                    errors.push(format!("create {email}: {} {}", r.status, r.text()));
                    continue;
                }
                created.push((tenant.to_owned(), email.clone()));
                let id = r.json()["user_id"].as_str().unwrap().to_owned();
                let list = app.get("/users?limit=100", &app.token(tenant)).await;
                if list.status != StatusCode::OK {
                    errors.push(format!(
                        "list for {tenant}: {} {}",
                        list.status,
                        list.text()
                    ));
                    continue;
                }
                let seen: Vec<String> = match list.json()["users"].as_array() {
                    Some(users) => users
                        .iter()
                        .map(|u| u["email"].as_str().unwrap_or_default().to_owned())
                        .collect(),
                    None => {
                        errors.push(format!("list for {tenant} has no users array"));
                        continue;
                    }
                };
                // Other environments add rows for the same tenant at the
                // same time, so the list holds at least this one's own.
                for (_, mine) in created.iter().filter(|(t, _)| t == tenant) {
                    if !seen.contains(mine) {
                        errors.push(format!("{tenant} does not see its own {mine}"));
                    }
                }
                for email in &seen {
                    if !email.ends_with(&format!("@{tenant}.test")) {
                        errors.push(format!("{tenant} saw {email}"));
                    }
                }
                if app
                    .get(&format!("/users/{id}"), &app.token(tenant))
                    .await
                    .status
                    != StatusCode::OK
                {
                    errors.push(format!("{tenant} lost its own {id}"));
                }
                if app
                    .get(&format!("/users/{id}"), &app.token(other))
                    .await
                    .status
                    != StatusCode::NOT_FOUND
                {
                    errors.push(format!("{other} reached {tenant}'s {id}"));
                }
            }
            (errors, created, app.app_activity().await.len())
        }));
    }
    let mut all_created = Vec::new();
    for task in tasks {
        let (errors, created, _) = task.await.unwrap();
        assert!(errors.is_empty(), "{errors:#?}");
        all_created.extend(created);
    }
    assert_eq!(all_created.len(), ENVIRONMENTS * STEPS);

    // Once all is written, each tenant lists exactly its own rows, through
    // the proxy as through the table.
    let app = TestApp::from_env_shared(db.clone(), env.clone()).await;
    for tenant in TENANTS {
        let r = app.get("/users?limit=100", &app.token(tenant)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let mut seen: Vec<String> = r.json()["users"]
            .as_array()
            .expect("users array")
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_owned())
            .collect();
        seen.sort();
        let mut expected: Vec<String> = all_created
            .iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, e)| e.clone())
            .collect();
        expected.sort();
        assert!(!expected.is_empty());
        assert_eq!(seen, expected, "{tenant}'s list");
    }

    // Nothing lost, nothing misfiled: each row sits in its tenant.
    let admin = db.admin().await;
    for row in admin
        .query("SELECT tenant_id, email FROM users", &[])
        .await
        .unwrap()
    {
        let (tenant, email): (String, String) = (row.get(0), row.get(1));
        assert!(
            email.ends_with(&format!("@{tenant}.test")),
            "{email} filed under {tenant}"
        );
    }
    let count: i64 = admin
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, all_created.len());
    // The proxy really multiplexed: at most POOL server connections.
    let servers: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&db.app_user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        servers as u32 <= POOL,
        "{servers} server connections for {ENVIRONMENTS} environments"
    );
}
