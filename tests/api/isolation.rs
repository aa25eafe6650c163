//! No tenant ever sees, changes or deletes another's rows: through every
//! route, at the SQL level as the application role, and across requests on
//! the one shared connection.

use axum::http::StatusCode;
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::common::TestApp;

#[tokio::test]
async fn each_tenant_lists_only_its_own_users() {
    let app = TestApp::spawn().await;
    app.create_user("acme", "ada@acme.test", "Ada").await;
    app.create_user("acme", "alan@acme.test", "Alan").await;
    app.create_user("globex", "hank@globex.test", "Hank").await;
    assert_eq!(
        app.emails_seen_by("acme").await,
        vec!["ada@acme.test", "alan@acme.test"]
    );
    assert_eq!(app.emails_seen_by("globex").await, vec!["hank@globex.test"]);
    assert!(app.emails_seen_by("initech").await.is_empty());
}

#[tokio::test]
async fn other_tenants_user_is_not_found_and_not_changed_by_any_route() {
    let app = TestApp::spawn().await;
    let hank = app.create_user("globex", "hank@globex.test", "Hank").await;
    let acme = app.token("acme");
    let path = format!("/users/{hank}");
    let missing = format!("/users/{}", uuid::Uuid::new_v4());

    // The answers for "someone else's" and "nobody's" are identical.
    let theirs = app.get(&path, &acme).await;
    let nobodys = app.get(&missing, &acme).await;
    assert_eq!(
        theirs.assert_problem(StatusCode::NOT_FOUND),
        nobodys.assert_problem(StatusCode::NOT_FOUND)
    );
    assert_eq!(theirs.body, nobodys.body);

    app.patch(
        &path,
        &acme,
        json!({"name": "Pwned", "email": "pwned@acme.test"}),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND);
    app.delete(&path, &acme)
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    assert_eq!(
        app.all_rows().await,
        vec![("globex".into(), "hank@globex.test".into(), "Hank".into())]
    );
    assert_eq!(
        app.get(&path, &app.token("globex")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_same_email_may_exist_in_two_tenants_and_reveals_nothing() {
    let app = TestApp::spawn().await;
    app.create_user("globex", "shared@example.com", "Globex's")
        .await;
    let r = app
        .post(
            "/users",
            &app.token("acme"),
            json!({"email": "Shared@Example.com", "name": "Acme's"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(app.emails_seen_by("acme").await, vec!["Shared@Example.com"]);
    assert_eq!(
        app.emails_seen_by("globex").await,
        vec!["shared@example.com"]
    );
    assert_eq!(app.all_rows().await.len(), 2);
}

#[tokio::test]
async fn one_connection_serving_tenant_a_then_b_carries_nothing_over() {
    let app = TestApp::spawn().await;
    let ada = app.create_user("acme", "ada@acme.test", "Ada").await;
    app.create_user("globex", "hank@globex.test", "Hank").await;

    // A succeeds, then B: B sees only B.
    assert_eq!(
        app.get(&format!("/users/{ada}"), &app.token("acme"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(app.emails_seen_by("globex").await, vec!["hank@globex.test"]);

    // A fails inside the transaction (duplicate), then B: still only B.
    let dup = app
        .post(
            "/users",
            &app.token("acme"),
            json!({"email": "ada@acme.test", "name": "Dup"}),
        )
        .await;
    dup.assert_problem(StatusCode::CONFLICT);
    assert_eq!(app.emails_seen_by("globex").await, vec!["hank@globex.test"]);
    assert_eq!(
        app.get(&format!("/users/{ada}"), &app.token("globex"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Between transactions the session holds no tenant and the default timeout.
    let (tenant, timeout) = app.app.db.session_settings().await.unwrap();
    assert_eq!(tenant, "", "tenant setting leaked into the session");
    assert_eq!(timeout, "0");
    assert_eq!(
        app.app_activity().await.len(),
        1,
        "one connection served all of it"
    );
}

#[tokio::test]
async fn as_the_app_role_rls_refuses_other_tenants_rows_on_its_own() {
    let app = TestApp::spawn().await;
    let hank = app.create_user("globex", "hank@globex.test", "Hank").await;
    let sql = app.db.app_client().await;

    // No tenant set: nothing visible, nothing insertable.
    assert_eq!(
        sql.query("SELECT * FROM users", &[]).await.unwrap().len(),
        0
    );
    let err = sql
        .execute(
            "INSERT INTO users (tenant_id, email, name) VALUES ('globex', 'x@x.test', 'X')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");

    // As acme, even without the WHERE clause the application adds.
    sql.batch_execute("BEGIN; SELECT set_config('app.current_tenant', 'acme', true)")
        .await
        .unwrap();
    assert_eq!(
        sql.query("SELECT * FROM users", &[]).await.unwrap().len(),
        0
    );
    let updated = sql
        .execute("UPDATE users SET name = 'Pwned'", &[])
        .await
        .unwrap();
    assert_eq!(updated, 0, "globex's row is invisible to UPDATE");
    let deleted = sql.execute("DELETE FROM users", &[]).await.unwrap();
    assert_eq!(deleted, 0);
    let err = sql
        .execute(
            "INSERT INTO users (tenant_id, email, name) VALUES ('globex', 'x@x.test', 'X')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "WITH CHECK: {err}"
    );
    sql.batch_execute("ROLLBACK").await.unwrap();

    // Moving one's own row into another tenant fails WITH CHECK.
    sql.batch_execute(
        "BEGIN; SELECT set_config('app.current_tenant', 'acme', true); \
         INSERT INTO users (tenant_id, email, name) VALUES ('acme', 'a@acme.test', 'A')",
    )
    .await
    .unwrap();
    let err = sql
        .execute("UPDATE users SET tenant_id = 'globex'", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    sql.batch_execute("ROLLBACK").await.unwrap();

    // The role cannot switch RLS off or read the migration history.
    for ddl in [
        "ALTER TABLE users DISABLE ROW LEVEL SECURITY",
        "SELECT * FROM refinery_schema_history",
        "TRUNCATE users",
    ] {
        let err = sql.batch_execute(ddl).await.unwrap_err();
        assert!(
            matches!(err.code(), Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE),
            "{ddl}: {err}"
        );
    }
    let rows = app.all_rows().await;
    assert_eq!(
        rows,
        vec![("globex".into(), "hank@globex.test".into(), "Hank".into())]
    );
    assert!(!hank.is_empty());
}

#[tokio::test]
async fn set_local_does_not_outlive_the_transaction() {
    let app = TestApp::spawn().await;
    app.create_user("acme", "ada@acme.test", "Ada").await;
    let sql = app.db.app_client().await;
    sql.batch_execute("BEGIN; SELECT set_config('app.current_tenant', 'acme', true)")
        .await
        .unwrap();
    assert_eq!(
        sql.query("SELECT * FROM users", &[]).await.unwrap().len(),
        1
    );
    sql.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        sql.query("SELECT * FROM users", &[]).await.unwrap().len(),
        0
    );
    // And after an error, too.
    sql.batch_execute("BEGIN; SELECT set_config('app.current_tenant', 'acme', true)")
        .await
        .unwrap();
    assert!(sql.batch_execute("SELECT 1/0").await.is_err());
    sql.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        sql.query("SELECT * FROM users", &[]).await.unwrap().len(),
        0
    );
}

#[tokio::test]
async fn the_scope_function_checks_the_tenant_and_sets_only_the_transaction() {
    let app = TestApp::spawn().await;
    let sql = app.db.app_client().await;
    for bad in ["", "x'; DROP TABLE users; --", &"a".repeat(65), "a b"] {
        let err = sql
            .query("SELECT public.app_set_tenant($1, 1000)", &[&bad])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PARAMETER_VALUE),
            "{bad:?}: {err}"
        );
    }
    sql.batch_execute("BEGIN; SELECT public.app_set_tenant('acme', 1234)")
        .await
        .unwrap();
    assert_eq!(session_state(&sql).await, ("acme".into(), "1234ms".into()));
    sql.batch_execute("COMMIT").await.unwrap();
    assert_eq!(session_state(&sql).await, ("".into(), "0".into()));
}

/// The tenant setting ('' when unset) and statement_timeout as `sql` sees them.
async fn session_state(sql: &tokio_postgres::Client) -> (String, String) {
    let row = sql
        .query_one(
            "SELECT coalesce(current_setting('app.current_tenant', true), ''), current_setting('statement_timeout')",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}
