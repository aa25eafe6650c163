//! The data side of offboarding (issue 19's building block,
//! `tenant_users_migrate::lifecycle`): one tenant's rows in every tenant
//! table, exported from one snapshot and purged in one transaction, as a
//! role without BYPASSRLS under FORCEd RLS; a table added by a migration
//! (the test-only `projects`) is covered with no code change.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tenant_users::tenant::TenantId;
use tenant_users_control::lifecycle;

use crate::common::{TestApp, cleanup, connect};
use crate::resource_kit::{create, with_projects};

/// A login role shaped like the control plane's: not the owner, no
/// BYPASSRLS, reads and deletes tenant rows, marks the registry row.
/// Dropped with what it was granted when the test ends.
struct ControlRole {
    name: String,
    admin: tokio_postgres::Config,
}

impl ControlRole {
    async fn create(app: &TestApp) -> (Self, tokio_postgres::Client) {
        let name = format!("{}_ctl", app.db.app_user);
        let admin = app.db.admin_config();
        connect(&admin)
            .await
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD 'ctl-pw' NOSUPERUSER NOBYPASSRLS;
                 GRANT USAGE ON SCHEMA public TO {name};
                 GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA public TO {name};
                 GRANT UPDATE (status, updated_at) ON public.tenants TO {name};"
            ))
            .await
            .unwrap();
        let mut login = admin.clone();
        login.user(&name).password("ctl-pw");
        let client = connect(&login).await;
        (ControlRole { name, admin }, client)
    }
}

impl Drop for ControlRole {
    fn drop(&mut self) {
        let name = &self.name;
        cleanup(
            &self.admin,
            vec![format!("DROP OWNED BY {name}; DROP ROLE {name}")],
        );
    }
}

#[tokio::test]
async fn a_tenant_is_exported_from_one_snapshot_and_purged_with_proof_sparing_the_others() {
    let app = with_projects().await;
    for tenant in ["acme", "globex"] {
        for n in 0..3 {
            let owner = app
                .create_user(tenant, &format!("u{n}@{tenant}.test"), "U")
                .await;
            create(
                &app,
                tenant,
                "/projects",
                json!({"name": format!("P{n}"), "owner_user_id": owner}),
            )
            .await;
        }
    }
    let (_role, ctl) = ControlRole::create(&app).await;
    let acme = TenantId::parse("acme").unwrap();

    // Export: every tenant table, projects included, referencing tables
    // before the ones they reference.
    let files = lifecycle::export(&ctl, &acme).await.unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.table.as_str()).collect();
    assert_eq!(
        names,
        [
            "public.projects",
            "public.tenant_rate",
            "public.tenants",
            "public.users"
        ]
    );
    let truth = app.db.rows_of("acme").await;
    for (file, (table, n)) in files.iter().zip(&truth) {
        assert_eq!((&file.table, file.rows as i64), (table, *n));
        let digest: String = Sha256::digest(&file.body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(file.sha256, digest);
        let lines: Vec<Value> = String::from_utf8(file.body.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, file.rows);
        assert!(
            lines.iter().all(|l| l["tenant_id"] == "acme"),
            "{}",
            file.table
        );
    }
    assert_eq!(files[0].rows, 3, "the projects added by a migration");

    // Purge: every table emptied of acme in one transaction, the registry
    // row left as the tombstone, globex untouched.
    let globex_before = app.db.rows_of("globex").await;
    let purged = lifecycle::purge(&ctl, &acme).await.unwrap();
    let deleted: Vec<(&str, u64)> = purged
        .iter()
        .map(|p| (p.table.as_str(), p.deleted))
        .collect();
    assert_eq!(
        deleted,
        [
            ("public.projects", 3),
            ("public.tenant_rate", 1),
            ("public.users", 3)
        ]
    );
    assert_eq!(
        app.db.rows_of("acme").await,
        [
            ("public.projects".to_owned(), 0),
            ("public.tenant_rate".to_owned(), 0),
            ("public.tenants".to_owned(), 1),
            ("public.users".to_owned(), 0),
        ]
    );
    let status: String = app
        .db
        .admin()
        .await
        .query_one("SELECT status FROM tenants WHERE tenant_id = 'acme'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "offboarded");
    assert_eq!(app.db.rows_of("globex").await, globex_before);
    // The tombstone refuses the old tenant's tokens; the other is served.
    app.get("/users", &app.token("acme"))
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/projects", &app.token("globex")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_purge_that_would_leave_rows_commits_nothing() {
    // A row the DELETE does not reach (here a restrictive policy hides one
    // of acme's users from the control role's deletes) is still counted:
    // the purge refuses and rolls back rather than claim an empty tenant.
    let app = with_projects().await;
    app.create_user("acme", "ada@acme.test", "Ada").await;
    app.create_user("acme", "hidden@acme.test", "Hidden").await;
    let (role, ctl) = ControlRole::create(&app).await;
    app.db
        .admin()
        .await
        .batch_execute(&format!(
            "CREATE POLICY hide_one ON users AS RESTRICTIVE FOR DELETE TO {} \
             USING (email <> 'hidden@acme.test')",
            role.name
        ))
        .await
        .unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let error = lifecycle::purge(&ctl, &acme).await.unwrap_err();
    assert!(
        error.to_string().contains("public.users still holds 1 row"),
        "{error}"
    );
    let users: i64 = app
        .db
        .admin()
        .await
        .query_one("SELECT count(*) FROM users WHERE tenant_id = 'acme'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 2, "rolled back: nothing deleted");
}
