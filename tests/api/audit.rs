//! The self-audit as an RLS linter: each rule is broken alone on a correct
//! deployment, the service refuses to serve (503) with exactly that finding
//! (object and rule), and serves again (200) once the rule is fixed,
//! without a restart. A failed audit closes the back-off gate, so these
//! apps keep a manual clock and move it past the longest back-off.
//!
//! The audit also re-runs while serving, every `DB_AUDIT_INTERVAL_SECONDS`,
//! and its failures go through the gate: no login per request while it fails.

use axum::http::StatusCode;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tenant_users::clock::Clock;
use tenant_users::db::Database;
use tenant_users::db::config::DbConfig;

use crate::common::delay::counting_relay;
use crate::common::{SECRET, TestApp, TestDb};

/// More than the gate's longest back-off with `DATABASE_URL` (60 s).
const PAST_ANY_BACKOFF: Duration = Duration::from_secs(61);

/// `{app}`, `{admin}` and `{db}` in a statement stand for the test's
/// application role, the admin role and the database; `{other}` for a
/// second role a test may create, named `<app>_clone` because `TestDb`
/// drops a role by that name with the database, so it never outlives the
/// test, pass or fail.
fn fill(sql: &str, db: &TestDb) -> String {
    sql.replace("{other}", &format!("{}_clone", db.app_user))
        .replace("{app}", &db.app_user)
        .replace("{admin}", db.base.get_user().unwrap_or("postgres"))
        .replace("{db}", &db.name)
}

async fn admin_runs(db: &TestDb, sql: &str) {
    db.admin()
        .await
        .batch_execute(&fill(sql, db))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The failed checks of a fresh audit, as `[rule] subject (found: ...)`.
async fn findings(config: tokio_postgres::Config) -> Vec<String> {
    Database::new(DbConfig::plain(config))
        .await
        .audit_report()
        .await
        .unwrap()
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.finding())
        .collect()
}

/// Breaks one rule with `breaks` (after `setup`, which must leave the
/// deployment correct), expects exactly `expected` findings and a 503, then
/// applies `fix` and expects 200 from the same running app.
async fn rule_is_enforced(setup: &str, breaks: &str, expected: &[&str], fix: &str) {
    rule_is_enforced_on(TestDb::create().await, setup, breaks, expected, fix).await;
}

/// [`rule_is_enforced`] on a database of the caller's (another cluster).
async fn rule_is_enforced_on(db: TestDb, setup: &str, breaks: &str, expected: &[&str], fix: &str) {
    let expected: Vec<String> = expected.iter().map(|e| fill(e, &db)).collect();
    refused_then_served(db, setup, breaks, |found| assert_eq!(found, expected), fix).await;
}

/// Like [`rule_is_enforced`], with the findings judged by `judge`.
async fn refused_then_served(
    db: TestDb,
    setup: &str,
    breaks: &str,
    judge: impl FnOnce(Vec<String>),
    fix: &str,
) {
    admin_runs(&db, setup).await;
    assert_eq!(
        findings(db.app_config()).await,
        Vec::<String>::new(),
        "set-up leaves a correct deployment"
    );
    admin_runs(&db, breaks).await;
    judge(findings(db.app_config()).await);

    let clock = Clock::manual();
    let db_config = DbConfig {
        clock: clock.clone(),
        ..DbConfig::plain(db.app_config())
    };
    let app = TestApp::with_db_config(db, db_config).await;
    let r = app.get("/users", &app.token("acme")).await;
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("misconfigured"), "{breaks}: {detail}");
    assert!(r.header("retry-after").is_some());

    admin_runs(&app.db, fix).await;
    clock.advance(PAST_ANY_BACKOFF);
    let r = app.get("/users", &app.token("acme")).await;
    assert_eq!(r.status, StatusCode::OK, "after fix {fix}: {}", r.text());
}

const POLICY: &str = "tenant_id = current_setting('app.current_tenant', true)";

#[tokio::test]
async fn a_correct_deployment_passes_every_rule() {
    let db = TestDb::create().await;
    let report = Database::new(DbConfig::plain(db.app_config()))
        .await
        .audit_report()
        .await
        .unwrap();
    assert!(report.iter().all(|c| c.passed), "{report:#?}");
    let rules = tenant_users::audit::RULES.len();
    assert_eq!(rules, 28);
    let per_table = report
        .iter()
        .filter(|c| c.subject == "table public.users")
        .count();
    assert_eq!(
        report.len(),
        28 + 2 * per_table,
        "role and database rules once, table rules once for each of users, tenants and tenant_rate"
    );
    for table in ["tenants", "tenant_rate"] {
        let subject = format!("table public.{table}");
        assert_eq!(
            report.iter().filter(|c| c.subject == subject).count(),
            per_table,
            "{subject}"
        );
    }
    let app = TestApp::on(db, &[]).await;
    assert_eq!(
        app.get("/users", &app.token("acme")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn restrictive_policies_and_policies_for_other_roles_pass() {
    let db = TestDb::create().await;
    admin_runs(
        &db,
        "CREATE POLICY narrow ON users AS RESTRICTIVE USING (length(email) > 0);
         CREATE POLICY admin_sees_all ON users TO {admin} USING (true);
         CREATE VIEW my_users WITH (security_invoker = on) AS SELECT * FROM users;
         GRANT SELECT ON my_users TO {app};
         CREATE FUNCTION user_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM users'",
    )
    .await;
    assert_eq!(findings(db.app_config()).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_superuser_is_refused() {
    // A superuser is a member of every role and owns everything, so many
    // rules fail at once; the first one names the cause. (Which privileged
    // roles exist depends on the server, so the rules are compared, and
    // the role and table findings in full.)
    let db = TestDb::create().await;
    let (app, name) = (db.app_user.clone(), db.name.clone());
    refused_then_served(
        db,
        "",
        "ALTER ROLE {app} SUPERUSER",
        move |found| {
            assert_eq!(
                found.first().map(String::as_str),
                Some(format!("[role-not-superuser] role {app}").as_str())
            );
            let mut rules: Vec<&str> = found
                .iter()
                .filter_map(|f| f.strip_prefix('[')?.split(']').next())
                .collect();
            rules.dedup();
            assert_eq!(
                rules,
                [
                    "role-not-superuser",
                    "role-no-privileged-membership",
                    "role-no-replication-or-monitoring",
                    "role-owns-nothing",
                    "role-no-create",
                    "role-reads-only-tenant-tables",
                    "trail-out-of-reach-or-append-only",
                    "table-not-owned",
                ],
                "{found:#?}"
            );
            for expected in [
                format!("[role-no-privileged-membership] role {app} (found: member of pg_read_all_data)"),
                format!("[role-no-replication-or-monitoring] role {app} (found: member of pg_monitor, pg_read_all_stats)"),
                format!("[role-owns-nothing] role {app} (found: owns database {name})"),
                format!("[role-owns-nothing] role {app} (found: owns function public.app_set_tenant(text, integer))"),
                format!("[role-no-create] database {name}"),
                "[role-no-create] schema public".to_owned(),
                "[table-not-owned] table public.users".to_owned(),
            ] {
                assert!(found.contains(&expected), "{expected} in {found:#?}");
            }
        },
        "ALTER ROLE {app} NOSUPERUSER",
    )
    .await;
}

#[tokio::test]
async fn a_role_with_bypassrls_is_refused() {
    rule_is_enforced(
        "",
        "ALTER ROLE {app} BYPASSRLS",
        &["[role-no-bypassrls] role {app}"],
        "ALTER ROLE {app} NOBYPASSRLS",
    )
    .await;
}

#[tokio::test]
async fn a_role_that_can_create_databases_or_roles_is_refused() {
    rule_is_enforced(
        "",
        "ALTER ROLE {app} CREATEDB CREATEROLE",
        &["[role-no-createrole-createdb] role {app} (found: CREATEROLE, CREATEDB)"],
        "ALTER ROLE {app} NOCREATEDB NOCREATEROLE",
    )
    .await;
}

#[tokio::test]
async fn membership_in_a_privileged_role_is_refused() {
    rule_is_enforced(
        "",
        "GRANT pg_read_all_data TO {app}",
        &[
            "[role-no-privileged-membership] role {app} (found: member of pg_read_all_data)",
            // refinery's history table: what pg_read_all_data opens first.
            "[role-reads-only-tenant-tables] table public.refinery_schema_history (found: no tenant_id, not marked shared, and the role may use it)",
            // and the operator trail, which the app role may never read.
            "[trail-out-of-reach-or-append-only] table control.operator_trail (found: the role may use the trail)",
        ],
        "REVOKE pg_read_all_data FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn a_role_that_owns_anything_is_refused() {
    rule_is_enforced(
        "CREATE TABLE scratch (x int)",
        "ALTER TABLE scratch OWNER TO {app}",
        &[
            "[role-owns-nothing] role {app} (found: owns table public.scratch)",
            "[role-reads-only-tenant-tables] table public.scratch (found: no tenant_id, not marked shared, and the role may use it)",
        ],
        "ALTER TABLE scratch OWNER TO {admin}",
    )
    .await;
}

#[tokio::test]
async fn a_role_that_may_create_in_a_schema_is_refused() {
    rule_is_enforced(
        "",
        "GRANT CREATE ON SCHEMA public TO {app}",
        &["[role-no-create] schema public"],
        "REVOKE CREATE ON SCHEMA public FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn a_role_default_tenant_is_refused() {
    rule_is_enforced(
        "",
        "ALTER ROLE {app} SET app.current_tenant = 'acme'",
        &["[no-default-tenant] role {app} (found: app.current_tenant=acme)"],
        "ALTER ROLE {app} RESET app.current_tenant",
    )
    .await;
}

#[tokio::test]
async fn a_database_default_tenant_is_refused() {
    rule_is_enforced(
        "",
        "ALTER DATABASE {db} SET app.current_tenant = 'acme'",
        &["[no-default-tenant] database {db} (found: app.current_tenant=acme)"],
        "ALTER DATABASE {db} RESET app.current_tenant",
    )
    .await;
}

#[tokio::test]
async fn a_tenant_set_by_the_connection_itself_is_refused() {
    let db = TestDb::create().await;
    let mut config = db.app_config();
    config.options("-c app.current_tenant=acme");
    assert_eq!(
        findings(config).await,
        vec![
            "[no-default-tenant] session (found: app.current_tenant is 'acme' before any transaction set it)"
        ]
    );
}

#[tokio::test]
async fn a_view_that_reads_as_its_owner_is_refused() {
    rule_is_enforced(
        "CREATE VIEW all_users AS SELECT * FROM users",
        "GRANT SELECT ON all_users TO {app}",
        &["[no-rls-bypassing-view] view public.all_users (found: reads public.users as {admin})"],
        "ALTER VIEW all_users SET (security_invoker = on)",
    )
    .await;
}

#[tokio::test]
async fn a_view_over_a_bypassing_view_is_refused() {
    rule_is_enforced(
        "CREATE VIEW all_users AS SELECT * FROM users;
         CREATE VIEW acme_users AS SELECT * FROM all_users WHERE tenant_id = 'acme'",
        "GRANT SELECT ON acme_users TO {app}",
        &["[no-rls-bypassing-view] view public.acme_users (found: reads public.users as {admin})"],
        "REVOKE SELECT ON acme_users FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn a_materialized_view_over_a_tenant_table_is_refused() {
    rule_is_enforced(
        "CREATE MATERIALIZED VIEW user_counts AS SELECT tenant_id, count(*) FROM users GROUP BY 1",
        "GRANT SELECT ON user_counts TO {app}",
        &[
            "[no-rls-bypassing-view] materialized view public.user_counts (found: stored rows of public.users)",
        ],
        "REVOKE SELECT ON user_counts FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn a_security_definer_function_owned_by_a_superuser_is_refused() {
    rule_is_enforced(
        "CREATE FUNCTION count_all() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM users'",
        "ALTER FUNCTION count_all() SECURITY DEFINER",
        &[
            "[no-rls-bypassing-function] function public.count_all() (found: SECURITY DEFINER, owned by {admin})",
        ],
        "REVOKE EXECUTE ON FUNCTION count_all() FROM PUBLIC",
    )
    .await;
}

#[tokio::test]
async fn rls_disabled_is_refused() {
    rule_is_enforced(
        "",
        "ALTER TABLE users DISABLE ROW LEVEL SECURITY",
        &["[table-rls-enabled] table public.users"],
        "ALTER TABLE users ENABLE ROW LEVEL SECURITY",
    )
    .await;
}

#[tokio::test]
async fn rls_not_forced_is_refused() {
    rule_is_enforced(
        "",
        "ALTER TABLE users NO FORCE ROW LEVEL SECURITY",
        &["[table-rls-forced] table public.users"],
        "ALTER TABLE users FORCE ROW LEVEL SECURITY",
    )
    .await;
}

#[tokio::test]
async fn the_table_owner_is_refused() {
    rule_is_enforced(
        "",
        "ALTER TABLE users OWNER TO {app}",
        &["[table-not-owned] table public.users"],
        // Handing the table back also takes the old owner's grants along.
        "ALTER TABLE users OWNER TO {admin};
         GRANT SELECT, INSERT, UPDATE, DELETE ON users TO {app}",
    )
    .await;
}

#[tokio::test]
async fn truncate_or_references_on_a_tenant_table_is_refused() {
    rule_is_enforced(
        "",
        "GRANT TRUNCATE, REFERENCES ON users TO {app}",
        &["[table-no-truncate-references-trigger] table public.users (found: TRUNCATE, REFERENCES)"],
        "REVOKE TRUNCATE, REFERENCES ON users FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn a_policy_that_names_the_setting_but_does_not_isolate_is_refused() {
    // The review's case: every tenant would see every row.
    let leaky = "current_setting('app.current_tenant', true) IS NOT NULL";
    rule_is_enforced(
        "",
        &format!("ALTER POLICY tenant_policy ON users USING ({leaky}) WITH CHECK ({leaky})"),
        &[
            "[table-tenant-policy] table public.users (found: USING (current_setting('app.current_tenant'::text, true) IS NOT NULL) does not isolate tenants)",
        ],
        &format!("ALTER POLICY tenant_policy ON users USING ({POLICY}) WITH CHECK ({POLICY})"),
    )
    .await;
}

#[tokio::test]
async fn a_policy_whose_check_admits_any_tenant_is_refused() {
    rule_is_enforced(
        "",
        "ALTER POLICY tenant_policy ON users WITH CHECK (true)",
        &["[table-tenant-policy] table public.users (found: WITH CHECK true does not isolate tenants)"],
        &format!("ALTER POLICY tenant_policy ON users WITH CHECK ({POLICY})"),
    )
    .await;
}

#[tokio::test]
async fn a_policy_for_other_roles_only_is_refused() {
    rule_is_enforced(
        "",
        "ALTER POLICY tenant_policy ON users TO {admin}",
        &["[table-tenant-policy] table public.users (found: tenant_policy does not apply to this role)"],
        "ALTER POLICY tenant_policy ON users TO PUBLIC",
    )
    .await;
}

#[tokio::test]
async fn a_policy_for_some_commands_only_is_refused() {
    rule_is_enforced(
        "",
        &format!(
            "DROP POLICY tenant_policy ON users;
             CREATE POLICY tenant_policy ON users FOR SELECT USING ({POLICY})"
        ),
        &["[table-tenant-policy] table public.users (found: tenant_policy is not FOR ALL)"],
        &format!(
            "DROP POLICY tenant_policy ON users;
             CREATE POLICY tenant_policy ON users USING ({POLICY}) WITH CHECK ({POLICY})"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_second_permissive_policy_is_refused() {
    rule_is_enforced(
        "",
        "CREATE POLICY peek ON users FOR SELECT USING (true)",
        &["[table-one-permissive-policy] table public.users (found: also peek)"],
        "DROP POLICY peek ON users",
    )
    .await;
}

#[tokio::test]
async fn a_tenant_table_outside_the_search_path_without_rls_is_refused() {
    rule_is_enforced(
        "CREATE SCHEMA archive",
        "GRANT USAGE ON SCHEMA archive TO {app};
         CREATE TABLE archive.users_2020 (tenant_id text NOT NULL, email text)",
        &[
            "[table-rls-enabled] table archive.users_2020",
            "[table-rls-forced] table archive.users_2020",
            "[table-tenant-policy] table archive.users_2020 (found: no tenant_policy)",
        ],
        &format!(
            "ALTER TABLE archive.users_2020 ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
             CREATE POLICY tenant_policy ON archive.users_2020 USING ({POLICY}) WITH CHECK ({POLICY})"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_foreign_key_across_tenants_is_refused() {
    rule_is_enforced(
        &format!(
            "CREATE TABLE notes (tenant_id text NOT NULL, note_id uuid NOT NULL,
                                 author_tenant text NOT NULL, user_id uuid NOT NULL,
                                 PRIMARY KEY (tenant_id, note_id));
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
             CREATE POLICY tenant_policy ON notes USING ({POLICY}) WITH CHECK ({POLICY})"
        ),
        "ALTER TABLE notes ADD CONSTRAINT notes_author_fk
             FOREIGN KEY (author_tenant, user_id) REFERENCES users (tenant_id, user_id)",
        &[
            "[fk-includes-tenant] table public.notes (found: foreign key notes_author_fk references public.users without tenant_id)",
        ],
        "ALTER TABLE notes DROP CONSTRAINT notes_author_fk;
         ALTER TABLE notes ADD CONSTRAINT notes_user_fk
             FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id)",
    )
    .await;
}

#[tokio::test]
async fn a_unique_index_without_the_tenant_is_refused() {
    rule_is_enforced(
        "",
        "CREATE UNIQUE INDEX users_email_everywhere ON users (lower(email))",
        &[
            "[unique-includes-tenant] table public.users (found: unique index public.users_email_everywhere does not include tenant_id)",
        ],
        "DROP INDEX users_email_everywhere",
    )
    .await;
}

#[tokio::test]
async fn no_visible_tenant_table_is_refused() {
    // The role connects to a database (or schema) where it can name no
    // tenant table: whatever it serves from there is not what was audited.
    rule_is_enforced(
        "CREATE SCHEMA hidden",
        "ALTER TABLE users SET SCHEMA hidden; ALTER TABLE tenants SET SCHEMA hidden; \
         ALTER TABLE tenant_rate SET SCHEMA hidden",
        &[
            "[role-has-what-it-needs] table tenant_rate (found: no such table)",
            "[role-has-what-it-needs] table tenants (found: no such table)",
            "[role-has-what-it-needs] table users (found: no such table)",
            "[tenant-table-visible] schema",
        ],
        "ALTER TABLE hidden.users SET SCHEMA public; ALTER TABLE hidden.tenants SET SCHEMA public; \
         ALTER TABLE hidden.tenant_rate SET SCHEMA public",
    )
    .await;
}

#[tokio::test]
async fn a_role_with_replication_is_refused() {
    rule_is_enforced(
        "",
        "ALTER ROLE {app} REPLICATION",
        &["[role-no-replication-or-monitoring] role {app} (found: REPLICATION)"],
        "ALTER ROLE {app} NOREPLICATION",
    )
    .await;
}

#[tokio::test]
async fn membership_in_pg_monitor_is_refused() {
    // pg_monitor includes pg_read_all_stats: other sessions' statements.
    rule_is_enforced(
        "",
        "GRANT pg_monitor TO {app}",
        &["[role-no-replication-or-monitoring] role {app} (found: member of pg_monitor, pg_read_all_stats)"],
        "REVOKE pg_monitor FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn membership_in_rds_replication_is_refused() {
    // RDS's role exists only there, and roles are server-wide: a cluster
    // of the test's own gets one, so the shared server never does.
    let cluster = crate::common::cluster::Cluster::start();
    let db = TestDb::create_on(cluster.admin()).await;
    rule_is_enforced_on(
        db,
        "CREATE ROLE rds_replication NOLOGIN",
        "GRANT rds_replication TO {app}",
        &["[role-no-replication-or-monitoring] role {app} (found: member of rds_replication)"],
        "REVOKE rds_replication FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn a_role_search_path_is_refused() {
    // With public ahead of pg_catalog, a public.current_setting would
    // deparse exactly like the real one.
    rule_is_enforced(
        "",
        "ALTER ROLE {app} SET search_path = public, pg_catalog",
        &["[no-search-path-setting] role {app} (found: search_path=public, pg_catalog)"],
        "ALTER ROLE {app} RESET search_path",
    )
    .await;
}

#[tokio::test]
async fn a_database_search_path_is_refused() {
    rule_is_enforced(
        "",
        "ALTER DATABASE {db} SET search_path = public",
        &["[no-search-path-setting] database {db} (found: search_path=public)"],
        "ALTER DATABASE {db} RESET search_path",
    )
    .await;
}

#[tokio::test]
async fn a_search_path_set_by_the_connection_itself_is_refused() {
    let db = TestDb::create().await;
    let mut config = db.app_config();
    config.options("-c search_path=public");
    assert_eq!(
        findings(config).await,
        vec![
            "[no-search-path-setting] session (found: search_path is 'public', not the default '\"$user\", public')"
        ]
    );
}

#[tokio::test]
async fn a_view_over_a_tenant_table_the_role_cannot_name_is_refused() {
    // The table is in a schema the role may not use, so no table rule
    // sees it; the view in public reads it as its owner.
    rule_is_enforced(
        "CREATE SCHEMA vault;
         CREATE TABLE vault.users_copy (tenant_id text NOT NULL, email text);
         CREATE VIEW users_copy AS SELECT * FROM vault.users_copy",
        "GRANT SELECT ON users_copy TO {app}",
        &["[no-rls-bypassing-view] view public.users_copy (found: reads vault.users_copy as {admin})"],
        // As the invoker, the role would need a grant on the table itself.
        "ALTER VIEW users_copy SET (security_invoker = on)",
    )
    .await;
}

#[tokio::test]
async fn a_view_reading_through_an_invoker_view_as_its_owner_is_refused() {
    rule_is_enforced(
        "CREATE VIEW my_users WITH (security_invoker = on) AS SELECT * FROM users;
         GRANT SELECT ON my_users TO {app};
         CREATE VIEW everyone AS SELECT * FROM my_users",
        "GRANT SELECT ON everyone TO {app}",
        &["[no-rls-bypassing-view] view public.everyone (found: reads public.users as {admin})"],
        "ALTER VIEW everyone SET (security_invoker = on)",
    )
    .await;
}

/// A role that is subject to RLS but matched by a wider policy than
/// tenant_policy: `TO {other} USING (true)`.
const WIDER_POLICY: &str = "CREATE ROLE {other} NOLOGIN;
     GRANT SELECT ON users TO {other};
     CREATE POLICY reporting ON users TO {other} USING (true);";

#[tokio::test]
async fn a_view_owned_by_a_role_a_wider_policy_matches_is_refused() {
    // The owner has no BYPASSRLS and is not a superuser, but RLS lets it
    // see every tenant; once only tenant_policy applies to it, its view
    // isolates as well as the role's own reads.
    rule_is_enforced(
        &format!(
            "{WIDER_POLICY}
             CREATE VIEW all_users AS SELECT * FROM users;
             ALTER VIEW all_users OWNER TO {{other}}"
        ),
        "GRANT SELECT ON all_users TO {app}",
        &["[no-rls-bypassing-view] view public.all_users (found: reads public.users as {other})"],
        "DROP POLICY reporting ON users",
    )
    .await;
}

#[tokio::test]
async fn a_security_definer_function_owned_by_a_role_a_wider_policy_matches_is_refused() {
    rule_is_enforced(
        &format!(
            "{WIDER_POLICY}
             CREATE FUNCTION count_all() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM users';
             ALTER FUNCTION count_all() OWNER TO {{other}}"
        ),
        "ALTER FUNCTION count_all() SECURITY DEFINER",
        &[
            "[no-rls-bypassing-function] function public.count_all() (found: SECURITY DEFINER, owned by {other}: reads public.users as {other})",
        ],
        "DROP POLICY reporting ON users",
    )
    .await;
}

#[tokio::test]
async fn a_foreign_table_the_role_can_read_is_refused() {
    // A wrapper without a handler needs no extension; the table cannot be
    // queried, but the grant is what the rule judges.
    rule_is_enforced(
        "CREATE FOREIGN DATA WRAPPER nowhere;
         CREATE SERVER elsewhere FOREIGN DATA WRAPPER nowhere;
         CREATE FOREIGN TABLE remote_users (tenant_id text, email text) SERVER elsewhere",
        "GRANT SELECT ON remote_users TO {app}",
        &["[no-foreign-table] foreign table public.remote_users"],
        "REVOKE SELECT ON remote_users FROM {app}",
    )
    .await;
}

#[tokio::test]
async fn an_inheritance_parent_without_tenant_id_is_refused() {
    // SELECT * FROM people returns every tenant's users, under people's
    // policies (none), not users'.
    rule_is_enforced(
        "CREATE TABLE people (email text, name text);
         COMMENT ON TABLE people IS 'shared: empty until it becomes a parent';
         GRANT SELECT ON people TO {app}",
        "ALTER TABLE users INHERIT people",
        &["[no-parent-without-tenant-id] table public.people (found: parent of public.users)"],
        "ALTER TABLE users NO INHERIT people",
    )
    .await;
}

/// A second tenant table, correct, for rules that need its `tenant_id`
/// changed (the users table's CHECK constraint uses a regular expression,
/// which a nondeterministic collation does not support).
const NOTES: &str = "CREATE TABLE notes (tenant_id text NOT NULL, body text);
     ALTER TABLE notes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
     GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {app};";

/// Changes `notes.tenant_id` to `column_type`: a column in a policy cannot
/// change type, so the policy is dropped and made again, the same.
fn retype_notes(column_type: &str) -> String {
    format!(
        "DROP POLICY tenant_policy ON notes;
         ALTER TABLE notes ALTER COLUMN tenant_id TYPE {column_type};
         CREATE POLICY tenant_policy ON notes USING ({POLICY}) WITH CHECK ({POLICY})"
    )
}

#[tokio::test]
async fn a_case_insensitive_tenant_id_is_refused() {
    // The policy's text stays exactly the canonical one, yet ACME = acme.
    rule_is_enforced(
        &format!(
            "{NOTES}
             CREATE POLICY tenant_policy ON notes USING ({POLICY}) WITH CHECK ({POLICY});
             CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        ),
        &retype_notes("text COLLATE ci"),
        &["[table-tenant-id-deterministic] table public.notes (found: tenant_id has the nondeterministic collation public.ci)"],
        &retype_notes("text COLLATE \"default\""),
    )
    .await;
}

#[tokio::test]
async fn a_tenant_id_of_a_type_outside_the_allowlist_is_refused() {
    // A domain deparses as its base type, and may carry any equality a
    // later ALTER DOMAIN gives it.
    rule_is_enforced(
        &format!(
            "{NOTES}
             CREATE POLICY tenant_policy ON notes USING ({POLICY}) WITH CHECK ({POLICY});
             CREATE DOMAIN tenant_key AS text"
        ),
        &retype_notes("tenant_key"),
        &["[table-tenant-id-type] table public.notes (found: tenant_id is tenant_key)"],
        &retype_notes("text"),
    )
    .await;
}

#[tokio::test]
async fn a_policy_calling_a_function_outside_pg_catalog_is_refused() {
    // Even a restrictive policy: its function sees every row the scan
    // reads, before the tenant predicate has filtered them.
    rule_is_enforced(
        "CREATE FUNCTION is_listed(text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        "CREATE POLICY listed ON users AS RESTRICTIVE USING (is_listed(email))",
        &["[table-policy-pg-catalog-only] table public.users (found: policy listed calls function public.is_listed(text))"],
        "DROP POLICY listed ON users",
    )
    .await;
}

/// `tenant_policy` written as given passes every rule, serves, and still
/// isolates.
async fn policy_is_accepted(using: &str, check: &str) {
    let db = TestDb::create().await;
    admin_runs(
        &db,
        &format!("ALTER POLICY tenant_policy ON users USING ({using}) WITH CHECK ({check})"),
    )
    .await;
    assert_eq!(findings(db.app_config()).await, Vec::<String>::new());
    let app = TestApp::on(db, &[]).await;
    app.create_user("acme", "a@acme.test", "A").await;
    app.create_user("globex", "g@globex.test", "G").await;
    assert_eq!(app.emails_seen_by("acme").await, vec!["a@acme.test"]);
    assert_eq!(app.emails_seen_by("globex").await, vec!["g@globex.test"]);
}

#[tokio::test]
async fn a_policy_with_a_cast_is_accepted() {
    let cast = "tenant_id = current_setting('app.current_tenant')::text";
    policy_is_accepted(cast, cast).await;
}

#[tokio::test]
async fn a_policy_with_reversed_operands_is_accepted() {
    let reversed = "current_setting('app.current_tenant', true) = tenant_id";
    policy_is_accepted(reversed, reversed).await;
}

#[tokio::test]
async fn the_audit_report_names_rule_object_and_requirement() {
    let db = TestDb::create().await;
    admin_runs(&db, "ALTER TABLE users NO FORCE ROW LEVEL SECURITY").await;
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
        vec!["FAIL  [table-rls-forced] table public.users: row level security is forced"]
    );
}

fn audit_command(db: &TestDb) -> (bool, String) {
    let out = Command::new(crate::common::workspace_bin("migrate"))
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
        report.contains("PASS  [role-no-bypassrls] role ")
            && report.contains("50 checks, 0 failed"),
        "{report}"
    );

    admin_runs(&db, "ALTER ROLE {app} BYPASSRLS").await;
    let (ok, report) = audit_command(&db);
    assert!(!ok);
    assert!(
        report.contains(&fill(
            "FAIL  [role-no-bypassrls] role {app}: does not have BYPASSRLS",
            &db
        )),
        "{report}"
    );
    assert!(report.contains("50 checks, 1 failed"), "{report}");
}

#[tokio::test]
async fn a_missing_grant_is_a_503_not_a_500() {
    let app = TestApp::spawn().await;
    admin_runs(&app.db, "REVOKE INSERT ON users FROM {app}").await;
    let body = serde_json::json!({"email": "a@acme.test", "name": "A"});
    let r = app.post("/users", &app.token("acme"), body.clone()).await;
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("misconfigured"), "{detail}");
    admin_runs(&app.db, "GRANT INSERT ON users TO {app}").await;
    let r = app.post("/users", &app.token("acme"), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// `db`'s application role through a relay that counts logins, with a
/// manual clock and `DB_AUDIT_INTERVAL_SECONDS` as given, read as `main`
/// reads it.
async fn counted_app(db: TestDb, audit_interval: &str) -> (TestApp, Clock, impl Fn() -> usize) {
    let port = db.base.get_ports().first().copied().unwrap_or(5432);
    let (relay, accepted): (u16, std::sync::Arc<AtomicUsize>) = counting_relay(port).await;
    let url = db
        .app_url()
        .replace(&format!(":{port}/"), &format!(":{relay}/"));
    let env = [
        ("DATABASE_URL", url),
        ("DB_AUDIT_INTERVAL_SECONDS", audit_interval.to_owned()),
    ];
    let mut db_config = tenant_users::db::config::db_config(&|key: &str| {
        env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    })
    .expect("db config");
    let clock = Clock::manual();
    db_config.clock = clock.clone();
    let app = TestApp::with_db_config(db, db_config).await;
    (app, clock, move || accepted.load(Ordering::SeqCst))
}

async fn assert_misconfigured(app: &TestApp, token: &str) {
    let r = app.get("/users", token).await;
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("misconfigured"), "{detail}");
}

async fn assert_serves(app: &TestApp, token: &str) {
    let r = app.get("/users", token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn a_failing_audit_is_retried_on_the_gates_schedule_not_on_every_request() {
    let db = TestDb::create().await;
    admin_runs(&db, "ALTER TABLE users NO FORCE ROW LEVEL SECURITY").await;
    let (app, clock, logins) = counted_app(db, "300").await;
    let token = app.token("acme");
    assert_eq!(logins(), 1, "cold start logs in and audits once");

    for _ in 0..20 {
        assert_misconfigured(&app, &token).await;
    }
    assert_eq!(logins(), 1, "no login while the gate is closed");
    // The first back-off is at least half a second.
    clock.advance(Duration::from_millis(400));
    assert_misconfigured(&app, &token).await;
    assert_eq!(logins(), 1, "still inside the first back-off");

    clock.advance(PAST_ANY_BACKOFF);
    assert_misconfigured(&app, &token).await;
    assert_eq!(logins(), 2, "one retry once the gate opens; it fails again");
    for _ in 0..20 {
        assert_misconfigured(&app, &token).await;
    }
    assert_eq!(logins(), 2);

    // Fixed, but nothing serves before an audit passes: the gate decides
    // when that is.
    admin_runs(&app.db, "ALTER TABLE users FORCE ROW LEVEL SECURITY").await;
    assert_misconfigured(&app, &token).await;
    assert_eq!(logins(), 2);
    clock.advance(PAST_ANY_BACKOFF);
    for _ in 0..20 {
        assert_serves(&app, &token).await;
    }
    assert_eq!(logins(), 3, "one login serves every request after it");
}

#[tokio::test]
async fn a_schema_change_while_serving_is_caught_within_the_audit_interval() {
    let db = TestDb::create().await;
    let (app, clock, logins) = counted_app(db, "1").await;
    let token = app.token("acme");
    assert_serves(&app, &token).await;
    // The re-audit runs on the open connection: no new login.
    clock.advance(Duration::from_secs(1));
    assert_serves(&app, &token).await;
    assert_eq!(logins(), 1);

    admin_runs(&app.db, "ALTER TABLE users NO FORCE ROW LEVEL SECURITY").await;
    // Within the interval the connection is not audited again: auditing
    // every request would cost each one a round trip.
    assert_serves(&app, &token).await;
    clock.advance(Duration::from_secs(1));
    assert_misconfigured(&app, &token).await;
    assert_misconfigured(&app, &token).await;
    assert_eq!(logins(), 1, "the failed audit is not retried per request");

    admin_runs(&app.db, "ALTER TABLE users FORCE ROW LEVEL SECURITY").await;
    clock.advance(PAST_ANY_BACKOFF);
    assert_serves(&app, &token).await;
    assert_eq!(logins(), 2, "service resumes after the next audit passes");
}
