//! Schema migrations and the application role, applied with an admin
//! connection (`DATABASE_ADMIN_URL`), never by the serving function.
//!
//! The SQL lives in `migrations/` and is embedded at build time (refinery).
//! The application role is managed here rather than in a migration because
//! its name and password are deployment settings: it gets LOGIN, no
//! superuser, no BYPASSRLS, and only the DML it needs on tenant tables.

use tokio_postgres::Client;

use crate::config::{SslMode, TlsConfig};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Tables that hold tenant rows; the application role may use only these.
pub const TENANT_TABLES: &[&str] = &["users"];
pub const DEFAULT_APP_USER: &str = "tenant_app";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect with DATABASE_ADMIN_URL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    #[error("managing the application role failed: {0}")]
    Role(#[source] tokio_postgres::Error),
    #[error("{0}")]
    Refused(String),
}

/// The login role the service connects as.
pub struct AppRole {
    pub name: String,
    pub password: Option<String>,
}

/// Applies pending migrations, then creates or updates the application role.
pub async fn run(
    admin: &tokio_postgres::Config,
    tls: &TlsConfig,
    role: &AppRole,
) -> Result<(), MigrateError> {
    // DB_SSLMODE decides; without it, the URL's own sslmode=require is
    // honoured (encrypted, unverified) and anything else means plain.
    let url_requires = admin.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let tls = match tls.mode {
        SslMode::Disable if url_requires => &TlsConfig {
            mode: SslMode::Require,
            ca_file: tls.ca_file.clone(),
        },
        _ => tls,
    };
    let connector = crate::db::tls_connector(tls).map_err(MigrateError::Refused)?;
    let mut admin = admin.clone();
    admin.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    let (mut client, connection) = admin
        .connect(connector)
        .await
        .map_err(MigrateError::Connect)?;
    let task = tokio::spawn(connection);
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied");
    }
    ensure_app_role(&client, role).await?;
    drop(client);
    let _ = task.await;
    Ok(())
}

async fn ensure_app_role(client: &Client, role: &AppRole) -> Result<(), MigrateError> {
    let admin: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(MigrateError::Role)?
        .get(0);
    if role.name == admin {
        return Err(MigrateError::Refused(format!(
            "the application role must not be the admin/owner role ({admin}); set APP_DB_USER to another name"
        )));
    }
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role.name])
        .await
        .map_err(MigrateError::Role)?
        .is_some();
    // Identifiers and the password are quoted by the server (format %I/%L),
    // never spliced by us.
    let verb = if exists { "ALTER" } else { "CREATE" };
    let mut statements = vec![client
        .query_one(
            &format!(
                "SELECT format('{verb} ROLE %I WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION' \
                 || CASE WHEN $2::text IS NULL THEN '' ELSE format(' PASSWORD %L', $2::text) END, $1::text)"
            ),
            &[&role.name, &role.password],
        )
        .await
        .map_err(MigrateError::Role)?
        .get::<_, String>(0)];
    for sql in [
        "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), $1::text)",
        "SELECT format('GRANT USAGE ON SCHEMA public TO %I', $1::text)",
    ] {
        statements.push(
            client
                .query_one(sql, &[&role.name])
                .await
                .map_err(MigrateError::Role)?
                .get(0),
        );
    }
    statements.push(
        client
            .query_one(
                "SELECT format('GRANT EXECUTE ON FUNCTION public.app_set_tenant(text, integer) TO %I', $1::text)",
                &[&role.name],
            )
            .await
            .map_err(MigrateError::Role)?
            .get(0),
    );
    for table in TENANT_TABLES {
        statements.push(
            client
                .query_one(
                    "SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.%I TO %I', $2::text, $1::text)",
                    &[&role.name, table],
                )
                .await
                .map_err(MigrateError::Role)?
                .get(0),
        );
    }
    for sql in statements {
        client
            .batch_execute(&sql)
            .await
            .map_err(MigrateError::Role)?;
    }
    tracing::info!(role = %role.name, created = !exists, "application role ready");
    Ok(())
}
