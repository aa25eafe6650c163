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
            .finish()
    }
}

/// How the application role reaches the database.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub pg: tokio_postgres::Config,
    /// Bounds every transaction (set in the same scope as the tenant).
    pub statement_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub token: TokenConfig,
    pub db: DbConfig,
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
        let url = get("DATABASE_URL").ok_or_else(|| {
            ConfigError(
                "DATABASE_URL is required (postgres://app_user:password@host:port/db)".into(),
            )
        })?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| ConfigError(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}")))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(millis(&get, "DB_CONNECT_TIMEOUT_MS", 5_000)?);
        }
        pg.application_name("tenant-users");
        let db = DbConfig {
            pg,
            statement_timeout: millis(&get, "DB_STATEMENT_TIMEOUT_MS", 5_000)?,
        };
        Ok(Config { token, db })
    }
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

fn millis(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    number(get, key, default).map(Duration::from_millis)
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
        assert!(config(&[SECRET]).is_err(), "no DATABASE_URL");
        assert!(config(&[("DATABASE_URL", "not a url"), SECRET]).is_err());
    }

    #[test]
    fn secret_is_not_printed() {
        let c = config(&[URL, SECRET]).unwrap();
        assert!(!format!("{:?}", c.token).contains("0123456789abcdef"));
    }
}
