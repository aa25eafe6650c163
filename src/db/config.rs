//! The database settings (`DATABASE_URL` or `DB_SECRET_ARN`, `DB_SSLMODE`,
//! `DB_CA_FILE`, the timeouts, the pool and the audit interval), read once
//! at cold start. Zero never switches a guard off, and nothing may wait
//! longer than a Lambda invocation can last; a bad value stops the process
//! at start-up with a message naming the variable.

use std::time::Duration;

use crate::clock::Clock;
use crate::config::{ConfigError, bounded, number};
use crate::secret::config::{SecretConfig, secret_config};

/// Where the application role's credentials come from.
#[derive(Clone, Debug)]
pub enum DbSource {
    /// `DATABASE_URL`: fixed credentials (local use, tests).
    Url(tokio_postgres::Config),
    /// `DB_SECRET_ARN`: fetched from Secrets Manager at cold start, under an
    /// assumed role, and again when the database rejects the password.
    Secret(SecretConfig),
}

/// `DB_SSLMODE`, as libpq names the modes we support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// Encrypted, certificate not checked.
    Require,
    /// Encrypted, chain and host name checked (against [`Roots`]).
    VerifyFull,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub mode: SslMode,
    pub ca_file: Option<std::path::PathBuf>,
    /// Which roots `verify-full` trusts besides `ca_file`.
    pub roots: Roots,
}

/// The trust anchors of a verified database connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The system's store (plus `DB_CA_FILE`): a `DATABASE_URL`'s server.
    System,
    /// Only AWS's RDS and RDS Proxy CAs shipped in the binary
    /// (`certs/rds-ca-bundle.pem`; of the RDS roots, those of the
    /// function's region, `AWS_REGION`: `db::rds_roots`), or only
    /// `DB_CA_FILE` when it is set: no public CA can vouch for a database.
    /// The API function's with `DB_SECRET_ARN`, and the schema function's.
    RdsOnly,
}

impl TlsConfig {
    pub const DISABLED: TlsConfig = TlsConfig {
        mode: SslMode::Disable,
        ca_file: None,
        roots: Roots::System,
    };

    /// `DB_SSLMODE` (default `disable`) and `DB_CA_FILE`, for the admin
    /// connection of `migrate`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Ok(TlsConfig {
            mode: get("DB_SSLMODE")
                .map(|m| parse_ssl_mode(&m))
                .transpose()?
                .unwrap_or(SslMode::Disable),
            ca_file: get("DB_CA_FILE").map(Into::into),
            roots: Roots::System,
        })
    }
}

fn parse_ssl_mode(raw: &str) -> Result<SslMode, ConfigError> {
    match raw.trim() {
        "disable" => Ok(SslMode::Disable),
        "require" => Ok(SslMode::Require),
        "verify-full" => Ok(SslMode::VerifyFull),
        other => Err(ConfigError(format!(
            "DB_SSLMODE must be disable, require or verify-full, got {other:?}"
        ))),
    }
}

/// How the application role reaches the database.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub source: DbSource,
    pub tls: TlsConfig,
    pub connect_timeout: Duration,
    /// Bounds every transaction (set in the same scope as the tenant).
    pub statement_timeout: Duration,
    /// Connections held (1 in Lambda: one request at a time).
    pub pool_size: usize,
    /// The most tokens of a tenant's rate this environment leases at once
    /// (`TENANT_LEASE_MAX`; 1: the bucket is written on every request).
    pub lease_max: u32,
    /// How long a connection serves on one isolation self-audit before it
    /// is audited again (`DB_AUDIT_INTERVAL_SECONDS`).
    pub audit_interval: Duration,
    /// Whose role the connection's self-audit judges (the API's, or the
    /// control plane's).
    pub audit_profile: crate::audit::Profile,
    /// The time the back-off gate and the audit schedule keep: the
    /// system's, or a test's manual clock.
    pub clock: Clock,
}

impl DbConfig {
    /// Fixed credentials, no TLS, default timeouts: local use and tests.
    pub fn plain(pg: tokio_postgres::Config) -> Self {
        Self {
            source: DbSource::Url(pg),
            tls: TlsConfig::DISABLED,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            pool_size: 1,
            lease_max: DEFAULT_LEASE_MAX,
            audit_interval: DEFAULT_AUDIT_INTERVAL,
            audit_profile: crate::audit::Profile::Api,
            clock: Clock::system(),
        }
    }
}

/// Leases of up to 16 tokens: a hot tenant's bucket row is written a few
/// times a second per environment, not once per request.
const DEFAULT_LEASE_MAX: u32 = 16;

/// A schema change made while serving is caught within this by default.
const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(300);

/// Lambda's longest run (15 minutes): a database wait beyond it can never
/// end inside an invocation.
const LAMBDA_MAX_MS: u64 = 15 * 60 * 1000;

pub fn db_config(get: &impl Fn(&str) -> Option<String>) -> Result<DbConfig, ConfigError> {
    // Zero would switch these guards off (no timeout, no rate limit), so it
    // is refused rather than taken literally.
    let connect_timeout = Duration::from_millis(bounded(
        get,
        "DB_CONNECT_TIMEOUT_MS",
        5_000,
        1..=LAMBDA_MAX_MS,
    )?);
    let statement_timeout = Duration::from_millis(bounded(
        get,
        "DB_STATEMENT_TIMEOUT_MS",
        5_000,
        1..=LAMBDA_MAX_MS,
    )?);
    // Zero would audit before every request (a round trip each); more than
    // an hour leaves a schema change unseen for too long.
    let audit_interval = Duration::from_secs(bounded(
        get,
        "DB_AUDIT_INTERVAL_SECONDS",
        DEFAULT_AUDIT_INTERVAL.as_secs(),
        1..=3_600,
    )?);
    let explicit_mode = get("DB_SSLMODE").map(|m| parse_ssl_mode(&m)).transpose()?;
    let (source, default_mode) = match (get("DATABASE_URL"), get("DB_SECRET_ARN")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(
                "set either DATABASE_URL or DB_SECRET_ARN, not both: it would be unclear which credentials the function uses".into(),
            ));
        }
        (Some(url), None) => {
            let pg: tokio_postgres::Config = url.parse().map_err(|e| {
                ConfigError(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))
            })?;
            // The URL's own sslmode=require is honoured; anything stricter
            // is DB_SSLMODE's job (tokio-postgres does not parse verify-full).
            let mode = match pg.get_ssl_mode() {
                tokio_postgres::config::SslMode::Require => SslMode::Require,
                _ => SslMode::Disable,
            };
            (DbSource::Url(pg), mode)
        }
        (None, Some(secret_id)) => (
            DbSource::Secret(secret_config(get, secret_id)?),
            SslMode::VerifyFull,
        ),
        (None, None) => {
            return Err(ConfigError(
                "set DATABASE_URL (postgres://app_user:password@host:port/db) or DB_SECRET_ARN"
                    .into(),
            ));
        }
    };
    // A database reached through a secret is AWS's (RDS, RDS Proxy): only
    // AWS's database CAs can vouch for it, never a public CA of the system
    // store, which is then not read at all (OpenSSL parsing it cost 14 ms
    // of each cold start).
    let roots = match source {
        DbSource::Secret(_) => Roots::RdsOnly,
        DbSource::Url(_) => Roots::System,
    };
    Ok(DbConfig {
        source,
        tls: TlsConfig {
            mode: explicit_mode.unwrap_or(default_mode),
            ca_file: get("DB_CA_FILE").map(Into::into),
            roots,
        },
        connect_timeout,
        statement_timeout,
        pool_size: match number(get, "DB_POOL_SIZE", 1)? {
            n @ 1..=64 => n as usize,
            n => {
                return Err(ConfigError(format!(
                    "DB_POOL_SIZE must be 1 to 64, got {n}"
                )));
            }
        },
        lease_max: bounded(get, "TENANT_LEASE_MAX", DEFAULT_LEASE_MAX.into(), 1..=1000)? as u32,
        audit_interval,
        audit_profile: crate::audit::Profile::Api,
        clock: Clock::system(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The database settings `vars` give, blank values unset (as
    /// `app::Config::from_lookup` reads them).
    fn config(vars: &[(&str, &str)]) -> Result<DbConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        db_config(&|k: &str| map.get(k).cloned().filter(|v| !v.trim().is_empty()))
    }

    const URL: (&str, &str) = ("DATABASE_URL", "postgres://app@127.0.0.1:5432/app");
    const ARN: (&str, &str) = (
        "DB_SECRET_ARN",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
    );

    fn refused(vars: &[(&str, &str)]) -> String {
        match config(vars) {
            Ok(_) => panic!("accepted: {vars:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn refuses_settings_that_cannot_reach_the_database() {
        assert!(config(&[]).is_err(), "no DATABASE_URL nor DB_SECRET_ARN");
        assert!(config(&[URL, ("DB_SSLMODE", "prefer")]).is_err());
        assert!(config(&[("DATABASE_URL", "not a url")]).is_err());
    }

    #[test]
    fn a_secret_source_defaults_to_verify_full_and_names_the_function() {
        let c = config(&[
            (
                "DB_SECRET_ARN",
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
            ),
            ("DB_PORT", "6432"),
            ("AWS_LAMBDA_FUNCTION_NAME", "stack-TenantUsers/Fn x"),
        ])
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        let DbSource::Secret(s) = c.source else {
            panic!("secret source")
        };
        assert_eq!(s.port, Some(6432));
        assert_eq!(s.session_name, "tenant-users-stack-TenantUsers-Fn-x");
        assert_eq!(s.refresh_interval, Duration::from_secs(60));
        let c = config(&[URL]).unwrap();
        assert_eq!(c.tls.mode, SslMode::Disable, "a plain URL stays plain");
        let c = config(&[("DATABASE_URL", "postgres://a@h/d?sslmode=require")]).unwrap();
        assert_eq!(c.tls.mode, SslMode::Require);
    }

    #[test]
    fn zero_does_not_switch_a_database_guard_off() {
        for (key, source) in [
            ("DB_STATEMENT_TIMEOUT_MS", URL),
            ("DB_CONNECT_TIMEOUT_MS", URL),
            ("DB_SECRET_REFRESH_SECONDS", ARN),
            ("DB_AUDIT_INTERVAL_SECONDS", URL),
        ] {
            let message = refused(&[source, (key, "0")]);
            assert!(message.contains(key), "{message}");
        }
    }

    #[test]
    fn absurd_database_timeouts_are_refused() {
        // Longer than a Lambda invocation can last.
        for (key, value, source) in [
            ("DB_STATEMENT_TIMEOUT_MS", "900001", URL),
            ("DB_CONNECT_TIMEOUT_MS", "900001", URL),
            ("DB_SECRET_REFRESH_SECONDS", "3601", ARN),
            ("DB_AUDIT_INTERVAL_SECONDS", "3601", URL),
            ("DB_STATEMENT_TIMEOUT_MS", "-5", URL),
        ] {
            let message = refused(&[source, (key, value)]);
            assert!(message.contains(key), "{message}");
        }
        let c = config(&[
            URL,
            ("DB_STATEMENT_TIMEOUT_MS", "900000"),
            ("DB_CONNECT_TIMEOUT_MS", "1"),
        ])
        .unwrap();
        assert_eq!(c.statement_timeout, Duration::from_secs(900));
        assert_eq!(c.connect_timeout, Duration::from_millis(1));
        assert_eq!(c.audit_interval, Duration::from_secs(300), "default");
        let c = config(&[URL, ("DB_AUDIT_INTERVAL_SECONDS", "1")]).unwrap();
        assert_eq!(c.audit_interval, Duration::from_secs(1));
        let c = config(&[ARN, ("DB_SECRET_REFRESH_SECONDS", "1")]).unwrap();
        let DbSource::Secret(s) = c.source else {
            panic!("secret source")
        };
        assert_eq!(s.refresh_interval, Duration::from_secs(1));
    }

    #[test]
    fn a_url_and_a_secret_together_are_refused() {
        let message = refused(&[URL, ARN]);
        assert!(
            message.contains("DATABASE_URL") && message.contains("DB_SECRET_ARN"),
            "{message}"
        );
    }
}
