//! The one database connection, and the tenant scope every statement runs in.
//!
//! This is where the tenant is set. [`Database::run`] is the only way request
//! code can execute SQL: it takes the verified [`TenantContext`], binds its
//! tenant as `$1` of the statement, and wraps the statement in
//!
//! ```sql
//! BEGIN;
//! SELECT set_config('app.current_tenant', $tenant, true),   -- SET LOCAL
//!        set_config('statement_timeout', $ms, true);
//! <the statement, which also says WHERE tenant_id = $1>;
//! COMMIT;   -- becomes ROLLBACK if anything above failed
//! ```
//!
//! All four are sent at once as unnamed statements (one round trip, nothing
//! that would pin a pooled RDS Proxy connection), and nothing outlives the
//! transaction: the next tenant on this connection starts clean.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, error::SqlState};

use crate::audit;
use crate::config::DbConfig;
use crate::tenant::TenantContext;

const SET_TENANT_SCOPE: &str = "SELECT set_config('app.current_tenant', $1, true), \
                                set_config('statement_timeout', $2, true)";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached, or the connection broke.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] tokio_postgres::Error),
    /// The connected role or schema fails the isolation self-audit.
    #[error("deployment is misconfigured: {0}")]
    Misconfigured(String),
    /// The statement ran into `statement_timeout`.
    #[error("statement timed out")]
    Timeout(#[source] tokio_postgres::Error),
    #[error("database error: {0}")]
    Query(#[source] tokio_postgres::Error),
}

impl DbError {
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Query(e) | DbError::Timeout(e) | DbError::Unavailable(e) => e.code(),
            DbError::Misconfigured(_) => None,
        }
    }

    fn classify(error: tokio_postgres::Error) -> Self {
        let code = error.code().map(SqlState::code).unwrap_or_default();
        if error.is_closed() || code.starts_with("08") || code.starts_with("57P") {
            DbError::Unavailable(error)
        } else if code == SqlState::QUERY_CANCELED.code() {
            DbError::Timeout(error)
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

/// The execution environment's single connection, opened lazily (or warmed
/// at cold start) and reopened when found closed.
pub struct Database {
    config: DbConfig,
    statement_timeout_ms: String,
    conn: Mutex<Option<Client>>,
}

impl Database {
    pub fn new(config: DbConfig) -> Self {
        Self {
            statement_timeout_ms: config.statement_timeout.as_millis().to_string(),
            config,
            conn: Mutex::new(None),
        }
    }

    /// Opens the connection ahead of the first request (cold start). A
    /// failure is logged, not fatal: requests get 503 until it recovers.
    pub async fn warm(&self) {
        let mut slot = self.conn.lock().await;
        if let Err(error) = self.ensure_open(&mut slot).await {
            tracing::error!(error = %error_chain(&error), "database not ready at start-up");
        }
    }

    /// Runs `query` inside a fresh transaction scoped to the caller's tenant.
    pub async fn run(
        &self,
        caller: &TenantContext,
        query: TenantQuery<'_>,
    ) -> Result<Vec<Row>, DbError> {
        let tenant = caller.tenant().as_str();
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            Vec::with_capacity(query.params.len() + 1);
        params.push((&tenant, Type::TEXT));
        params.extend(query.params.iter().cloned());

        let mut slot = self.conn.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.ensure_open(&mut slot).await?;
            match self.scoped(client, tenant, query.sql, &params).await {
                Ok(rows) => return Ok(rows),
                Err(error) => {
                    let error = DbError::classify(error);
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
    /// reaches COMMIT, which PostgreSQL turns into ROLLBACK.
    async fn scoped(
        &self,
        client: &Client,
        tenant: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let timeout = self.statement_timeout_ms.as_str();
        let scope_params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&tenant, Type::TEXT), (&timeout, Type::TEXT)];
        let (begin, scope, rows, commit) = tokio::join!(
            client.execute_typed("BEGIN", &[]),
            client.execute_typed(SET_TENANT_SCOPE, &scope_params),
            client.query_typed(sql, params),
            client.execute_typed("COMMIT", &[]),
        );
        begin?;
        scope?;
        let rows = rows?;
        commit?;
        Ok(rows)
    }

    async fn ensure_open<'s>(&self, slot: &'s mut Option<Client>) -> Result<&'s Client, DbError> {
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            *slot = Some(self.open().await?);
        }
        slot.as_ref()
            .ok_or_else(|| DbError::Misconfigured("connection slot empty after open".into()))
    }

    async fn open(&self) -> Result<Client, DbError> {
        let (client, connection) = self
            .config
            .pg
            .connect(NoTls)
            .await
            .map_err(DbError::Unavailable)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "database connection closed");
            }
        });
        let findings = audit::check(&client).await.map_err(DbError::classify)?;
        if !findings.is_empty() {
            for finding in &findings {
                tracing::error!(%finding, "isolation self-audit failed; refusing to serve");
            }
            return Err(DbError::Misconfigured(findings.join("; ")));
        }
        tracing::info!("database connection open; isolation self-audit passed");
        Ok(client)
    }

    /// Diagnostics: `app.current_tenant` and `statement_timeout` as the
    /// shared connection's *session* sees them between transactions. Reads
    /// settings only, no table; tests use it to show that no tenant state
    /// outlives a transaction.
    pub async fn session_settings(&self) -> Result<(String, String), DbError> {
        let mut slot = self.conn.lock().await;
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
}

/// Formats an error with its sources, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
