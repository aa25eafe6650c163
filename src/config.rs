//! Configuration, read once from the environment at cold start.
//!
//! Everything the service needs is a typed field here; a bad value stops the
//! process at start-up with a message naming the variable, rather than
//! surfacing later as a confusing request failure.

use std::time::Duration;

use jsonwebtoken::Algorithm;

pub const DEFAULT_TENANT_CLAIM: &str = "custom:tenant_id";
/// HS256 keys shorter than this are refused: a guessable secret lets anyone
/// mint tokens for any tenant.
pub const MIN_HS256_SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// How bearer tokens are verified.
#[derive(Clone)]
pub struct TokenConfig {
    /// Accepted `alg` values; anything else is refused before any key is used.
    pub algorithms: Vec<Algorithm>,
    pub hs256_secret: Option<Vec<u8>>,
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub tenant_claim: String,
    pub leeway_seconds: u64,
    /// Least time between two on-demand JWKS refetches (unknown `kid`).
    pub jwks_refetch: Duration,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("algorithms", &self.algorithms)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("jwks_refetch", &self.jwks_refetch)
            .finish()
    }
}

/// Where the application role's credentials come from.
#[derive(Clone, Debug)]
pub enum DbSource {
    /// `DATABASE_URL`: fixed credentials (local use, tests).
    Url(tokio_postgres::Config),
    /// `DB_SECRET_ARN`: fetched from Secrets Manager at cold start, under an
    /// assumed role, and again when the database rejects the password.
    Secret(SecretConfig),
}

/// How to reach Secrets Manager, and what completes the secret.
#[derive(Clone, Debug)]
pub struct SecretConfig {
    pub secret_id: String,
    /// Role to assume for reading the secret; without it the function's own
    /// credentials are used.
    pub role_arn: Option<String>,
    pub session_name: String,
    /// `DB_HOST` (the RDS Proxy endpoint), `DB_PORT`, `DB_NAME`: override or
    /// complete the secret (RDS-managed master secrets hold only username
    /// and password).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub aws: AwsConfig,
    /// Least time between two password-triggered refetches.
    pub refresh_interval: Duration,
}

/// AWS SDK settings taken from the same lookup as everything else, so
/// tests can point one instance at moto without touching the process
/// environment. Unset fields fall back to the SDK's own defaults.
#[derive(Clone, Default)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// `DB_SSLMODE`, as libpq names the modes we support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// Encrypted, certificate not checked.
    Require,
    /// Encrypted, chain and host name checked (system roots plus `DB_CA_FILE`).
    VerifyFull,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub mode: SslMode,
    pub ca_file: Option<std::path::PathBuf>,
}

impl TlsConfig {
    pub const DISABLED: TlsConfig = TlsConfig {
        mode: SslMode::Disable,
        ca_file: None,
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
        }
    }
}

#[derive(Clone)]
pub struct Config {
    pub token: TokenConfig,
    pub db: DbConfig,
    pub metrics: crate::telemetry::Metrics,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads configuration through `get`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let token = token_config(&get)?;
        Ok(Config {
            token,
            db: db_config(&get)?,
            metrics: crate::telemetry::Metrics::from_lookup(get),
        })
    }
}

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
        (None, Some(secret_id)) => {
            let port = get("DB_PORT")
                .map(|p| p.trim().parse::<u16>())
                .transpose()
                .map_err(|_| ConfigError("DB_PORT must be a port number".into()))?;
            let function = get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "local".into());
            let secret = SecretConfig {
                secret_id,
                role_arn: get("DB_SECRET_ROLE_ARN"),
                session_name: session_name(&function),
                host: get("DB_HOST"),
                port,
                dbname: get("DB_NAME"),
                aws: AwsConfig {
                    region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
                    endpoint_url: get("AWS_ENDPOINT_URL"),
                    access_key_id: get("AWS_ACCESS_KEY_ID"),
                    secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
                    session_token: get("AWS_SESSION_TOKEN"),
                },
                refresh_interval: Duration::from_secs(bounded(
                    get,
                    "DB_SECRET_REFRESH_SECONDS",
                    60,
                    1..=3_600,
                )?),
            };
            (DbSource::Secret(secret), SslMode::VerifyFull)
        }
        (None, None) => {
            return Err(ConfigError(
                "set DATABASE_URL (postgres://app_user:password@host:port/db) or DB_SECRET_ARN"
                    .into(),
            ));
        }
    };
    Ok(DbConfig {
        source,
        tls: TlsConfig {
            mode: explicit_mode.unwrap_or(default_mode),
            ca_file: get("DB_CA_FILE").map(Into::into),
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
    })
}

/// An STS session name that names the function: `[\w+=,.@-]`, 2 to 64 chars.
fn session_name(function: &str) -> String {
    let clean: String = format!("tenant-users-{function}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    clean
}

pub fn token_config(get: &impl Fn(&str) -> Option<String>) -> Result<TokenConfig, ConfigError> {
    let hs256_secret = get("JWT_HS256_SECRET").map(String::into_bytes);
    if let Some(secret) = &hs256_secret
        && secret.len() < MIN_HS256_SECRET_LEN
    {
        return Err(ConfigError(format!(
            "JWT_HS256_SECRET must be at least {MIN_HS256_SECRET_LEN} bytes"
        )));
    }
    let jwks_url = get("JWT_JWKS_URL");
    let algorithms = match get("JWT_ALGORITHMS") {
        Some(list) => list
            .split(',')
            .map(|name| parse_algorithm(name.trim()))
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            let mut algs = Vec::new();
            if hs256_secret.is_some() {
                algs.push(Algorithm::HS256);
            }
            if jwks_url.is_some() {
                algs.push(Algorithm::RS256);
            }
            algs
        }
    };
    if algorithms.is_empty() {
        return Err(ConfigError(
            "no way to verify tokens: set JWT_HS256_SECRET and/or JWT_JWKS_URL".into(),
        ));
    }
    for alg in &algorithms {
        match alg {
            Algorithm::HS256 if hs256_secret.is_none() => {
                return Err(ConfigError(
                    "JWT_ALGORITHMS names HS256 but JWT_HS256_SECRET is not set".into(),
                ));
            }
            Algorithm::RS256 | Algorithm::ES256 if jwks_url.is_none() => {
                return Err(ConfigError(format!(
                    "JWT_ALGORITHMS names {alg:?} but JWT_JWKS_URL is not set"
                )));
            }
            _ => {}
        }
    }
    let audience = get("JWT_AUDIENCE")
        .map(|list| {
            list.split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(TokenConfig {
        algorithms,
        hs256_secret,
        jwks_url,
        issuer: get("JWT_ISSUER"),
        audience,
        tenant_claim: get("TENANT_CLAIM").unwrap_or_else(|| DEFAULT_TENANT_CLAIM.to_owned()),
        leeway_seconds: number(get, "JWT_LEEWAY_SECONDS", 30)?,
        jwks_refetch: Duration::from_secs(number(get, "JWT_JWKS_REFETCH_SECONDS", 300)?),
    })
}

fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(ConfigError(format!(
            "JWT_ALGORITHMS: unsupported algorithm {other:?} (supported: HS256, RS256, ES256)"
        ))),
    }
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: u64,
) -> Result<u64, ConfigError> {
    match get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{key} must be a whole number, got {v:?}"))),
    }
}

/// A whole number within `range`; the message names the variable.
fn bounded(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let n = number(get, key, default)?;
    if !range.contains(&n) {
        return Err(ConfigError(format!(
            "{key} must be from {} to {}, got {n}",
            range.start(),
            range.end()
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const URL: (&str, &str) = ("DATABASE_URL", "postgres://app@127.0.0.1:5432/app");
    const SECRET: (&str, &str) = ("JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn defaults_follow_the_configured_key_sources() {
        let c = config(&[URL, SECRET]).unwrap();
        assert_eq!(c.token.algorithms, vec![Algorithm::HS256]);
        assert_eq!(c.token.tenant_claim, "custom:tenant_id");
        let c = config(&[URL, ("JWT_JWKS_URL", "http://127.0.0.1:1/jwks.json")]).unwrap();
        assert_eq!(c.token.algorithms, vec![Algorithm::RS256]);
    }

    #[test]
    fn refuses_what_cannot_be_verified_safely() {
        assert!(config(&[URL]).is_err(), "no key source");
        assert!(
            config(&[URL, ("JWT_HS256_SECRET", "short")]).is_err(),
            "weak secret"
        );
        assert!(
            config(&[URL, SECRET, ("JWT_ALGORITHMS", "RS256")]).is_err(),
            "RS256 without JWKS"
        );
        assert!(
            config(&[URL, SECRET, ("JWT_ALGORITHMS", "none")]).is_err(),
            "alg none"
        );
        assert!(
            config(&[SECRET]).is_err(),
            "no DATABASE_URL nor DB_SECRET_ARN"
        );
        assert!(config(&[URL, SECRET, ("DB_SSLMODE", "prefer")]).is_err());
        assert!(config(&[("DATABASE_URL", "not a url"), SECRET]).is_err());
    }

    #[test]
    fn a_secret_source_defaults_to_verify_full_and_names_the_function() {
        let c = config(&[
            SECRET,
            (
                "DB_SECRET_ARN",
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
            ),
            ("DB_PORT", "6432"),
            ("AWS_LAMBDA_FUNCTION_NAME", "stack-TenantUsers/Fn x"),
        ])
        .unwrap();
        assert_eq!(c.db.tls.mode, SslMode::VerifyFull);
        let DbSource::Secret(s) = c.db.source else {
            panic!("secret source")
        };
        assert_eq!(s.port, Some(6432));
        assert_eq!(s.session_name, "tenant-users-stack-TenantUsers-Fn-x");
        assert_eq!(s.refresh_interval, Duration::from_secs(60));
        let c = config(&[URL, SECRET]).unwrap();
        assert_eq!(c.db.tls.mode, SslMode::Disable, "a plain URL stays plain");
        let c = config(&[("DATABASE_URL", "postgres://a@h/d?sslmode=require"), SECRET]).unwrap();
        assert_eq!(c.db.tls.mode, SslMode::Require);
    }

    const ARN: (&str, &str) = (
        "DB_SECRET_ARN",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
    );

    fn refused(vars: &[(&str, &str)]) -> String {
        match config(vars) {
            Ok(_) => panic!("{vars:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn zero_does_not_switch_a_database_guard_off() {
        for (key, source) in [
            ("DB_STATEMENT_TIMEOUT_MS", URL),
            ("DB_CONNECT_TIMEOUT_MS", URL),
            ("DB_SECRET_REFRESH_SECONDS", ARN),
        ] {
            let message = refused(&[source, SECRET, (key, "0")]);
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
            ("DB_STATEMENT_TIMEOUT_MS", "-5", URL),
        ] {
            let message = refused(&[source, SECRET, (key, value)]);
            assert!(message.contains(key), "{message}");
        }
        let c = config(&[
            URL,
            SECRET,
            ("DB_STATEMENT_TIMEOUT_MS", "900000"),
            ("DB_CONNECT_TIMEOUT_MS", "1"),
        ])
        .unwrap();
        assert_eq!(c.db.statement_timeout, Duration::from_secs(900));
        assert_eq!(c.db.connect_timeout, Duration::from_millis(1));
        let c = config(&[ARN, SECRET, ("DB_SECRET_REFRESH_SECONDS", "1")]).unwrap();
        let DbSource::Secret(s) = c.db.source else {
            panic!("secret source")
        };
        assert_eq!(s.refresh_interval, Duration::from_secs(1));
    }

    #[test]
    fn a_url_and_a_secret_together_are_refused() {
        let message = refused(&[URL, ARN, SECRET]);
        assert!(
            message.contains("DATABASE_URL") && message.contains("DB_SECRET_ARN"),
            "{message}"
        );
    }

    #[test]
    fn secret_is_not_printed() {
        let c = config(&[URL, SECRET]).unwrap();
        assert!(!format!("{:?}", c.token).contains("0123456789abcdef"));
        let aws = AwsConfig {
            secret_access_key: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{aws:?}").contains("hunter2"));
    }
}
