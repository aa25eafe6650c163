//! Configuration, read once from the environment at cold start.
//!
//! Everything the service needs is a typed field here; a bad value stops the
//! process at start-up with a message naming the variable, rather than
//! surfacing later as a confusing request failure.

use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::clock::Clock;

pub const DEFAULT_TENANT_CLAIM: &str = "custom:tenant_id";
/// HS256 keys shorter than this are refused: a guessable secret lets anyone
/// mint tokens for any tenant.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// The HS256 secret of `events/env.json`. It is public (its fixture tokens
/// are valid until 2099), so it is refused by value unless
/// `ALLOW_TEST_FIXTURES=1`, which only `make test` sets.
pub const FIXTURE_HS256_SECRET: &str = "test-only-fixture-secret-do-not-deploy-0123456789";
/// More clock skew than this is no longer skew but a longer token lifetime.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

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
    /// `JWT_JWKS`: the key set itself, for a function that cannot reach the
    /// IdP (private subnets, no NAT). Used as is, never refetched.
    pub jwks_inline: Option<String>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub tenant_claim: String,
    pub leeway_seconds: u64,
    /// Cognito's `token_use` the token must carry, when set.
    pub token_use: Option<TokenUse>,
    /// Least time between two JWKS refetches that are not on schedule
    /// (unknown `kid`) or that follow a failed one.
    pub jwks_refetch: Duration,
    /// Keys older than this are refetched before use; stale keys survive a
    /// failed refetch until twice this age, never longer.
    pub jwks_max_age: Duration,
    /// The time the JWKS schedule keeps (key age, refetch spacing): the
    /// system's, or a test's manual clock. Token `exp`/`nbf` are always
    /// judged against the system's wall clock.
    pub clock: Clock,
}

/// `JWT_TOKEN_USE`: which kind of Cognito token the API accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenUse {
    Id,
    Access,
}

impl TokenUse {
    /// The claim value Cognito writes.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenUse::Id => "id",
            TokenUse::Access => "access",
        }
    }
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
            .field("jwks_inline", &self.jwks_inline.as_ref().map(|j| j.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("token_use", &self.token_use)
            .field("jwks_refetch", &self.jwks_refetch)
            .field("jwks_max_age", &self.jwks_max_age)
            .field("clock", &self.clock)
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

impl AwsConfig {
    /// The standard AWS variables, through the same lookup as the rest.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Self {
        Self {
            region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            endpoint_url: get("AWS_ENDPOINT_URL"),
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            session_token: get("AWS_SESSION_TOKEN"),
        }
    }
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
    /// Which roots `verify-full` trusts besides `ca_file`.
    pub roots: Roots,
}

/// The trust anchors of a verified database connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The system's store (plus `DB_CA_FILE`).
    System,
    /// Only AWS's RDS and RDS Proxy CAs shipped in the binary
    /// (`certs/rds-ca-bundle.pem`), or only `DB_CA_FILE` when it is set:
    /// no public CA can vouch for a database.
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
    /// How long a connection serves on one isolation self-audit before it
    /// is audited again (`DB_AUDIT_INTERVAL_SECONDS`).
    pub audit_interval: Duration,
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
            audit_interval: DEFAULT_AUDIT_INTERVAL,
            clock: Clock::system(),
        }
    }
}

/// A schema change made while serving is caught within this by default.
const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(300);

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
                aws: AwsConfig::from_lookup(get),
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
            roots: Roots::System,
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
        audit_interval,
        clock: Clock::system(),
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
    if let Some(secret) = &hs256_secret {
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(ConfigError(format!(
                "JWT_HS256_SECRET must be at least {MIN_HS256_SECRET_LEN} bytes"
            )));
        }
        // Anyone can read the fixture secret in this repository: a
        // deployment that copied events/env.json would accept forged tokens.
        if secret.trim_ascii() == FIXTURE_HS256_SECRET.as_bytes()
            && get("ALLOW_TEST_FIXTURES").as_deref().map(str::trim) != Some("1")
        {
            return Err(ConfigError(
                "JWT_HS256_SECRET is the public test fixture secret of events/env.json; \
                 it is accepted only with ALLOW_TEST_FIXTURES=1 (make test)"
                    .into(),
            ));
        }
    }
    let jwks_url = get("JWT_JWKS_URL");
    if let Some(url) = &jwks_url {
        check_jwks_url(url)?;
    }
    let jwks_inline = get("JWT_JWKS");
    if jwks_url.is_some() && jwks_inline.is_some() {
        return Err(ConfigError(
            "set either JWT_JWKS_URL or JWT_JWKS (the key set inline), not both: \
             it would be unclear which keys sign valid tokens"
                .into(),
        ));
    }
    if let Some(document) = &jwks_inline {
        crate::token::check_jwks_document(document.as_bytes())
            .map_err(|e| ConfigError(format!("JWT_JWKS: {e}")))?;
    }
    let has_jwks = jwks_url.is_some() || jwks_inline.is_some();
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
            if has_jwks {
                algs.push(Algorithm::RS256);
            }
            algs
        }
    };
    if algorithms.is_empty() {
        return Err(ConfigError(
            "no way to verify tokens: set JWT_HS256_SECRET and/or JWT_JWKS_URL (or JWT_JWKS)"
                .into(),
        ));
    }
    for alg in &algorithms {
        match alg {
            Algorithm::HS256 if hs256_secret.is_none() => {
                return Err(ConfigError(
                    "JWT_ALGORITHMS names HS256 but JWT_HS256_SECRET is not set".into(),
                ));
            }
            Algorithm::RS256 | Algorithm::ES256 if !has_jwks => {
                return Err(ConfigError(format!(
                    "JWT_ALGORITHMS names {alg:?} but neither JWT_JWKS_URL nor JWT_JWKS is set"
                )));
            }
            _ => {}
        }
    }
    // A shared secret in a deployed function is one leak away from forged
    // tokens for every tenant; it takes an explicit opt-in.
    let allow_hs256 = match get("JWT_ALLOW_HS256").as_deref().map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ConfigError(format!(
                "JWT_ALLOW_HS256 must be true or false, got {other:?}"
            )));
        }
    };
    if algorithms.contains(&Algorithm::HS256)
        && get("AWS_LAMBDA_FUNCTION_NAME").is_some()
        && !allow_hs256
    {
        return Err(ConfigError(
            "HS256 (JWT_HS256_SECRET) is refused in Lambda unless JWT_ALLOW_HS256=true; \
             use a JWKS (JWT_JWKS_URL) with RS256/ES256"
                .into(),
        ));
    }
    let issuer = get("JWT_ISSUER").map(|iss| iss.trim().to_owned());
    let audience: Vec<String> = get("JWT_AUDIENCE")
        .map(|list| {
            list.split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // An IdP signs tokens for every app client and every user pool it
    // serves: without both checks, any of them would be accepted here.
    if has_jwks {
        let source = if jwks_url.is_some() {
            "JWT_JWKS_URL"
        } else {
            "JWT_JWKS"
        };
        if issuer.is_none() {
            return Err(ConfigError(format!(
                "JWT_ISSUER is required with {source} (Cognito: \
                 https://cognito-idp.REGION.amazonaws.com/POOL_ID)"
            )));
        }
        if audience.is_empty() {
            return Err(ConfigError(format!(
                "JWT_AUDIENCE is required with {source} (Cognito: the app client id)"
            )));
        }
    }
    let token_use = match get("JWT_TOKEN_USE").as_deref().map(str::trim) {
        None => None,
        Some("id") => Some(TokenUse::Id),
        Some("access") => Some(TokenUse::Access),
        Some(other) => {
            return Err(ConfigError(format!(
                "JWT_TOKEN_USE must be id or access, got {other:?}"
            )));
        }
    };
    let leeway_seconds = number(get, "JWT_LEEWAY_SECONDS", 30)?;
    if leeway_seconds > MAX_LEEWAY_SECONDS {
        return Err(ConfigError(format!(
            "JWT_LEEWAY_SECONDS must be at most {MAX_LEEWAY_SECONDS}, got {leeway_seconds}"
        )));
    }
    Ok(TokenConfig {
        algorithms,
        hs256_secret,
        jwks_url,
        jwks_inline,
        issuer,
        audience,
        tenant_claim: get("TENANT_CLAIM").unwrap_or_else(|| DEFAULT_TENANT_CLAIM.to_owned()),
        leeway_seconds,
        token_use,
        jwks_refetch: positive_seconds(get, "JWT_JWKS_REFETCH_SECONDS", 300)?,
        jwks_max_age: positive_seconds(get, "JWT_JWKS_MAX_AGE_SECONDS", 3600)?,
        clock: Clock::system(),
    })
}

/// A duration in whole seconds where zero would switch a guard off.
fn positive_seconds(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    match number(get, key, default)? {
        0 => Err(ConfigError(format!("{key} must be at least 1"))),
        n => Ok(Duration::from_secs(n)),
    }
}

/// The JWKS decides who may sign tokens: it must come over TLS, except from
/// this machine (tests serve it over plain HTTP on a loopback port).
pub fn check_jwks_url(raw: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| ConfigError(format!("JWT_JWKS_URL is not a valid URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host_str().is_some_and(is_loopback_host) => Ok(()),
        "http" => Err(ConfigError(
            "JWT_JWKS_URL must use https:// (http:// only for 127.0.0.0/8, ::1 or localhost)"
                .into(),
        )),
        other => Err(ConfigError(format!(
            "JWT_JWKS_URL must use https://, got {other}://"
        ))),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
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
        let c = config(&[
            URL,
            ("JWT_JWKS_URL", "http://127.0.0.1:1/jwks.json"),
            ISSUER,
            AUDIENCE,
        ])
        .unwrap();
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
            ("JWT_ALLOW_HS256", "true"),
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
    const JWKS: (&str, &str) = ("JWT_JWKS_URL", "https://idp.example/.well-known/jwks.json");
    const ISSUER: (&str, &str) = ("JWT_ISSUER", "https://idp.example");
    const AUDIENCE: (&str, &str) = ("JWT_AUDIENCE", "client-a, client-b");

    fn refused(vars: &[(&str, &str)]) -> String {
        match config(vars) {
            Ok(_) => panic!("accepted: {vars:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn zero_does_not_switch_a_database_guard_off() {
        for (key, source) in [
            ("DB_STATEMENT_TIMEOUT_MS", URL),
            ("DB_CONNECT_TIMEOUT_MS", URL),
            ("DB_SECRET_REFRESH_SECONDS", ARN),
            ("DB_AUDIT_INTERVAL_SECONDS", URL),
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
            ("DB_AUDIT_INTERVAL_SECONDS", "3601", URL),
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
        assert_eq!(c.db.audit_interval, Duration::from_secs(300), "default");
        let c = config(&[URL, SECRET, ("DB_AUDIT_INTERVAL_SECONDS", "1")]).unwrap();
        assert_eq!(c.db.audit_interval, Duration::from_secs(1));
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
    fn a_jwks_requires_issuer_and_audience() {
        let c = config(&[URL, JWKS, ISSUER, AUDIENCE]).unwrap();
        assert_eq!(c.token.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(c.token.audience, vec!["client-a", "client-b"]);
        assert!(refused(&[URL, JWKS, AUDIENCE]).contains("JWT_ISSUER"));
        assert!(refused(&[URL, JWKS, ISSUER]).contains("JWT_AUDIENCE"));
        assert!(refused(&[URL, JWKS, ISSUER, ("JWT_AUDIENCE", " , ")]).contains("JWT_AUDIENCE"));
        // Also when HS256 is accepted beside the JWKS.
        let both = ("JWT_ALGORITHMS", "HS256,ES256");
        assert!(refused(&[URL, SECRET, JWKS, both, AUDIENCE]).contains("JWT_ISSUER"));
        // HS256 alone keeps them optional: the secret is ours, not an IdP's.
        assert!(config(&[URL, SECRET]).unwrap().token.audience.is_empty());
    }

    #[test]
    fn token_use_is_id_or_access() {
        assert_eq!(config(&[URL, SECRET]).unwrap().token.token_use, None);
        let c = config(&[URL, SECRET, ("JWT_TOKEN_USE", "access")]).unwrap();
        assert_eq!(c.token.token_use, Some(TokenUse::Access));
        let c = config(&[URL, SECRET, ("JWT_TOKEN_USE", "id")]).unwrap();
        assert_eq!(c.token.token_use, Some(TokenUse::Id));
        for bad in ["ID", "refresh", "any"] {
            assert!(refused(&[URL, SECRET, ("JWT_TOKEN_USE", bad)]).contains("JWT_TOKEN_USE"));
        }
    }

    #[test]
    fn a_plain_http_jwks_is_refused_unless_it_is_on_this_machine() {
        for url in [
            "http://127.0.0.1:8080/jwks.json",
            "http://127.9.8.7/jwks.json",
            "http://[::1]:9000/jwks.json",
            "http://localhost/jwks.json",
            "http://LOCALHOST:1/jwks.json",
            "https://cognito-idp.eu-west-1.amazonaws.com/pool/.well-known/jwks.json",
        ] {
            config(&[URL, ("JWT_JWKS_URL", url), ISSUER, AUDIENCE])
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for url in [
            "http://idp.example/jwks.json",
            "http://10.0.0.1/jwks.json",
            "http://localhost.evil.example/jwks.json",
            "http://127.0.0.1.evil.example/jwks.json",
            "http://[::ffff:8.8.8.8]/jwks.json",
            "ftp://127.0.0.1/jwks.json",
            "file:///etc/jwks.json",
            "not a url",
        ] {
            let e = refused(&[URL, ("JWT_JWKS_URL", url), ISSUER, AUDIENCE]);
            assert!(e.contains("JWT_JWKS_URL"), "{url}: {e}");
        }
    }

    #[test]
    fn zero_is_refused_where_it_would_switch_a_guard_off() {
        let c = config(&[URL, JWKS, ISSUER, AUDIENCE]).unwrap();
        assert_eq!(c.token.jwks_refetch, Duration::from_secs(300));
        assert_eq!(c.token.jwks_max_age, Duration::from_secs(3600));
        assert_eq!(c.token.leeway_seconds, 30);
        for key in ["JWT_JWKS_REFETCH_SECONDS", "JWT_JWKS_MAX_AGE_SECONDS"] {
            assert!(refused(&[URL, JWKS, ISSUER, AUDIENCE, (key, "0")]).contains(key));
            assert!(refused(&[URL, JWKS, ISSUER, AUDIENCE, (key, "-1")]).contains(key));
        }
        let c = config(&[
            URL,
            JWKS,
            ISSUER,
            AUDIENCE,
            ("JWT_JWKS_REFETCH_SECONDS", "1"),
            ("JWT_JWKS_MAX_AGE_SECONDS", "2"),
        ])
        .unwrap();
        assert_eq!(c.token.jwks_refetch, Duration::from_secs(1));
        assert_eq!(c.token.jwks_max_age, Duration::from_secs(2));
        // No leeway is a legitimate choice; a long one is a longer lifetime.
        let no_leeway = config(&[URL, SECRET, ("JWT_LEEWAY_SECONDS", "0")]).unwrap();
        assert_eq!(no_leeway.token.leeway_seconds, 0);
        assert!(config(&[URL, SECRET, ("JWT_LEEWAY_SECONDS", "300")]).is_ok());
        assert!(
            refused(&[URL, SECRET, ("JWT_LEEWAY_SECONDS", "301")]).contains("JWT_LEEWAY_SECONDS")
        );
    }

    #[test]
    fn hs256_is_refused_in_lambda_unless_allowed() {
        let lambda = ("AWS_LAMBDA_FUNCTION_NAME", "tenant-users-prod");
        let e = refused(&[URL, SECRET, lambda]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let e = refused(&[URL, SECRET, lambda, ("JWT_ALLOW_HS256", "false")]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let e = refused(&[URL, SECRET, lambda, ("JWT_ALLOW_HS256", "yes")]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let e = refused(&[
            URL,
            SECRET,
            JWKS,
            ISSUER,
            AUDIENCE,
            lambda,
            ("JWT_ALGORITHMS", "RS256,HS256"),
        ]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let c = config(&[URL, SECRET, lambda, ("JWT_ALLOW_HS256", "true")]).unwrap();
        assert_eq!(c.token.algorithms, vec![Algorithm::HS256]);
        // A secret that is set but not accepted is no risk.
        let c = config(&[
            URL,
            SECRET,
            JWKS,
            ISSUER,
            AUDIENCE,
            lambda,
            ("JWT_ALGORITHMS", "RS256"),
        ]);
        assert_eq!(c.unwrap().token.algorithms, vec![Algorithm::RS256]);
        // Outside Lambda (local server, tests) HS256 needs no opt-in.
        assert!(config(&[URL, SECRET]).is_ok());
    }

    #[test]
    fn the_fixture_secret_is_refused_without_allow_test_fixtures() {
        let fixture = ("JWT_HS256_SECRET", FIXTURE_HS256_SECRET);
        let padded = format!(" {FIXTURE_HS256_SECRET} ");
        for vars in [
            vec![URL, fixture],
            vec![URL, ("JWT_HS256_SECRET", padded.as_str())],
            vec![URL, fixture, ("ALLOW_TEST_FIXTURES", "0")],
            vec![URL, fixture, ("ALLOW_TEST_FIXTURES", "true")],
            // JWT_ALLOW_HS256 does not make the public secret acceptable.
            vec![
                URL,
                fixture,
                ("AWS_LAMBDA_FUNCTION_NAME", "f"),
                ("JWT_ALLOW_HS256", "true"),
            ],
        ] {
            let e = refused(&vars);
            assert!(e.contains("ALLOW_TEST_FIXTURES"), "{vars:?}: {e}");
        }
        let c = config(&[URL, fixture, ("ALLOW_TEST_FIXTURES", "1")]).unwrap();
        assert_eq!(
            c.token.hs256_secret.as_deref(),
            Some(FIXTURE_HS256_SECRET.as_bytes())
        );
    }

    #[test]
    fn the_fixture_secret_is_the_one_in_events_env_json() {
        let env: serde_json::Value =
            serde_json::from_str(include_str!("../events/env.json")).unwrap();
        let function = &env["TenantUsersFunction"];
        assert_eq!(function["JWT_HS256_SECRET"], FIXTURE_HS256_SECRET);
        // The fixtures run as Lambda (cargo lambda watch, sam local).
        assert_eq!(function["JWT_ALLOW_HS256"], "true");
    }

    /// A public RSA key as a JWKS: the shape Cognito publishes.
    const INLINE: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}]}"#;

    #[test]
    fn an_inline_jwks_stands_in_for_the_url() {
        let c = config(&[URL, ("JWT_JWKS", INLINE), ISSUER, AUDIENCE]).unwrap();
        assert_eq!(c.token.algorithms, vec![Algorithm::RS256]);
        assert_eq!(c.token.jwks_inline.as_deref(), Some(INLINE));
        assert_eq!(c.token.jwks_url, None);
        let c = config(&[
            URL,
            ("JWT_JWKS", INLINE),
            ISSUER,
            AUDIENCE,
            ("JWT_ALGORITHMS", "ES256"),
        ])
        .unwrap();
        assert_eq!(c.token.algorithms, vec![Algorithm::ES256]);
    }

    #[test]
    fn an_inline_jwks_is_checked_like_any_jwks() {
        let both = refused(&[URL, JWKS, ("JWT_JWKS", INLINE), ISSUER, AUDIENCE]);
        assert!(
            both.contains("JWT_JWKS_URL") && both.contains("JWT_JWKS "),
            "{both}"
        );
        let e = refused(&[URL, ("JWT_JWKS", INLINE), AUDIENCE]);
        assert!(e.contains("JWT_ISSUER") && e.contains("JWT_JWKS"), "{e}");
        let e = refused(&[URL, ("JWT_JWKS", INLINE), ISSUER]);
        assert!(e.contains("JWT_AUDIENCE") && e.contains("JWT_JWKS"), "{e}");
        for bad in [
            "not json",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"unknown"}]}"#,
            r#"{"no":"keys"}"#,
        ] {
            let e = refused(&[URL, ("JWT_JWKS", bad), ISSUER, AUDIENCE]);
            assert!(e.contains("JWT_JWKS:"), "{bad}: {e}");
        }
        let huge = format!(
            r#"{{"keys":[],"pad":"{}"}}"#,
            " ".repeat(crate::token::MAX_JWKS_BYTES)
        );
        assert!(refused(&[URL, ("JWT_JWKS", &huge), ISSUER, AUDIENCE]).contains("larger"));
        // RS256 without any key source names both ways to give one.
        let e = refused(&[URL, SECRET, ("JWT_ALGORITHMS", "RS256")]);
        assert!(e.contains("JWT_JWKS"), "{e}");
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
