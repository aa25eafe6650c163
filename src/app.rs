//! Application state, built once per execution environment (cold start).

use std::sync::Arc;

use crate::config::Config;
use crate::db::Database;
use crate::telemetry::Metrics;
use crate::token::TokenManager;

pub struct App {
    pub tokens: TokenManager,
    pub db: Database,
    pub metrics: Metrics,
}

impl App {
    /// Loads the token keys and, concurrently, fetches the database secret
    /// and opens the connection; no failure is fatal (requests get 503
    /// until it recovers).
    pub async fn build(config: Config) -> Arc<Self> {
        let db = Database::new(config.db).await;
        let (tokens, ()) = tokio::join!(TokenManager::new(config.token), db.warm());
        Arc::new(Self {
            tokens,
            db,
            metrics: config.metrics,
        })
    }
}
