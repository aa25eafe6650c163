//! Shared set-up for the black-box tests: a fresh database per test (real
//! PostgreSQL, migrated by our own `migrate`), the app built as in Lambda
//! and connected as the application role, tokens signed at test time.
#![allow(dead_code)]

pub mod cluster;
pub mod delay;
pub mod moto;
pub mod pgbouncer;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tenant_users::app::App;
use tenant_users::app::Config;
use tenant_users::clock::Clock;
use tenant_users::db::config::{DbConfig, TlsConfig};
use tenant_users::telemetry::Metrics;
use tenant_users::token::config::token_config;
use tenant_users_migrate::{self as migrate, AppRole};
use tokio_postgres::{Client, NoTls};
use tower::ServiceExt;

pub const SECRET: &str = "test-only-secret-0123456789abcdef0123456789";
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A binary of the workspace by name: `api` (this package's, built by
/// cargo for its tests), `migrate` or `tenant-users` (the other packages',
/// beside it once built: make test runs `cargo build --bins` first).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_api")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --bins` (make test does)",
        path.display()
    );
    path
}

pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A command for `program` as the `postgres` user when we are root:
/// PostgreSQL and PgBouncer refuse to run as root.
/// `name` on PATH, else in one of `extra` (places distributions install
/// server programs that a user's PATH often lacks, such as /usr/sbin).
pub fn find_program(name: &str, extra: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

pub fn admin_base() -> tokio_postgres::Config {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
        .parse()
        .expect("TEST_DATABASE_ADMIN_URL is a PostgreSQL URL")
}

pub async fn connect(config: &tokio_postgres::Config) -> Client {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("connect to test PostgreSQL");
    tokio::spawn(connection);
    client
}

/// The tenants most tests use, registered in every test database, in the
/// `unlimited` tier (tests of the registry and limits make their own).
pub const USUAL_TENANTS: &[&str] = &["acme", "globex", "initech", "fuzz"];

/// A database of its own for one test, with its own application role;
/// dropped (with the role) when the test ends, pass or fail.
pub struct TestDb {
    pub name: String,
    pub app_user: String,
    pub app_password: String,
    /// The server's admin connection settings (database `postgres`).
    pub base: tokio_postgres::Config,
}

impl TestDb {
    pub async fn create() -> Self {
        Self::create_on(admin_base()).await
    }

    /// A test database on another server (e.g. a cluster of the test's own).
    pub async fn create_on(server: tokio_postgres::Config) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db = TestDb {
            name: format!("tu_test_{suffix}"),
            app_user: format!("tu_app_{suffix}"),
            app_password: format!("pw-{suffix}"),
            base: server,
        };
        let base = connect(&db.base).await;
        base.batch_execute(&format!("CREATE DATABASE {}", db.name))
            .await
            .expect("create test database");
        let role = AppRole {
            name: db.app_user.clone(),
            password: Some(db.app_password.clone()),
        };
        migrate::run(&db.admin_config(), &TlsConfig::DISABLED, &role)
            .await
            .expect("migrate");
        for tenant in USUAL_TENANTS {
            db.register(tenant, "unlimited").await;
        }
        db
    }

    /// Registers `tenant` in the registry, in `tier` (or moves it there).
    pub async fn register(&self, tenant: &str, tier: &str) {
        migrate::register_tenant(&self.admin().await, tenant, tier)
            .await
            .expect("register tenant");
    }

    /// Superuser connection settings for this test's database.
    pub fn admin_config(&self) -> tokio_postgres::Config {
        let mut c = self.base.clone();
        c.dbname(&self.name);
        c
    }

    /// The superuser's `postgres://` URL for this database.
    pub fn admin_url(&self) -> String {
        self.app_url().replace(
            &format!("{}:{}@", self.app_user, self.app_password),
            &format!("{}@", self.base.get_user().unwrap_or("postgres")),
        )
    }

    /// The application role's `postgres://` URL, for `DATABASE_URL`.
    pub fn app_url(&self) -> String {
        let host = match self.base.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = self.base.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}:{}@{host}:{port}/{}",
            self.app_user, self.app_password, self.name
        )
    }

    /// Application-role connection settings for this test's database.
    pub fn app_config(&self) -> tokio_postgres::Config {
        let mut c = self.admin_config();
        c.user(&self.app_user).password(self.app_password.as_str());
        c
    }

    pub async fn admin(&self) -> Client {
        connect(&self.admin_config()).await
    }

    pub async fn app_client(&self) -> Client {
        connect(&self.app_config()).await
    }

    /// Rows of `tenant` in every table with a `tenant_id` column (found in
    /// the catalog, as the audit finds tenant tables), as the owner sees
    /// them: (`schema.table`, count), in name order.
    pub async fn rows_of(&self, tenant: &str) -> Vec<(String, i64)> {
        let admin = self.admin().await;
        let tables: Vec<String> = admin
            .query(
                "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.columns \
                 WHERE column_name = 'tenant_id' AND table_schema NOT IN ('pg_catalog', 'information_schema') \
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::new();
        for table in tables {
            let n: i64 = admin
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE tenant_id = $1"),
                    &[&tenant],
                )
                .await
                .unwrap()
                .get(0);
            out.push((table, n));
        }
        out
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, user) = (&self.name, &self.app_user);
        // Separate statements: DROP DATABASE may not share a (implicit)
        // transaction with anything else. Then the rotation's clone
        // (`<user>_clone`), where a test made one, and the role.
        cleanup(
            &self.base,
            vec![
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("DROP ROLE IF EXISTS {user}_clone"),
                format!("DROP ROLE IF EXISTS {user}_control"),
                format!("DROP ROLE IF EXISTS {user}"),
            ],
        );
    }
}

/// Runs `statements` in turn on `config`, each on its own, ignoring
/// failures: clean-up from a `Drop`, which runs outside async context, so
/// on a runtime of its own.
pub fn cleanup(config: &tokio_postgres::Config, statements: Vec<String>) {
    let config = config.clone();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Ok((client, connection)) = config.connect(NoTls).await else {
                return;
            };
            tokio::spawn(connection);
            for sql in statements {
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

/// The service under test, wired exactly as `main` wires it.
pub struct TestApp {
    /// Shared by every app a test builds on the same database.
    pub db: Arc<TestDb>,
    pub app: Arc<App>,
    pub router: Router,
    /// The EMF metric records the app wrote, one JSON object a line.
    pub emf: Buffer,
}

/// A shared in-memory writer (EMF records, captured logs).
#[derive(Clone, Default)]
pub struct Buffer(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl Buffer {
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Extra token settings (`JWT_ISSUER`, `TENANT_CLAIM`, ...) on top of
    /// the HS256 test secret.
    pub async fn spawn_with(vars: &[(&str, &str)]) -> Self {
        let db = TestDb::create().await;
        Self::on(db, vars).await
    }

    /// As `spawn_with`, with `clock` as the app's time: the JWKS key age
    /// and refetch spacing, the credential gate, the audit interval. A
    /// manual clock lets a test move time instead of sleeping.
    pub async fn spawn_with_clock(vars: &[(&str, &str)], clock: Clock) -> Self {
        let db = TestDb::create().await;
        let mut db_config = DbConfig::plain(db.app_config());
        db_config.clock = clock;
        Self::build(db, vars, db_config).await
    }

    pub async fn on(db: TestDb, vars: &[(&str, &str)]) -> Self {
        let db_config = DbConfig::plain(db.app_config());
        Self::build(db, vars, db_config).await
    }

    /// The app on `db` with these database settings (another port, a
    /// manual clock, a short audit interval, ...).
    pub async fn with_db_config(db: TestDb, db_config: DbConfig) -> Self {
        Self::build(db, &[], db_config).await
    }

    async fn build(db: TestDb, vars: &[(&str, &str)], db_config: DbConfig) -> Self {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |key: &str| {
            vars.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| (key == "JWT_HS256_SECRET").then(|| SECRET.to_owned()))
        };
        let emf = Buffer::default();
        let mut token = token_config(&get).expect("token config");
        // One time for the whole app, as in service.
        token.clock = db_config.clock.clone();
        let config = Config {
            token,
            db: db_config,
            identity: tenant_users::identity::IdentityConfig::from_lookup(&get)
                .expect("identity config"),
            metrics: Metrics::to_writer("TenantUsersTest", Box::new(emf.clone())),
        };
        let app = App::build(config).await;
        let router = tenant_users::http::router(app.clone());
        TestApp {
            db: Arc::new(db),
            emf,
            app,
            router,
        }
    }

    /// The app configured from an environment (`DB_SECRET_ARN`,
    /// `DATABASE_URL`, `DB_SSLMODE`, ...) exactly as `main` reads it, plus
    /// the HS256 test secret.
    pub async fn from_env(db: TestDb, env: Vec<(String, String)>) -> Self {
        Self::from_env_shared(Arc::new(db), env).await
    }

    /// As `from_env`, with `clock` as the app's time (see `spawn_with_clock`).
    pub async fn from_env_with_clock(db: TestDb, env: Vec<(String, String)>, clock: Clock) -> Self {
        Self::from_env_clocked(Arc::new(db), env, clock).await
    }

    /// Another execution environment on the same database.
    pub async fn from_env_shared(db: Arc<TestDb>, env: Vec<(String, String)>) -> Self {
        Self::from_env_clocked(db, env, Clock::system()).await
    }

    async fn from_env_clocked(db: Arc<TestDb>, env: Vec<(String, String)>, clock: Clock) -> Self {
        let mut config = Config::from_lookup(|key| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| (key == "JWT_HS256_SECRET").then(|| SECRET.to_owned()))
        })
        .expect("config");
        let emf = Buffer::default();
        config.metrics = Metrics::to_writer("TenantUsersTest", Box::new(emf.clone()));
        config.db.clock = clock.clone();
        config.token.clock = clock;
        let app = App::build(config).await;
        let router = tenant_users::http::router(app.clone());
        TestApp {
            db,
            emf,
            app,
            router,
        }
    }

    /// A valid HS256 token for a tenant admin of `tenant` (who may write).
    pub fn token(&self, tenant: &str) -> String {
        sign_hs256(&claims_for(tenant))
    }

    /// A valid HS256 token for a member of `tenant`: no group, reads only.
    pub fn member_token(&self, tenant: &str) -> String {
        sign_hs256(&member_claims_for(tenant))
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        TestResponse::from_response(response).await
    }
}

impl TestResponse {
    /// The whole of a router's response.
    pub async fn from_response(response: axum::response::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str, token: &str) -> TestResponse {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> TestResponse {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> TestResponse {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> TestResponse {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// Creates a user through the API and returns its id.
    pub async fn create_user(&self, tenant: &str, email: &str, name: &str) -> String {
        let r = self
            .post(
                "/users",
                &self.token(tenant),
                json!({"email": email, "name": name}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        r.json()["user_id"].as_str().unwrap().to_owned()
    }

    /// The emails `tenant` sees through `GET /users`, in order.
    pub async fn emails_seen_by(&self, tenant: &str) -> Vec<String> {
        let r = self.get("/users", &self.token(tenant)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Every row in `users`, seen by the superuser (RLS does not apply):
    /// (tenant_id, email, name), sorted.
    pub async fn all_rows(&self) -> Vec<(String, String, String)> {
        let admin = self.db.admin().await;
        admin
            .query(
                "SELECT tenant_id, email, name FROM users ORDER BY 1, 2",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// Waits until the app's client has seen its connection close (a
    /// dropped backend, a restarted proxy), with a deadline generous enough
    /// for a loaded machine.
    pub async fn wait_for_connection_drop(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.app.db.open_connections().await > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the app's client never saw its connection close"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The app role's backends and when each last changed state: a request
    /// that runs any SQL moves `state_change`.
    pub async fn app_activity(&self) -> Vec<(i32, SystemTime)> {
        let admin = self.db.admin().await;
        admin
            .query(
                "SELECT pid, state_change FROM pg_stat_activity WHERE usename = $1 ORDER BY pid",
                &[&self.db.app_user],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with this status, and returns its detail.
    pub fn assert_problem(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["status"], status.as_u16(), "{body}");
        assert!(
            body["type"].is_string() && body["title"].is_string(),
            "{body}"
        );
        body["detail"].as_str().expect("detail").to_owned()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims for a tenant admin (`cognito:groups` holds
/// `tenant-admin`, so the suite exercises writes), valid for an hour.
pub fn claims_for(tenant: &str) -> Value {
    let mut claims = member_claims_for(tenant);
    claims["cognito:groups"] = json!([tenant_users::tenant::ADMIN_GROUP]);
    claims
}

/// Standard claims for a member of a tenant (no group), valid for an hour.
pub fn member_claims_for(tenant: &str) -> Value {
    json!({"sub": format!("user@{tenant}"), "custom:tenant_id": tenant, "iat": now(), "exp": now() + 3600})
}

pub fn sign_hs256(claims: &Value) -> String {
    sign_with(Algorithm::HS256, claims, SECRET.as_bytes())
}

pub fn sign_with(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Builds a JWT from raw parts, signature computed with the test secret
/// (HS256) over whatever header and payload text we give: for tokens no
/// well-behaved library would produce.
pub fn raw_hs256(header_json: &str, payload_json: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}
