//! The settings of the database secret (`DB_SECRET_ARN` and what completes
//! it) and of the AWS SDK that reads it, read once at cold start.

use std::time::Duration;

use crate::config::{ConfigError, bounded};

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

/// Where the secret `DB_SECRET_ARN` names is read from, and what completes
/// it: `DB_SECRET_ROLE_ARN`, `DB_HOST`, `DB_PORT`, `DB_NAME`,
/// `DB_SECRET_REFRESH_SECONDS` and the standard AWS variables.
pub fn secret_config(
    get: &impl Fn(&str) -> Option<String>,
    secret_id: String,
) -> Result<SecretConfig, ConfigError> {
    let port = get("DB_PORT")
        .map(|p| p.trim().parse::<u16>())
        .transpose()
        .map_err(|_| ConfigError("DB_PORT must be a port number".into()))?;
    let function = get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "local".into());
    Ok(SecretConfig {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aws_secret_key_is_not_printed() {
        let aws = AwsConfig {
            secret_access_key: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{aws:?}").contains("hunter2"));
    }
}
