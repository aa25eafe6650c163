//! Application state, built once per execution environment (cold start),
//! and the configuration it is built from.

use std::sync::Arc;

use crate::coldstart;
use crate::config::ConfigError;
use crate::db::Database;
use crate::db::config::{DbConfig, db_config};
use crate::identity::{Identities, IdentityConfig};
use crate::telemetry::Metrics;
use crate::token::TokenManager;
use crate::token::config::{TokenConfig, token_config};

/// Everything the service needs, read once from the environment at cold
/// start: each module's settings, parsed next to that module.
#[derive(Clone)]
pub struct Config {
    pub token: TokenConfig,
    pub db: DbConfig,
    /// `USER_POOL_ID`: the pool whose identities `POST` and `DELETE
    /// /users` keep in step with the rows; `None` keeps none (local use).
    pub identity: Option<IdentityConfig>,
    pub metrics: Metrics,
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
            identity: IdentityConfig::from_lookup(&get)?,
            metrics: Metrics::from_lookup(get),
        })
    }
}

pub struct App {
    pub tokens: TokenManager,
    pub db: Database,
    pub identities: Option<Identities>,
    pub metrics: Metrics,
}

impl App {
    /// Loads the token keys and, concurrently, builds the AWS clients,
    /// fetches the database secret and opens the connection (each waits
    /// on the network while the other works); no failure is fatal
    /// (requests get 503 until it recovers). The user pool's client is
    /// built too, without a call.
    pub async fn build(config: Config) -> Arc<Self> {
        let identity = config.identity;
        let (tokens, db, identities) = tokio::join!(
            coldstart::timed("token keys", TokenManager::new(config.token)),
            coldstart::timed("database", async {
                let db = Database::new(config.db).await;
                db.warm().await;
                db
            }),
            async {
                match &identity {
                    Some(config) => {
                        Some(coldstart::timed("identities", Identities::from_config(config)).await)
                    }
                    None => None,
                }
            }
        );
        Arc::new(Self {
            tokens,
            db,
            identities,
            metrics: config.metrics,
        })
    }
}
