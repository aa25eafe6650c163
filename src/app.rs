//! Application state, built once per execution environment (cold start).

use std::sync::Arc;

use crate::config::Config;
use crate::db::Database;
use crate::token::TokenManager;

pub struct App {
    pub tokens: TokenManager,
    pub db: Database,
}

impl App {
    /// Loads the token keys and opens the database connection concurrently;
    /// neither failure is fatal (requests get 503 until it recovers).
    pub async fn build(config: Config) -> Arc<Self> {
        let db = Database::new(config.db);
        let (tokens, ()) = tokio::join!(TokenManager::new(config.token), db.warm());
        Arc::new(Self { tokens, db })
    }
}
