//! The service refuses to serve (503) when the database would not enforce
//! isolation on its own.

use axum::http::StatusCode;

use crate::common::{TestApp, TestDb};

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
