//! The resource kit: a tenant-scoped resource is one migration and one
//! module (`resource_kit/projects.{sql,rs}`, written against the library's
//! public API only), and each mistake the README's guide warns about fails
//! here, by name. The isolation checks are written once and run for every
//! resource, and at the SQL level for every tenant table in the catalog.

pub mod projects;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tenant_users::db::config::TlsConfig;
use tenant_users::resource::Resource;
use tenant_users_migrate::{self as migrate, AppRole, MigrateError};

use crate::common::{TestApp, TestDb};

fn role(db: &TestDb) -> AppRole {
    AppRole {
        name: db.app_user.clone(),
        password: Some(db.app_password.clone()),
    }
}

/// Applies `sql` as a migration would (as the owner), then runs `migrate`
/// again: the grants are recomputed and the audit runs as the app role.
async fn migrate_with(db: &TestDb, sql: &str) -> Result<(), MigrateError> {
    db.admin()
        .await
        .batch_execute(&sql.replace("{app}", &db.app_user))
        .await
        .expect("the test migration applies");
    migrate::run(&db.admin_config(), &TlsConfig::DISABLED, &role(db)).await
}

/// The product's resources and the test-only one.
fn all() -> Vec<Resource> {
    let mut all = tenant_users::http::RESOURCES.to_vec();
    all.push(projects::RESOURCE);
    all
}

/// The app with the projects resource beside users.
pub async fn with_projects() -> TestApp {
    let db = TestDb::create().await;
    migrate_with(&db, projects::MIGRATION)
        .await
        .expect("migrate passes with the test migration");
    let mut app = TestApp::on(db, &[]).await;
    app.router = tenant_users::http::router_for(app.app.clone(), &all());
    app
}

pub async fn create(app: &TestApp, tenant: &str, path: &str, body: Value) -> String {
    let r = app.post(path, &app.token(tenant), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let location = r.header("location").expect("Location").to_owned();
    location.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_resource_of_one_migration_and_one_module_serves_its_routes() {
    let app = with_projects().await;
    let token = app.token("acme");
    let ada = app.create_user("acme", "ada@acme.test", "Ada").await;
    let id = create(
        &app,
        "acme",
        "/projects",
        json!({"name": "Apollo", "owner_user_id": ada}),
    )
    .await;
    let got = app.get(&format!("/projects/{id}"), &token).await.json();
    assert_eq!(
        (got["name"].as_str(), got["owner_user_id"].as_str()),
        (Some("Apollo"), Some(ada.as_str()))
    );
    let r = app
        .patch(
            &format!("/projects/{id}"),
            &token,
            json!({"owner_user_id": null}),
        )
        .await;
    assert_eq!(r.json()["owner_user_id"], Value::Null, "{}", r.text());
    for n in 0..3 {
        create(&app, "acme", "/projects", json!({"name": format!("P{n}")})).await;
    }
    // Keyset pagination, from the kit.
    let first = app.get("/projects?limit=3", &token).await.json();
    assert_eq!(first["projects"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = app
        .get(&format!("/projects?limit=3&cursor={cursor}"), &token)
        .await
        .json();
    assert_eq!(second["projects"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
    // The kit's input errors.
    app.get("/projects?limit=0", &token)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    app.get("/projects/not-a-uuid", &token)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    let d = app
        .post(
            "/projects",
            &token,
            json!({"name": "X", "tenant_id": "globex"}),
        )
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(d.contains("comes from your token"), "{d}");
    let r = app.delete(&format!("/projects/{id}"), &token).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[test]
fn its_statements_pass_the_check_every_resource_passes() {
    for sql in projects::RESOURCE.statements {
        tenant_users::resource::check_statement(sql).unwrap();
    }
    // The check is not vacuous: the same statement without the tenant fails.
    let unscoped = projects::RESOURCE.statements[2].replace("tenant_id = $1 AND ", "");
    assert!(
        tenant_users::resource::check_statement(&unscoped).is_err(),
        "{unscoped}"
    );
}

#[tokio::test]
async fn its_table_is_granted_from_the_catalog_and_an_unmarked_one_gets_nothing() {
    let db = TestDb::create().await;
    migrate_with(
        &db,
        &format!("{}; CREATE TABLE plain (x int);", projects::MIGRATION),
    )
    .await
    .unwrap();
    let admin = db.admin().await;
    let privileges = |table: &'static str| {
        let admin = &admin;
        let app = db.app_user.clone();
        async move {
            admin
                .query_one(
                    "SELECT ARRAY(SELECT p FROM unnest('{SELECT,INSERT,UPDATE,DELETE,TRUNCATE}'::text[]) p
                                   WHERE has_table_privilege($1, $2::text::regclass, p))",
                    &[&app, &table],
                )
                .await
                .unwrap()
                .get::<_, Vec<String>>(0)
        }
    };
    assert_eq!(
        privileges("projects").await,
        ["SELECT", "INSERT", "UPDATE", "DELETE"]
    );
    assert_eq!(
        privileges("users").await,
        ["SELECT", "INSERT", "UPDATE", "DELETE"]
    );
    assert_eq!(
        privileges("tenant_tiers").await,
        ["SELECT"],
        "marked shared"
    );
    assert_eq!(
        privileges("tenants").await,
        ["SELECT"],
        "narrower, by design"
    );
    assert!(
        privileges("plain").await.is_empty(),
        "no tenant_id, not shared"
    );
    assert!(privileges("refinery_schema_history").await.is_empty());
}

#[tokio::test]
async fn a_migration_that_breaks_isolation_fails_migrate_naming_the_finding() {
    let db = TestDb::create().await;
    let unforced =
        projects::MIGRATION.replace("ALTER TABLE projects FORCE ROW LEVEL SECURITY;", "");
    let error = migrate_with(&db, &unforced).await.unwrap_err();
    assert_eq!(error.step(), "audit");
    let text = error.to_string();
    assert!(
        text.contains("[table-rls-forced] table public.projects"),
        "{text}"
    );
}

#[tokio::test]
async fn a_table_without_tenant_id_open_to_every_role_fails_migrate() {
    // GRANT ... TO PUBLIC is beyond the app role's own grants, which
    // migrate recomputes: the audit as the app role is what catches it.
    let db = TestDb::create().await;
    let error = migrate_with(
        &db,
        "CREATE TABLE notes (body text); GRANT SELECT ON notes TO PUBLIC;",
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("[role-reads-only-tenant-tables] table public.notes"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_grant_is_an_audit_finding_not_a_503_per_request() {
    let db = TestDb::create().await;
    db.admin()
        .await
        .batch_execute(&format!("REVOKE INSERT ON users FROM {}", db.app_user))
        .await
        .unwrap();
    let error = migrate::audit_as_app(&db.admin_config(), &TlsConfig::DISABLED, &role(&db))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("[role-has-what-it-needs] table users (found: lacks INSERT)"),
        "{error}"
    );
    // migrate itself puts the grant back.
    migrate::run(&db.admin_config(), &TlsConfig::DISABLED, &role(&db))
        .await
        .unwrap();
}

fn field(r: &crate::common::TestResponse) -> String {
    r.json()["field"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn constraint_violations_are_4xx_naming_the_field() {
    let app = with_projects().await;
    let token = app.token("acme");
    create(&app, "acme", "/projects", json!({"name": "Apollo"})).await;

    // Unique: 409 naming the field, for users and projects alike.
    let r = app
        .post("/projects", &token, json!({"name": "Apollo"}))
        .await;
    r.assert_problem(StatusCode::CONFLICT);
    assert_eq!(
        (r.json()["type"].as_str(), field(&r).as_str()),
        (Some("/problems/duplicate"), "name")
    );
    app.create_user("acme", "ada@acme.test", "Ada").await;
    let r = app
        .post(
            "/users",
            &token,
            json!({"email": "ADA@acme.test", "name": "A"}),
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT);
    assert_eq!(field(&r), "email");

    // A reference to nothing, and to another tenant's user, look the same:
    // 422 naming the field.
    let hank = app.create_user("globex", "hank@globex.test", "Hank").await;
    let mut bodies = Vec::new();
    for owner in [uuid::Uuid::new_v4().to_string(), hank] {
        let r = app
            .post(
                "/projects",
                &token,
                json!({"name": "Gemini", "owner_user_id": owner}),
            )
            .await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(field(&r), "owner_user_id");
        bodies.push(r.text());
    }
    assert_eq!(bodies[0], bodies[1], "another tenant's id reveals nothing");
}

#[tokio::test]
async fn deleting_a_row_others_reference_is_409_and_deletes_nothing() {
    let app = with_projects().await;
    let token = app.token("acme");
    let ada = app.create_user("acme", "ada@acme.test", "Ada").await;
    create(
        &app,
        "acme",
        "/projects",
        json!({"name": "Apollo", "owner_user_id": ada}),
    )
    .await;
    let r = app.delete(&format!("/users/{ada}"), &token).await;
    let detail = r.assert_problem(StatusCode::CONFLICT);
    assert_eq!(r.json()["type"], "/problems/still-referenced");
    assert_eq!(field(&r), "owner_user_id");
    assert!(detail.contains("projects"), "{detail}");
    assert_eq!(
        app.get(&format!("/users/{ada}"), &token).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_constraint_of_every_tenant_table_names_a_field_of_it() {
    // A constraint named against the convention would give clients a 409
    // or 422 without a field: name it <table>_<columns>_key / _fkey.
    let app = with_projects().await;
    let admin = app.db.admin().await;
    let rows = admin
        .query(
            "SELECT c.conrelid::regclass::text, c.conname::text,
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = c.conrelid AND a.attnum > 0 AND NOT a.attisdropped),
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey))
               FROM pg_constraint c
              WHERE c.contype IN ('u', 'f', 'c')
                AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.conrelid
                             AND a.attname = 'tenant_id')
             UNION ALL
             SELECT i.indrelid::regclass::text, x.relname::text,
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND NOT a.attisdropped),
                    -- an expression's columns count as its key: lower(email) is email's
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND NOT a.attisdropped
                             AND (a.attnum = ANY (i.indkey::int2[])
                                  OR pg_get_indexdef(i.indexrelid) ~ ('\\m' || a.attname || '\\M')))
               FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
              WHERE i.indisunique AND NOT i.indisprimary
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
                AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid
                             AND a.attname = 'tenant_id')",
            &[],
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for row in rows {
        let (table, constraint, columns, key): (String, String, Vec<String>, Vec<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if key.iter().all(|c| c == "tenant_id") {
            continue; // about the tenant alone, never a field a client sends
        }
        let field = tenant_users::db::constraint_field(&table, &constraint);
        assert!(
            field.as_ref().is_some_and(|f| columns.contains(f)),
            "{table}.{constraint} names no column of {table} ({field:?})"
        );
        seen.push(format!("{table}.{}", field.unwrap()));
    }
    for expected in ["users.email", "projects.name", "projects.owner_user_id"] {
        assert!(seen.iter().any(|s| s == expected), "{expected} in {seen:?}");
    }
}

/// A resource's collection and a valid new item of it.
struct Kind {
    collection: &'static str,
    id: &'static str,
    body: fn(usize) -> Value,
}

const KINDS: &[Kind] = &[
    Kind {
        collection: "/users",
        id: "user_id",
        body: |n| json!({"email": format!("u{n}@example.test"), "name": format!("U{n}")}),
    },
    Kind {
        collection: "/projects",
        id: "project_id",
        body: |n| json!({"name": format!("P{n}")}),
    },
];

#[tokio::test]
async fn isolation_holds_for_every_resource_through_every_route() {
    let app = with_projects().await;
    // Every resource the router serves is covered here: a resource added
    // to http::RESOURCES fails this until it has a KINDS entry.
    let mut served: Vec<&str> = all().iter().map(|r| r.name).collect();
    served.sort();
    let mut covered: Vec<&str> = KINDS.iter().map(|k| &k.collection[1..]).collect();
    covered.sort();
    assert_eq!(served, covered);

    let (acme, globex) = (app.token("acme"), app.token("globex"));
    for (n, kind) in KINDS.iter().enumerate() {
        let mine = create(&app, "acme", kind.collection, (kind.body)(n)).await;
        let theirs = create(&app, "globex", kind.collection, (kind.body)(n + 100)).await;
        let key = &kind.collection[1..];
        // The list shows only the caller's own.
        let listed = app.get(kind.collection, &acme).await.json();
        let ids: Vec<String> = listed[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item[kind.id].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, std::slice::from_ref(&mine), "{}", kind.collection);
        // Another tenant's id and a missing one get the same 404.
        let theirs_path = format!("{}/{theirs}", kind.collection);
        let before = app.get(&theirs_path, &globex).await.json();
        let missing = format!("{}/{}", kind.collection, uuid::Uuid::new_v4());
        let a = app.get(&theirs_path, &acme).await;
        let b = app.get(&missing, &acme).await;
        a.assert_problem(StatusCode::NOT_FOUND);
        assert_eq!(a.body, b.body, "{}", kind.collection);
        let patch = (kind.body)(n + 200);
        let a = app.patch(&theirs_path, &acme, patch.clone()).await;
        let b = app.patch(&missing, &acme, patch).await;
        a.assert_problem(StatusCode::NOT_FOUND);
        assert_eq!(a.body, b.body);
        let a = app.delete(&theirs_path, &acme).await;
        let b = app.delete(&missing, &acme).await;
        a.assert_problem(StatusCode::NOT_FOUND);
        assert_eq!(a.body, b.body);
        // Untouched for its owner.
        let still = app.get(&theirs_path, &globex).await;
        assert_eq!(still.status, StatusCode::OK, "{}", still.text());
        assert_eq!(still.json(), before, "{}", kind.collection);
    }
}

#[tokio::test]
async fn every_tenant_table_hides_other_tenants_rows_at_the_sql_level() {
    let app = with_projects().await;
    for (n, kind) in KINDS.iter().enumerate() {
        for tenant in ["acme", "globex"] {
            create(
                &app,
                tenant,
                kind.collection,
                (kind.body)(n * 10 + tenant.len()),
            )
            .await;
        }
    }
    let admin = app.db.admin().await;
    // The tenant tables, found the way the audit finds them.
    let tables: Vec<String> = admin
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relkind IN ('r', 'p') AND c.relnamespace = 'public'::regnamespace
                AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                             AND a.attname = 'tenant_id' AND NOT a.attisdropped)
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.contains(&"projects".to_owned()), "{tables:?}");
    let client = app.db.app_client().await;
    for table in &tables {
        for (me, other) in [("acme", "globex"), ("globex", "acme")] {
            // The truth, as the owner sees it with no policy in the way.
            let truth: i64 = admin
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE tenant_id::text = $1"),
                    &[&me],
                )
                .await
                .unwrap()
                .get(0);
            assert!(
                truth > 0,
                "{table} has no row of {me}: the test proves nothing"
            );
            client.batch_execute("BEGIN").await.unwrap();
            client
                .execute("SELECT set_config('app.current_tenant', $1, true)", &[&me])
                .await
                .unwrap();
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*), count(*) FILTER (WHERE tenant_id::text <> $1) FROM {table}"
                    ),
                    &[&me],
                )
                .await
                .unwrap();
            let (seen, foreign): (i64, i64) = (row.get(0), row.get(1));
            assert_eq!((seen, foreign), (truth, 0), "{table} as {me}");
            // Writing another tenant's row is refused (by the policy, or by
            // a grant narrower than INSERT).
            let write = client
                .execute(
                    &format!(
                        "INSERT INTO {table} OVERRIDING SYSTEM VALUE SELECT (jsonb_populate_record(NULL::{table},
                             to_jsonb(x) || jsonb_build_object('tenant_id', $1::text))).*
                           FROM {table} x LIMIT 1"
                    ),
                    &[&other],
                )
                .await;
            let code = write.expect_err("a row for another tenant").code().cloned();
            assert_eq!(
                code,
                Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{table} as {me}"
            );
            client.batch_execute("ROLLBACK").await.unwrap();
        }
    }
}
