//! The one database connection, and the tenant scope every statement runs in.
//!
//! This is where the tenant is set. [`Database::run`] is the only way request
//! code can execute SQL: it takes the verified [`TenantContext`], binds its
//! tenant as `$1` of the statement, and wraps the statement in
//!
//! ```sql
//! BEGIN;
//! SELECT public.app_enter_tenant($tenant, $ms, $want);
//!     -- set_config(.., true) = SET LOCAL of the tenant; the registry read
//!     -- under it (unknown or suspended: refused); the tier's statement
//!     -- timeout and work_mem, set the same way; its concurrency cap; and,
//!     -- when this environment's lease ran out, $want tokens of the tenant's
//!     -- rate (see [`lease`]). Any refusal aborts the transaction here.
//! <the statement, which also says WHERE tenant_id = $1>;
//! COMMIT;   -- becomes ROLLBACK if anything above failed
//! ```
//!
//! All four are sent at once as unnamed statements (one round trip, nothing
//! that would pin a pooled RDS Proxy connection), and nothing outlives the
//! transaction: the next tenant on this connection starts clean.
//!
//! A connection serves only after the isolation self-audit passed on it,
//! and for at most `DB_AUDIT_INTERVAL_SECONDS` before the next request on it
//! audits it again (one extra round trip per interval, not per request).
//! A failed audit condemns every connection and closes the back-off gate:
//! until the gate's next attempt passes an audit, requests get 503 without
//! a login.
//!
//! The settings all this follows are parsed in [`config`].

pub mod config;
pub mod lease;

use std::time::{Duration, SystemTime};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
pub use postgres_openssl::MakeTlsConnector;
use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, error::SqlState};

use self::config::{DbConfig, DbSource, Roots, SslMode, TlsConfig};
use crate::audit;
use crate::clock::Clock;
use crate::gate::CredentialGate;
use crate::secret::{DbCredentials, SecretSource};
use crate::tenant::TenantContext;

/// Enters the tenant's scope (migrations/V3): `set_config(..., true)` of
/// the tenant and the tier's settings inside a function, so the statement
/// text holds no SET that would pin an RDS Proxy connection; the registry
/// check, the concurrency cap and the rate lease in the same call.
const SET_TENANT_SCOPE: &str = "SELECT public.app_enter_tenant($1, $2, $3)";

/// Why the registry refused the caller's tenant (before any query ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not in the registry, or offboarded.
    Unknown,
    Suspended,
    /// Over the tier's request rate, across every environment.
    RateLimited {
        retry_after: Duration,
    },
    /// The tier's concurrent transactions are all running.
    Busy {
        retry_after: Duration,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Unknown => "tenant is not registered",
            Refusal::Suspended => "tenant is suspended",
            Refusal::RateLimited { .. } => "tenant is over its request rate",
            Refusal::Busy { .. } => "tenant has too many transactions running",
        })
    }
}

impl Refusal {
    /// The refusal `app_enter_tenant` raised, from its SQLSTATE (DETAIL:
    /// the milliseconds to wait).
    fn from_db(error: &tokio_postgres::Error) -> Option<Self> {
        let db = error.as_db_error()?;
        let wait = || {
            Duration::from_millis(
                db.detail()
                    .and_then(|d| d.trim().parse::<u64>().ok())
                    .unwrap_or(1000)
                    .clamp(1, 60_000),
            )
        };
        match db.code().code() {
            "TU001" => Some(Refusal::Unknown),
            "TU002" => Some(Refusal::Suspended),
            "TU003" => Some(Refusal::Busy {
                retry_after: wait(),
            }),
            "TU429" => Some(Refusal::RateLimited {
                retry_after: wait(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached, or the connection broke.
    #[error("database unavailable")]
    Unavailable(#[source] tokio_postgres::Error),
    /// The connected role or schema fails the isolation self-audit, or the
    /// connection settings cannot work (e.g. an unreadable CA file).
    #[error("deployment is misconfigured: {0}")]
    Misconfigured(String),
    /// The credentials could not be had from Secrets Manager (or STS), or
    /// the database refused them; no new attempt before `retry_after`.
    #[error("database credentials unavailable: {reason}")]
    Credentials {
        reason: String,
        retry_after: Duration,
    },
    /// The registry refused the tenant; nothing ran.
    #[error("{0}")]
    Refused(Refusal),
    /// The statement ran into `statement_timeout`.
    #[error("statement timed out")]
    Timeout(#[source] tokio_postgres::Error),
    /// The statement broke a constraint or a column's rule: the request's
    /// fault, not the database's. Nothing was written (the transaction
    /// rolled back).
    #[error("{0}")]
    Rejected(Violation),
    #[error("database error")]
    Query(#[source] tokio_postgres::Error),
}

/// Which rule a statement broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    Unique,
    /// A foreign key: `deleting` when the statement deleted a row that
    /// others still reference, else it named a row that does not exist.
    ForeignKey {
        deleting: bool,
    },
    Check,
    NotNull,
    /// A value out of range or of the wrong form for its column (SQLSTATE
    /// class 22).
    Data,
}

/// A constraint violation, as PostgreSQL reported it: the table and
/// constraint (or column) name the field at fault.
#[derive(Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    pub table: Option<String>,
    pub constraint: Option<String>,
    pub column: Option<String>,
    pub source: tokio_postgres::Error,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} violation on {} ({})",
            self.kind,
            self.table.as_deref().unwrap_or("?"),
            self.constraint
                .as_deref()
                .or(self.column.as_deref())
                .unwrap_or("?")
        )
    }
}

impl Violation {
    /// The field of the resource at fault: the column PostgreSQL names, or
    /// the one its constraint is named after ([`constraint_field`]).
    pub fn field(&self) -> Option<String> {
        if let Some(column) = &self.column {
            return Some(column.clone());
        }
        constraint_field(self.table.as_deref()?, self.constraint.as_deref()?)
    }

    fn from_db(error: tokio_postgres::Error, sql: &str) -> Result<Self, tokio_postgres::Error> {
        let code = error.code().map(SqlState::code).unwrap_or_default();
        let kind = match code {
            // A unique key, or an exclusion constraint (the same promise
            // over ranges): either way the value is taken.
            "23505" | "23P01" => ViolationKind::Unique,
            "23503" => ViolationKind::ForeignKey {
                deleting: sql
                    .trim_start()
                    .get(..6)
                    .is_some_and(|verb| verb.eq_ignore_ascii_case("DELETE")),
            },
            "23514" => ViolationKind::Check,
            "23502" => ViolationKind::NotNull,
            _ if code.starts_with("22") => ViolationKind::Data,
            _ => return Err(error),
        };
        let db = error.as_db_error();
        let name = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_owned);
        Ok(Violation {
            kind,
            table: name(db.and_then(|d| d.table())),
            constraint: name(db.and_then(|d| d.constraint())),
            column: name(db.and_then(|d| d.column())),
            source: error,
        })
    }
}

/// The field a constraint is about, by PostgreSQL's naming convention
/// (`<table>_<columns>_key`, `_fkey`, `_check`, ...) with the tenant left
/// out: `users_tenant_email_key` on `users` is `email`,
/// `projects_tenant_id_owner_user_id_fkey` on `projects` is
/// `owner_user_id`. `None` for a name that does not follow it, or one
/// about the tenant alone (the primary key, say).
pub fn constraint_field(table: &str, constraint: &str) -> Option<String> {
    let rest = constraint.strip_prefix(table)?.strip_prefix('_')?;
    let rest = [
        "_fkey",
        "_pkey",
        "_key",
        "_check",
        "_idx",
        "_excl",
        "_not_null",
    ]
    .iter()
    .find_map(|suffix| rest.strip_suffix(suffix))
    .unwrap_or(rest);
    if rest == "pkey" || rest == "tenant_id" || rest == "tenant" {
        return None;
    }
    let rest = rest
        .strip_prefix("tenant_id_")
        .or_else(|| rest.strip_prefix("tenant_"))
        .unwrap_or(rest);
    (!rest.is_empty()).then(|| rest.to_owned())
}

impl DbError {
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Query(e) | DbError::Timeout(e) | DbError::Unavailable(e) => e.code(),
            DbError::Rejected(v) => v.source.code(),
            DbError::Misconfigured(_) | DbError::Credentials { .. } | DbError::Refused(_) => None,
        }
    }

    fn classify(error: tokio_postgres::Error) -> Self {
        Self::classify_statement(error, "")
    }

    /// As [`DbError::classify`], for an error of the statement `sql`: a
    /// broken constraint is the request's fault ([`DbError::Rejected`]).
    fn classify_statement(error: tokio_postgres::Error, sql: &str) -> Self {
        if let Some(refusal) = Refusal::from_db(&error) {
            return DbError::Refused(refusal);
        }
        let error = match Violation::from_db(error, sql) {
            Ok(violation) => return DbError::Rejected(violation),
            Err(error) => error,
        };
        let code = error.code().map(SqlState::code).unwrap_or_default();
        if error.is_closed() || code.starts_with("08") || code.starts_with("57P") {
            DbError::Unavailable(error)
        } else if code == SqlState::QUERY_CANCELED.code() {
            DbError::Timeout(error)
        } else if code == SqlState::INSUFFICIENT_PRIVILEGE.code() {
            // A grant is missing: the deployment, not the request, is at fault.
            DbError::Misconfigured(format!(
                "the application role lacks a privilege: {}",
                error_chain(&error)
            ))
        } else {
            DbError::Query(error)
        }
    }
}

/// One statement to run for the caller's tenant. `$1` is always the tenant
/// id (bound by [`Database::run`] from the verified token); the statement's
/// own parameters start at `$2`.
pub struct TenantQuery<'a> {
    sql: &'static str,
    params: Vec<(&'a (dyn ToSql + Sync), Type)>,
    retry_safe: bool,
}

impl<'a> TenantQuery<'a> {
    pub fn new(sql: &'static str) -> Self {
        Self {
            sql,
            params: Vec::new(),
            retry_safe: false,
        }
    }

    /// Binds the next parameter (`$2`, `$3`, ...).
    pub fn bind(mut self, value: &'a (dyn ToSql + Sync), ty: Type) -> Self {
        self.params.push((value, ty));
        self
    }

    /// Marks the statement as safe to run twice, so it is retried once on a
    /// fresh connection when the old one turns out to be dead.
    pub fn retry_safe(mut self) -> Self {
        self.retry_safe = true;
        self
    }

    pub fn sql(&self) -> &'static str {
        self.sql
    }
}

/// A connection that passed the isolation self-audit, and when.
struct Conn {
    client: Client,
    audited_at: SystemTime,
}

/// The execution environment's single connection, opened lazily (or warmed
/// at cold start) and reopened when found closed.
pub struct Database {
    config: DbConfig,
    /// `None` with `DB_SSLMODE=disable`: no TLS library set up at all (the
    /// system root store costs tens of milliseconds of a cold start).
    tls: Result<Option<MakeTlsConnector>, String>,
    secret: Option<SecretSource>,
    credentials: std::sync::Mutex<Option<DbCredentials>>,
    /// Spaces out secret fetches and logins after any credential failure
    /// or failed audit.
    gate: CredentialGate,
    clock: Clock,
    /// The findings of the last audit, if it failed: while set, nothing
    /// serves, on any connection.
    audit_failure: std::sync::Mutex<Option<String>>,
    statement_timeout_ms: i32,
    /// One connection per execution environment (`DB_POOL_SIZE`, default
    /// 1, is for the local server, which serves requests concurrently).
    conns: Vec<Mutex<Option<Conn>>>,
    next: std::sync::atomic::AtomicUsize,
    /// This environment's share of each tenant's rate.
    leases: lease::Leases,
}

impl Database {
    pub async fn new(config: DbConfig) -> Self {
        let (secret, max_backoff) = match &config.source {
            DbSource::Secret(secret) => (
                Some(
                    crate::coldstart::timed("aws clients", SecretSource::new(secret.clone())).await,
                ),
                secret.refresh_interval,
            ),
            DbSource::Url(_) => (None, Duration::from_secs(60)),
        };
        Self {
            statement_timeout_ms: i32::try_from(config.statement_timeout.as_millis())
                .unwrap_or(i32::MAX),
            tls: match config.tls.mode {
                SslMode::Disable => Ok(None),
                SslMode::Require | SslMode::VerifyFull => {
                    crate::coldstart::sync("db tls", || tls_connector(&config.tls)).map(Some)
                }
            },
            secret,
            credentials: std::sync::Mutex::new(None),
            gate: CredentialGate::new(max_backoff, config.clock.clone()),
            clock: config.clock.clone(),
            audit_failure: std::sync::Mutex::new(None),
            conns: (0..config.pool_size.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            leases: lease::Leases::new(config.lease_max),
            config,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A free connection slot if there is one, else the next in turn.
    async fn acquire(&self) -> tokio::sync::MutexGuard<'_, Option<Conn>> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Ok(slot) = self.conns[(start + i) % n].try_lock() {
                return slot;
            }
        }
        self.conns[start % n].lock().await
    }

    /// Opens the connection ahead of the first request (cold start). A
    /// failure is logged, not fatal: requests get 503 until it recovers.
    pub async fn warm(&self) {
        let mut slot = self.acquire().await;
        if let Err(error) = self.ensure_open(&mut slot).await {
            tracing::error!(error = %error_chain(&error), "database not ready at start-up");
        }
    }

    /// Runs `query` inside a fresh transaction scoped to the caller's tenant,
    /// if the registry and the tenant's limits admit it.
    pub async fn run(
        &self,
        caller: &TenantContext,
        query: TenantQuery<'_>,
    ) -> Result<Vec<Row>, DbError> {
        let tenant = caller.tenant().as_str();
        let want = match self.leases.admit(tenant, self.clock.now()) {
            lease::Admission::Throttled(retry_after) => {
                return Err(DbError::Refused(Refusal::RateLimited { retry_after }));
            }
            lease::Admission::Busy(retry_after) => {
                return Err(DbError::Refused(Refusal::Busy { retry_after }));
            }
            lease::Admission::Leased => 0,
            lease::Admission::Ask(n) => n,
        };
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            Vec::with_capacity(query.params.len() + 1);
        params.push((&tenant, Type::TEXT));
        params.extend(query.params.iter().cloned());

        let started = std::time::Instant::now();
        let result = self.run_scoped(tenant, want, &query, &params).await;
        crate::telemetry::record_db_time(started.elapsed());
        match result {
            Ok((rows, granted)) => {
                if want > 0 {
                    self.leases.granted(tenant, granted, self.clock.now());
                }
                crate::telemetry::record_rows(rows.len());
                Ok(rows)
            }
            Err(DbError::Refused(Refusal::RateLimited { retry_after })) => {
                self.leases.denied(tenant, retry_after, self.clock.now());
                Err(DbError::Refused(Refusal::RateLimited { retry_after }))
            }
            Err(DbError::Refused(Refusal::Busy { retry_after })) => {
                self.leases
                    .busy(tenant, retry_after, want == 0, self.clock.now());
                Err(DbError::Refused(Refusal::Busy { retry_after }))
            }
            Err(error) => Err(error),
        }
    }

    async fn run_scoped(
        &self,
        tenant: &str,
        want: u32,
        query: &TenantQuery<'_>,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<(Vec<Row>, i32), DbError> {
        let mut slot = self.acquire().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.ensure_open(&mut slot).await?;
            match self.scoped(client, tenant, want, query.sql, params).await {
                Ok(done) => return Ok(done),
                Err(error) => {
                    let error = DbError::classify_statement(error, query.sql);
                    if !matches!(error, DbError::Unavailable(_)) && !client.is_closed() {
                        return Err(error);
                    }
                    // The connection is gone: forget it so the next attempt
                    // (or the next request) opens a new one.
                    *slot = None;
                    if !(query.retry_safe && attempt == 1) {
                        return Err(error);
                    }
                    tracing::warn!(error = %error_chain(&error), "database connection lost; retrying once");
                }
            }
        }
    }

    /// BEGIN, tenant scope, statement, COMMIT: pipelined, one round trip.
    /// `join!` polls the four futures in order, and each one queues its
    /// messages on its first poll, so the server sees them in this order;
    /// all four always run to completion, so a failed statement still
    /// reaches COMMIT, which PostgreSQL turns into ROLLBACK. Returns the
    /// rows and the tokens the scope granted.
    async fn scoped(
        &self,
        client: &Client,
        tenant: &str,
        want: u32,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<(Vec<Row>, i32), tokio_postgres::Error> {
        let timeout = self.statement_timeout_ms;
        let want = i32::try_from(want).unwrap_or(i32::MAX);
        let scope_params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&tenant, Type::TEXT),
            (&timeout, Type::INT4),
            (&want, Type::INT4),
        ];
        let (begin, scope, rows, commit) = tokio::join!(
            client.execute_typed("BEGIN", &[]),
            client.query_typed(SET_TENANT_SCOPE, &scope_params),
            client.query_typed(sql, params),
            client.execute_typed("COMMIT", &[]),
        );
        begin?;
        let granted = scope?
            .first()
            .and_then(|row| row.try_get::<_, i32>(0).ok())
            .unwrap_or(0);
        let rows = rows?;
        commit?;
        Ok((rows, granted))
    }

    /// The slot's connection, fit to serve: open, and audited within the
    /// interval. Opens (and audits) a new one when needed, and re-audits an
    /// old one whose interval has passed.
    async fn ensure_open<'s>(&self, slot: &'s mut Option<Conn>) -> Result<&'s Client, DbError> {
        if let Some(findings) = self.audit_failure() {
            // Fail closed: no connection serves while the last audit
            // failed, and the next try (a login and an audit) waits for the
            // gate instead of hitting the database on every request.
            *slot = None;
            if self.gate.admit().is_err() {
                return Err(DbError::Misconfigured(findings));
            }
        }
        let mut reuse = slot.take().filter(|conn| !conn.client.is_closed());
        if let Some(conn) = reuse.take_if(|conn| self.audit_due(conn)) {
            match self.audit(conn.client).await {
                Ok(conn) => reuse = Some(conn),
                // Broken under us: a new connection (audited) will do.
                Err(DbError::Unavailable(error)) => tracing::warn!(
                    error = %error_chain(&error),
                    "connection lost during the periodic audit; reconnecting"
                ),
                Err(error) => return Err(error),
            }
        }
        let conn = match reuse {
            Some(conn) => conn,
            None => {
                let client = self.open().await?;
                crate::coldstart::timed("audit", self.audit(client)).await?
            }
        };
        Ok(&slot.insert(conn).client)
    }

    /// Whether the connection's last audit is older than the interval.
    /// Wall-clock time, so time spent frozen counts; a clock that went
    /// backwards makes the age unknown, so the audit runs.
    fn audit_due(&self, conn: &Conn) -> bool {
        match self.clock.wall().duration_since(conn.audited_at) {
            Ok(age) => age >= self.config.audit_interval,
            Err(_) => true,
        }
    }

    /// Runs the isolation self-audit on `client` (one round trip) and
    /// returns it fit to serve, or records the failure and closes the gate.
    /// An audit that cannot run has not passed; only a broken connection
    /// is not held against the deployment.
    async fn audit(&self, client: Client) -> Result<Conn, DbError> {
        let findings = match audit::check(&client).await {
            Ok(findings) => findings,
            Err(error) => match DbError::classify(error) {
                DbError::Unavailable(error) => return Err(DbError::Unavailable(error)),
                other => vec![format!("the audit could not run: {}", error_chain(&other))],
            },
        };
        if !findings.is_empty() {
            for finding in &findings {
                tracing::error!(%finding, "isolation self-audit failed; refusing to serve");
            }
            let findings = findings.join("; ");
            let retry_after = self.gate.failed();
            tracing::error!(
                retry_after_ms = retry_after.as_millis() as u64,
                "isolation self-audit failed; backing off"
            );
            if let Ok(mut failure) = self.audit_failure.lock() {
                *failure = Some(findings.clone());
            }
            return Err(DbError::Misconfigured(findings));
        }
        self.gate.succeeded();
        if let Ok(mut failure) = self.audit_failure.lock()
            && failure.take().is_some()
        {
            tracing::info!("isolation self-audit passes again; serving");
        }
        Ok(Conn {
            client,
            audited_at: self.clock.wall(),
        })
    }

    /// The last audit's findings if it failed. A poisoned lock (a panic
    /// mid-update) counts as failed: fail closed.
    fn audit_failure(&self) -> Option<String> {
        match self.audit_failure.lock() {
            Ok(failure) => failure.clone(),
            Err(_) => Some("audit state unreadable".into()),
        }
    }

    async fn open(&self) -> Result<Client, DbError> {
        let tls = self
            .tls
            .as_ref()
            .map(Option::as_ref)
            .map_err(|e| DbError::Misconfigured(e.clone()))?;
        let (pg, fresh) = self.connect_config().await?;
        let client = match crate::coldstart::timed("connect", connect(&pg, tls)).await {
            Err(error) if self.secret.is_some() && password_refused(&error) => {
                if fresh {
                    return Err(self.refused(error));
                }
                // Rotation: the secret has a new password the cached copy
                // lacks. Fetch it again (through the gate) and log in once more.
                tracing::warn!("database refused the cached password; fetching the secret again");
                self.forget_credentials();
                let (pg, _) = self.connect_config().await?;
                match connect(&pg, tls).await {
                    Err(error) if password_refused(&error) => return Err(self.refused(error)),
                    other => other.map_err(DbError::Unavailable)?,
                }
            }
            other => other.map_err(DbError::Unavailable)?,
        };
        // The gate opens again only once the audit passes too (`audit`).
        tracing::info!("database connection open; auditing it");
        Ok(client)
    }

    /// The password fresh from the secret was refused: forget it and close
    /// the gate, so requests until the next attempt get 503 at once instead
    /// of each trying a login known to fail.
    fn refused(&self, error: tokio_postgres::Error) -> DbError {
        self.forget_credentials();
        let retry_after = self.gate.failed();
        tracing::error!(
            error = %error_chain(&error),
            retry_after_ms = retry_after.as_millis() as u64,
            "database refused the password from the secret; backing off"
        );
        DbError::Credentials {
            reason: "the database refused the password from the secret".into(),
            retry_after,
        }
    }

    fn forget_credentials(&self) {
        if let Ok(mut slot) = self.credentials.lock() {
            *slot = None;
        }
    }

    /// The secret's credentials: cached, or fetched when there are none
    /// (cold start, or after the cached password was refused). A fetch is
    /// made only when the gate is open. The flag says whether they were
    /// fetched just now.
    async fn credentials(&self, source: &SecretSource) -> Result<(DbCredentials, bool), DbError> {
        if let Some(creds) = self.credentials.lock().ok().and_then(|c| c.clone()) {
            return Ok((creds, false));
        }
        if let Err(retry_after) = self.gate.admit() {
            return Err(DbError::Credentials {
                reason: "backing off after a failed attempt".into(),
                retry_after,
            });
        }
        match crate::coldstart::timed("secret", source.fetch()).await {
            Ok(creds) => {
                tracing::info!(user = %creds.username, "database credentials loaded from Secrets Manager");
                if let Ok(mut slot) = self.credentials.lock() {
                    *slot = Some(creds.clone());
                }
                Ok((creds, true))
            }
            Err(error) => {
                let retry_after = self.gate.failed();
                tracing::error!(
                    %error,
                    retry_after_ms = retry_after.as_millis() as u64,
                    "database credentials unavailable; backing off"
                );
                Err(DbError::Credentials {
                    reason: error.to_string(),
                    retry_after,
                })
            }
        }
    }

    /// Connection settings: the URL's, or the secret's; with whether the
    /// secret was fetched just now.
    async fn connect_config(&self) -> Result<(tokio_postgres::Config, bool), DbError> {
        let (mut pg, fresh) = match (&self.config.source, &self.secret) {
            (DbSource::Url(pg), _) => (pg.clone(), false),
            (DbSource::Secret(_), Some(source)) => {
                let (creds, fresh) = self.credentials(source).await?;
                (pg_config(&creds), fresh)
            }
            (DbSource::Secret(_), None) => {
                return Err(DbError::Misconfigured(
                    "secret source not initialised".into(),
                ));
            }
        };
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(self.config.connect_timeout);
        }
        pg.application_name("tenant-users");
        pg.ssl_mode(match self.config.tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        Ok((pg, fresh))
    }

    /// Runs the isolation self-audit on a fresh connection, made exactly as
    /// the service makes one (secret, TLS), and returns every check, passed
    /// or failed: the `audit` command's report.
    pub async fn audit_report(&self) -> Result<Vec<audit::Check>, DbError> {
        let tls = self
            .tls
            .as_ref()
            .map(Option::as_ref)
            .map_err(|e| DbError::Misconfigured(e.clone()))?;
        let (pg, _) = self.connect_config().await?;
        let client = connect(&pg, tls).await.map_err(DbError::Unavailable)?;
        audit::report(&client).await.map_err(DbError::classify)
    }

    /// Diagnostics: `app.current_tenant` and `statement_timeout` as the
    /// shared connection's *session* sees them between transactions. Reads
    /// settings only, no table; tests use it to show that no tenant state
    /// outlives a transaction.
    pub async fn session_settings(&self) -> Result<(String, String), DbError> {
        let mut slot = self.acquire().await;
        let client = self.ensure_open(&mut slot).await?;
        let rows = client
            .query_typed(
                "SELECT coalesce(current_setting('app.current_tenant', true), ''), current_setting('statement_timeout')",
                &[],
            )
            .await
            .map_err(DbError::classify)?;
        let row = rows
            .first()
            .ok_or_else(|| DbError::Misconfigured("no row".into()))?;
        Ok((row.get(0), row.get(1)))
    }

    pub fn statement_timeout(&self) -> Duration {
        self.config.statement_timeout
    }

    /// Diagnostics: how many connections are held open, as their clients
    /// see them (one closed under us counts once its client has noticed).
    /// Tests wait on it to know the client saw a drop, as a thawed Lambda
    /// would, instead of sleeping and hoping it did.
    pub async fn open_connections(&self) -> usize {
        let mut open = 0;
        for slot in &self.conns {
            if slot
                .lock()
                .await
                .as_ref()
                .is_some_and(|conn| !conn.client.is_closed())
            {
                open += 1;
            }
        }
        open
    }
}

async fn connect(
    pg: &tokio_postgres::Config,
    tls: Option<&MakeTlsConnector>,
) -> Result<Client, tokio_postgres::Error> {
    fn drive<F>(connection: F)
    where
        F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(error = %error_chain(&error), "database connection closed");
            }
        });
    }
    match tls {
        Some(tls) => {
            let (client, connection) = pg.connect(tls.clone()).await?;
            drive(connection);
            Ok(client)
        }
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            drive(connection);
            Ok(client)
        }
    }
}

/// The database (or the proxy in front of it) refused our credentials:
/// 28P01 (wrong password), 28000 (e.g. a rotated-away user name), or a
/// pooler's own login failure, which PgBouncer reports as 08P01 with
/// "password authentication failed".
fn password_refused(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let code = db.code();
    *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || (*code == SqlState::PROTOCOL_VIOLATION && db.message().contains("authentication failed"))
}

fn pg_config(creds: &DbCredentials) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(creds.host.as_deref().unwrap_or("localhost"))
        .port(creds.port.unwrap_or(5432))
        .user(&creds.username)
        .password(creds.password())
        .dbname(creds.dbname.as_deref().unwrap_or("postgres"));
    pg
}

/// The TLS connector for `DB_SSLMODE`: `require` encrypts without checking
/// the certificate (as libpq's `require`); `verify-full` checks the chain
/// against the system roots plus `DB_CA_FILE`, and the host name.
/// AWS's RDS and RDS Proxy certificate authorities (every region), as
/// `scripts/rds-ca-bundle.sh` extracts them from a pinned registry package;
/// trusted by the migrate function's admin connection, and nothing else.
pub const RDS_CA_BUNDLE: &str = include_str!("../../certs/rds-ca-bundle.pem");

/// The database connector: OpenSSL (vendored in the Lambda bootstrap),
/// TLS 1.2 or later, trusting exactly the roots `config` names and no
/// others. Built on OpenSSL directly rather than through native-tls, whose
/// connector parses the whole system store (the file openssl-probe finds)
/// on every build, even when its roots are then replaced: 14 ms of CPU at
/// each cold start (BENCHMARKS.md, "Init CPU per phase").
pub fn tls_connector(config: &TlsConfig) -> Result<MakeTlsConnector, String> {
    let failed = |e: openssl::error::ErrorStack| format!("TLS set-up failed: {e}");
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(failed)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(failed)?;
    // Only these roots, whatever the library's compiled-in default paths.
    builder.set_cert_store(X509StoreBuilder::new().map_err(failed)?.build());
    if config.roots == Roots::System {
        // What native-tls trusted: the system's bundle and directories as
        // openssl-probe finds them (a directory is read lazily, per issuer).
        let probe = openssl_probe::probe();
        if let Some(file) = &probe.cert_file
            && let Err(e) = builder.load_verify_locations(Some(file), None)
        {
            tracing::debug!(error = %e, file = %file.display(), "system CA file not loaded");
        }
        for dir in &probe.cert_dir {
            if let Err(e) = builder.load_verify_locations(None, Some(dir)) {
                tracing::debug!(error = %e, dir = %dir.display(), "system CA directory not loaded");
            }
        }
    }
    let mut add = |pem: &[u8]| -> Result<(), String> {
        let certs = X509::stack_from_pem(pem).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no certificate found".into());
        }
        for cert in certs {
            builder
                .cert_store_mut()
                .add_cert(cert)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    if config.roots == Roots::RdsOnly && config.ca_file.is_none() {
        let region = std::env::var("AWS_REGION").ok();
        add(rds_roots(RDS_CA_BUNDLE, region.as_deref()).as_bytes())
            .map_err(|e| format!("the shipped RDS CA bundle: {e}"))?;
    }
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("DB_CA_FILE {}: {e}", path.display()))?;
        add(&pem).map_err(|e| {
            format!(
                "DB_CA_FILE {}: not a PEM certificate bundle: {e}",
                path.display()
            )
        })?;
    }
    let require = config.mode == SslMode::Require;
    if require {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    // verify-full: the chain (above) and the host name (OpenSSL checks it
    // against the certificate by default); require: neither.
    connector.set_callback(move |connect, _domain| {
        if require {
            connect.set_verify_hostname(false);
        }
        Ok(())
    });
    Ok(connector)
}

/// The certificates of the RDS bundle that can vouch for a database of
/// `region` (the function's, `AWS_REGION`, which Lambda sets): that
/// region's RDS root CAs, and the public Amazon and Starfield roots that
/// RDS Proxy's certificates chain to. RDS gives each region its own roots,
/// so the other regions' (most of the bundle) could only ever vouch for a
/// database elsewhere; OpenSSL parses each root it is given eagerly, at
/// 0.05–0.1 ms of CPU each, so they are left out (a database in another
/// region: `DB_CA_FILE`).
/// Without a region, the whole bundle. Each certificate in the bundle
/// follows its `# subject` line (scripts/rds-ca-bundle.sh).
pub fn rds_roots(bundle: &str, region: Option<&str>) -> String {
    let Some(region) = region.map(str::trim).filter(|r| !r.is_empty()) else {
        return bundle.to_string();
    };
    let mut out = String::new();
    let mut keep = false;
    for line in bundle.lines() {
        if let Some(subject) = line.strip_prefix("# ") {
            keep = match subject.split(',').find_map(|part| part.strip_prefix("CN=")) {
                // "Amazon RDS [Beta |Preview ]<region> Root CA ...".
                Some(cn) if cn.starts_with("Amazon RDS ") => {
                    cn.split(' ').any(|word| word == region)
                }
                _ => true,
            };
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Formats an error with its sources, for logs. A database error shows
/// only its SQLSTATE and message: its DETAIL can quote row values (emails),
/// which must not reach the logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let describe = |e: &(dyn std::error::Error + 'static)| {
        let db = e
            .downcast_ref::<tokio_postgres::error::DbError>()
            .or_else(|| {
                e.downcast_ref::<tokio_postgres::Error>()
                    .and_then(|pg| pg.as_db_error())
            });
        match db {
            Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        }
    };
    let mut out = describe(error);
    let mut source = error.source();
    while let Some(cause) = source {
        let text = describe(cause);
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects(pem: &str) -> Vec<&str> {
        pem.lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains("CN="))
            .collect()
    }

    #[test]
    fn every_certificate_of_the_rds_bundle_follows_its_subject_line() {
        let certs = RDS_CA_BUNDLE.matches("-----BEGIN CERTIFICATE-----").count();
        assert_eq!(subjects(RDS_CA_BUNDLE).len(), certs);
        let mut expect_cert = false;
        for line in RDS_CA_BUNDLE.lines() {
            if line.starts_with("# ") && line.contains("CN=") {
                assert!(!expect_cert, "two subject lines in a row: {line}");
                expect_cert = true;
            } else if line.starts_with("-----BEGIN CERTIFICATE-----") {
                assert!(expect_cert, "a certificate without its subject line");
                expect_cert = false;
            }
        }
    }

    #[test]
    fn a_region_trusts_its_own_rds_roots_and_the_proxy_roots_only() {
        let public = [
            "Amazon Root CA 1",
            "Amazon Root CA 2",
            "Amazon Root CA 3",
            "Amazon Root CA 4",
            "Starfield Services Root Certificate Authority - G2",
        ];
        for region in ["us-east-1", "eu-west-1", "ap-southeast-2"] {
            let pem = rds_roots(RDS_CA_BUNDLE, Some(region));
            let kept = subjects(&pem);
            let certs = X509::stack_from_pem(pem.as_bytes()).unwrap();
            assert_eq!(certs.len(), kept.len(), "{region}");
            for name in public {
                assert!(
                    kept.iter().any(|s| s.contains(&format!("CN={name},"))),
                    "{region}: {name}"
                );
            }
            let regional: Vec<_> = kept
                .iter()
                .filter(|s| s.contains("CN=Amazon RDS "))
                .collect();
            assert!(regional.len() >= 3, "{region}: {regional:?}");
            assert!(
                regional.iter().all(|s| s.contains(&format!(" {region} "))),
                "{region}: {regional:?}"
            );
            // Every root of the region, none left out.
            let all = subjects(RDS_CA_BUNDLE)
                .into_iter()
                .filter(|s| s.contains(&format!("CN=Amazon RDS {region} ")))
                .count();
            assert!(regional.len() >= all);
            assert!(
                kept.len() < subjects(RDS_CA_BUNDLE).len() / 4,
                "{region}: {} roots",
                kept.len()
            );
        }
    }

    #[test]
    fn without_a_region_the_whole_rds_bundle_is_trusted() {
        assert_eq!(rds_roots(RDS_CA_BUNDLE, None), RDS_CA_BUNDLE);
        assert_eq!(rds_roots(RDS_CA_BUNDLE, Some(" ")), RDS_CA_BUNDLE);
        // An unknown region: the proxy's roots only, still a usable bundle.
        let pem = rds_roots(RDS_CA_BUNDLE, Some("xx-nowhere-9"));
        assert_eq!(X509::stack_from_pem(pem.as_bytes()).unwrap().len(), 5);
    }

    #[test]
    fn the_connector_builds_for_every_root_choice() {
        for roots in [Roots::System, Roots::RdsOnly] {
            for mode in [SslMode::Require, SslMode::VerifyFull] {
                let config = TlsConfig {
                    mode,
                    ca_file: None,
                    roots,
                };
                assert!(tls_connector(&config).is_ok(), "{roots:?} {mode:?}");
            }
        }
        let missing = TlsConfig {
            mode: SslMode::VerifyFull,
            ca_file: Some("/nonexistent/ca.pem".into()),
            roots: Roots::RdsOnly,
        };
        let refused = tls_connector(&missing).err().unwrap_or_default();
        assert!(refused.contains("DB_CA_FILE"), "{refused}");
    }
}

#[cfg(test)]
mod constraint_tests {
    use super::constraint_field;

    #[test]
    fn a_constraint_name_gives_its_field_without_the_tenant() {
        let f = |t, c| constraint_field(t, c);
        assert_eq!(
            f("users", "users_tenant_email_key").as_deref(),
            Some("email")
        );
        assert_eq!(
            f("projects", "projects_tenant_id_name_key").as_deref(),
            Some("name")
        );
        assert_eq!(
            f("projects", "projects_tenant_id_owner_user_id_fkey").as_deref(),
            Some("owner_user_id")
        );
        assert_eq!(f("users", "users_email_check").as_deref(), Some("email"));
        for none in [
            ("users", "users_pkey"),
            ("tenant_rate", "tenant_rate_tenant_id_fkey"),
            ("users", "users_tenant_id_check"),
            ("users", "some_other_name"),
        ] {
            assert_eq!(f(none.0, none.1), None, "{none:?}");
        }
    }
}
