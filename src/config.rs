//! Configuration: how settings are read, once, from the environment at
//! cold start.
//!
//! Each module parses its own settings next to its code, into a typed
//! value: [`token::config`](crate::token::config) (`JWT_*`),
//! [`db::config`](crate::db::config) (`DATABASE_URL`, `DB_*`),
//! [`secret::config`](crate::secret::config) (`DB_SECRET_ARN` and the AWS
//! variables), [`telemetry::Metrics`](crate::telemetry::Metrics)
//! (`METRICS*`); [`app::Config`](crate::app::Config) gathers them. This
//! file holds what they share: the error, which names the variable, so a
//! bad value stops the process at start-up rather than surfacing later as
//! a confusing request failure, and the number parsers.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// A duration in whole seconds where zero would switch a guard off.
pub(crate) fn positive_seconds(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    match number(get, key, default)? {
        0 => Err(ConfigError(format!("{key} must be at least 1"))),
        n => Ok(Duration::from_secs(n)),
    }
}

pub(crate) fn number(
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
pub(crate) fn bounded(
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
