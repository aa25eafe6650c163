//! `migrate` where it runs: as an admin shaped like the RDS master user
//! (CREATEROLE, CREATEDB, owner of the database, not a superuser), on a
//! server that logs every statement and checks passwords. It succeeds on
//! every run, never lets the password reach the server, verifies rather
//! than alters what a non-superuser may not touch, and leaves a role setup
//! in which AWS's multi-user rotation clone works and passes the audit.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tenant_users::app::Config;
use tenant_users::db::Database;
use tenant_users::db::config::{DbConfig, TlsConfig};
use tenant_users::token::config::token_config;
use tenant_users_migrate::{self as migrate, AppRole, MigrateError};
use tokio_postgres::NoTls;
use tower::ServiceExt;

use crate::common::cluster::Cluster;
use crate::common::{SECRET, claims_for, connect, sign_hs256};

const APP: &str = "tenant_app";
const DB: &str = "appdb";

/// A cluster that logs every statement (and tracks statements in
/// pg_stat_statements), checks passwords, and has an RDS-shaped master.
struct RdsLike {
    cluster: Cluster,
    master: tokio_postgres::Config,
}

impl RdsLike {
    async fn start() -> Self {
        let cluster = Cluster::start_with(&[
            ("log_statement", "all"),
            ("shared_preload_libraries", "pg_stat_statements"),
        ]);
        cluster.require_passwords().await;
        let master = cluster.rds_master("rds_master", "master-pw-7f3a", DB).await;
        let mut su = cluster.admin();
        su.dbname(DB);
        connect(&su)
            .await
            .batch_execute("CREATE EXTENSION pg_stat_statements")
            .await
            .unwrap();
        RdsLike { cluster, master }
    }

    /// Superuser settings for the application database: the test's hand.
    fn superuser(&self) -> tokio_postgres::Config {
        let mut su = self.cluster.admin();
        su.dbname(DB);
        su
    }

    fn login(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut c = self.master.clone();
        c.user(user).password(password);
        c
    }

    async fn migrate(&self, name: &str, password: &str) -> Result<(), MigrateError> {
        let role = AppRole {
            name: name.into(),
            password: Some(password.into()),
        };
        migrate::run(&self.master, &TlsConfig::DISABLED, &role).await
    }
}

/// Asserts the self-audit passes, every rule, for a connection as `config`.
async fn assert_audit_passes(config: tokio_postgres::Config) {
    let checks = Database::new(DbConfig::plain(config))
        .await
        .audit_report()
        .await
        .expect("audit runs");
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.finding())
        .collect();
    assert!(failed.is_empty(), "audit findings: {failed:?}");
    assert!(checks.len() >= 18, "{checks:?}");
}

/// Whether `config` may log in: Ok, or the SQLSTATE of the refusal.
async fn login_result(config: &tokio_postgres::Config) -> Result<(), String> {
    match config.connect(NoTls).await {
        Ok(_) => Ok(()),
        Err(e) => Err(e.code().map(|c| c.code().to_owned()).unwrap_or_default()),
    }
}

fn random_password() -> String {
    format!("pw-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn migrate_as_an_rds_master_succeeds_every_run_and_never_sends_the_password() {
    let rds = RdsLike::start().await;
    let (first, second) = (random_password(), random_password());

    // First deploy, redeploy, then a new password.
    for (run, password) in [
        ("first", &first),
        ("again", &first),
        ("new password", &second),
    ] {
        rds.migrate(APP, password)
            .await
            .unwrap_or_else(|e| panic!("{run}: {e}"));
        assert_audit_passes(rds.login(APP, password)).await;
    }
    assert_eq!(login_result(&rds.login(APP, &second)).await, Ok(()));
    assert_eq!(
        login_result(&rds.login(APP, &first)).await,
        Err("28P01".into()),
        "the old password is refused"
    );

    let log = rds.cluster.server_log();
    assert!(
        log.contains("ALTER ROLE \"tenant_app\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:"),
        "log_statement = all saw the role statements: {log}"
    );
    for password in [&first, &second] {
        assert!(
            !log.contains(password.as_str()),
            "password in the server log"
        );
    }
    let statements: Vec<String> = connect(&rds.superuser())
        .await
        .query("SELECT query FROM pg_stat_statements", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        statements.iter().any(|q| q.contains("ROLE")),
        "{statements:?}"
    );
    for password in [&first, &second] {
        assert!(
            !statements.iter().any(|q| q.contains(password.as_str())),
            "password in pg_stat_statements"
        );
    }
    // The admin stayed what it was: no superuser was needed.
    let su = connect(&rds.superuser()).await;
    let master_is_super: bool = su
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'rds_master'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!master_is_super);
}

#[tokio::test]
async fn an_existing_role_that_would_weaken_isolation_is_refused_not_repaired() {
    let rds = RdsLike::start().await;
    rds.migrate(APP, "first-pw-1").await.unwrap();
    let su = connect(&rds.superuser()).await;
    su.batch_execute(
        "CREATE ROLE privileged_group CREATEDB; CREATE ROLE owning_role; \
         CREATE TABLE stray (id int); ALTER TABLE stray OWNER TO owning_role",
    )
    .await
    .unwrap();
    for (i, (setup, expected)) in [
        ("ALTER ROLE {r} BYPASSRLS", "has BYPASSRLS"),
        ("ALTER ROLE {r} SUPERUSER", "has SUPERUSER"),
        (
            "ALTER ROLE {r} CREATEDB CREATEROLE",
            "has CREATEROLE; it has CREATEDB",
        ),
        (
            "GRANT privileged_group TO {r}",
            "is a member of privileged_group",
        ),
        (
            "GRANT pg_read_all_data TO {r}",
            "is a member of pg_read_all_data",
        ),
        ("GRANT owning_role TO {r}", "owns table stray"),
        ("ALTER TABLE stray OWNER TO {r}", "owns table stray"),
    ]
    .into_iter()
    .enumerate()
    {
        let role = format!("bad_role_{i}");
        su.batch_execute(&format!("CREATE ROLE {role} LOGIN"))
            .await
            .unwrap();
        su.batch_execute(&setup.replace("{r}", &role))
            .await
            .unwrap();
        let error = rds
            .migrate(&role, "any-pw-1")
            .await
            .expect_err(setup)
            .to_string();
        assert!(
            error.contains(&format!("role {role} exists but is not fit"))
                && error.contains(expected),
            "{setup}: {error}"
        );
        assert!(!error.contains("any-pw-1"));
        // Refused before anything was changed: the password was not set.
        assert_eq!(
            login_result(&rds.login(&role, "any-pw-1")).await,
            Err("28P01".into()),
            "{setup}"
        );
        su.batch_execute(&format!(
            "ALTER TABLE stray OWNER TO owning_role; DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn database_errors_name_their_sqlstate_not_db_error() {
    let rds = RdsLike::start().await;
    let wrong = rds.login("rds_master", "not-the-password");
    let role = AppRole {
        name: APP.into(),
        password: Some("pw".into()),
    };
    let error = migrate::run(&wrong, &TlsConfig::DISABLED, &role)
        .await
        .unwrap_err();
    assert_eq!(error.step(), "connect");
    let text = error.to_string();
    assert!(text.contains("SQLSTATE 28P01"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    // An admin without CREATEROLE: the server's own words, with the code.
    let su = connect(&rds.superuser()).await;
    su.batch_execute("ALTER ROLE rds_master NOCREATEROLE")
        .await
        .unwrap();
    let error = rds.migrate(APP, "pw-2").await.unwrap_err();
    assert_eq!(error.step(), "app role");
    let text = error.to_string();
    assert!(text.contains("SQLSTATE 42501"), "{text}");
    assert!(!text.contains("db error"), "{text}");
}

#[tokio::test]
async fn public_create_is_revoked_where_the_admin_may_and_refused_where_it_may_not() {
    let rds = RdsLike::start().await;
    let su = connect(&rds.superuser()).await;
    // What PostgreSQL 13 and 14 grant out of the box.
    su.batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    rds.migrate(APP, "pw-a").await.unwrap();
    assert_audit_passes(rds.login(APP, "pw-a")).await;
    let may_create: bool = su
        .query_one(
            "SELECT has_schema_privilege($1::text::name, 'public', 'CREATE')",
            &[&APP],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!may_create);

    // A public schema the admin does not own (an older server's layout).
    su.batch_execute(
        "ALTER SCHEMA public OWNER TO postgres; GRANT CREATE ON SCHEMA public TO PUBLIC",
    )
    .await
    .unwrap();
    let error = rds.migrate(APP, "pw-b").await.unwrap_err().to_string();
    assert!(
        error.contains("REVOKE CREATE ON SCHEMA public FROM PUBLIC as postgres"),
        "{error}"
    );
}

/// A request through the real router of an app that connects as `config`.
async fn request(
    router: &axum::Router,
    method: Method,
    tenant: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut builder = Request::builder().method(method).uri("/users").header(
        header::AUTHORIZATION,
        format!("Bearer {}", sign_hs256(&claims_for(tenant))),
    );
    let body = match body {
        Some(v) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn router_as(config: tokio_postgres::Config) -> axum::Router {
    let get = |k: &str| (k == "JWT_HS256_SECRET").then(|| SECRET.to_owned());
    let app = tenant_users::app::App::build(Config {
        token: token_config(&get).unwrap(),
        db: DbConfig::plain(config),
        identity: None,
        metrics: tenant_users::telemetry::Metrics::disabled(),
    })
    .await;
    tenant_users::http::router(app)
}

#[tokio::test]
async fn the_multi_user_rotation_clone_passes_the_audit_and_serves() {
    let rds = RdsLike::start().await;
    rds.migrate(APP, "app-pw-1").await.unwrap();
    // Exactly what SecretsManagerRDSPostgreSQLRotationMultiUser does on its
    // first rotation, with the master credentials.
    let master = connect(&rds.master).await;
    master
        .batch_execute("CREATE ROLE tenant_app_clone WITH LOGIN PASSWORD 'clone-pw-1'")
        .await
        .unwrap();
    master
        .batch_execute("GRANT tenant_app TO tenant_app_clone")
        .await
        .unwrap();
    let clone = rds.login("tenant_app_clone", "clone-pw-1");
    assert_audit_passes(clone.clone()).await;

    // Registered by the master user, the tables' owner, under FORCEd RLS.
    for tenant in ["acme", "globex"] {
        tenant_users_migrate::register_tenant(&master, tenant, "standard")
            .await
            .unwrap();
    }
    let as_app = router_as(rds.login(APP, "app-pw-1")).await;
    let as_clone = router_as(clone.clone()).await;
    let (status, _) = request(
        &as_app,
        Method::POST,
        "acme",
        Some(json!({"email": "ada@acme.test", "name": "Ada"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = request(
        &as_clone,
        Method::POST,
        "globex",
        Some(json!({"email": "hank@globex.test", "name": "Hank"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // The clone sees what the app role wrote, for its tenant only.
    let (status, body) = request(&as_clone, Method::GET, "acme", None).await;
    assert_eq!(status, StatusCode::OK);
    let emails: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ada@acme.test"]);

    // A redeploy with a new app password leaves the clone working.
    rds.migrate(APP, "app-pw-2").await.unwrap();
    assert_audit_passes(clone.clone()).await;
    let as_clone = router_as(clone).await;
    let (status, body) = request(&as_clone, Method::GET, "globex", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["users"].as_array().unwrap().len(), 1);

    // A clone that was given more than the app role is caught by migrate.
    connect(&rds.superuser())
        .await
        .batch_execute("ALTER ROLE tenant_app_clone CREATEDB")
        .await
        .unwrap();
    let error = rds.migrate(APP, "app-pw-3").await.unwrap_err().to_string();
    assert!(
        error.contains("role tenant_app_clone exists but is not fit") && error.contains("CREATEDB"),
        "{error}"
    );
}
