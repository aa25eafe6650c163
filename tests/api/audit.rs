//! The service refuses to serve (503) when the database would not enforce
//! isolation on its own.

use axum::http::StatusCode;

use std::process::Command;

use tenant_users::config::DbConfig;
use tenant_users::db::Database;

use crate::common::{SECRET, TestApp, TestDb};

async fn misconfigured_by(sql: &str) {
    let db = TestDb::create().await;
    let admin = db.admin().await;
    admin
        .batch_execute(&sql.replace("{app}", &db.app_user))
        .await
        .unwrap();
    let app = TestApp::on(db, &[]).await;
    let r = app.get("/users", &app.token("acme")).await;
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("misconfigured"), "{sql}: {detail}");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn a_correct_deployment_passes_the_audit() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.get("/users", &app.token("acme")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refuses_to_serve_when_rls_is_disabled() {
    misconfigured_by("ALTER TABLE users DISABLE ROW LEVEL SECURITY").await;
}

#[tokio::test]
async fn refuses_to_serve_when_rls_is_not_forced() {
    misconfigured_by("ALTER TABLE users NO FORCE ROW LEVEL SECURITY").await;
}

#[tokio::test]
async fn refuses_to_serve_as_a_role_with_bypassrls() {
    misconfigured_by("ALTER ROLE {app} BYPASSRLS").await;
}

#[tokio::test]
async fn refuses_to_serve_as_the_table_owner() {
    misconfigured_by("ALTER TABLE users OWNER TO {app}").await;
}

#[tokio::test]
async fn refuses_to_serve_when_a_permissive_policy_widens_access() {
    misconfigured_by("CREATE POLICY peek ON users FOR SELECT USING (true)").await;
}

#[tokio::test]
async fn refuses_to_serve_a_tenant_table_without_the_policy() {
    misconfigured_by(
        "CREATE TABLE notes (tenant_id text, body text); GRANT SELECT ON notes TO {app}",
    )
    .await;
}

#[tokio::test]
async fn refuses_to_serve_as_a_superuser() {
    let db = TestDb::create().await;
    let url = db.admin_url();
    let app = TestApp::from_env(db, vec![("DATABASE_URL".into(), url)]).await;
    let detail = app
        .get("/users", &app.token("acme"))
        .await
        .assert_problem(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("misconfigured"), "{detail}");
}

#[tokio::test]
async fn the_audit_report_names_each_failed_check() {
    let db = TestDb::create().await;
    let report = Database::new(DbConfig::plain(db.app_config()))
        .await
        .audit_report()
        .await
        .unwrap();
    assert!(report.iter().all(|c| c.passed), "{report:#?}");
    assert_eq!(report.len(), 8, "role: 2 checks, schema: 1, users: 5");

    db.admin()
        .await
        .batch_execute("ALTER TABLE users NO FORCE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let report = Database::new(DbConfig::plain(db.app_config()))
        .await
        .audit_report()
        .await
        .unwrap();
    let failed: Vec<String> = report
        .iter()
        .filter(|c| !c.passed)
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        failed,
        vec!["FAIL  table public.users: row level security is forced"]
    );
}

fn audit_command(db: &TestDb) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-users"))
        .arg("audit")
        .env("DATABASE_URL", db.app_url())
        .env("JWT_HS256_SECRET", SECRET)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn the_audit_command_reports_and_fails_on_a_broken_deployment() {
    let db = TestDb::create().await;
    let (ok, report) = audit_command(&db);
    assert!(ok, "{report}");
    assert!(
        report.contains("PASS  role ") && report.contains("8 checks, 0 failed"),
        "{report}"
    );

    db.admin()
        .await
        .batch_execute(&format!("ALTER ROLE {} BYPASSRLS", db.app_user))
        .await
        .unwrap();
    let (ok, report) = audit_command(&db);
    assert!(!ok);
    assert!(
        report.contains(&format!(
            "FAIL  role {}: does not have BYPASSRLS",
            db.app_user
        )),
        "{report}"
    );
}
