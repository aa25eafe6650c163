//! The control plane: the operators' function. Behind its own HTTP API,
//! whose every route takes IAM authorization (SigV4), it onboards,
//! suspends, resumes, re-tiers, exports and offboards tenants.
//!
//! It connects as a role of its own (`migrate` makes it: no BYPASSRLS,
//! audited on every connection with [`audit::Profile::Control`]) and
//! touches tenant data only one tenant at a time, in a transaction scoped to
//! that tenant exactly as the API's are ([`lifecycle::in_tenant`]), so the
//! same `tenant_policy` holds it to that tenant's rows. Every action writes
//! a row of the operator trail (`control.operator_trail`) in the same
//! transaction as the change it records.

pub mod lifecycle;
pub mod routes;
pub mod store;

use std::sync::Arc;

use tenant_users::audit;
use tenant_users::config::ConfigError;
use tenant_users::db::Database;
use tenant_users::db::config::{DbConfig, db_config};
use tenant_users::identity::Identities;
use tenant_users::secret::config::AwsConfig;

use crate::store::{Bucket, Signer};

/// The control plane's settings, read once at cold start.
#[derive(Clone)]
pub struct Config {
    /// Its own role's connection (`DB_SECRET_ARN` names the control role's
    /// secret in a deployment).
    pub db: DbConfig,
    pub aws: AwsConfig,
    /// `USER_POOL_ID`: the pool of tenant users' identities.
    pub user_pool_id: Option<String>,
    /// `EXPORT_BUCKET` and `EXPORT_KEY_ID`: where exports and receipts go,
    /// and the KMS key that encrypts them (SSE-KMS).
    pub bucket: Option<(String, String)>,
    /// `RECEIPT_KEY_ID`: the asymmetric KMS key (ECC_NIST_P256) that signs
    /// offboarding receipts.
    pub receipt_key_id: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let mut db = db_config(&get)?;
        db.audit_profile = audit::Profile::Control;
        let bucket = match (get("EXPORT_BUCKET"), get("EXPORT_KEY_ID")) {
            (Some(bucket), Some(key)) => Some((bucket, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "EXPORT_BUCKET and EXPORT_KEY_ID go together: every object is written with SSE-KMS under that key".into(),
                ));
            }
        };
        Ok(Self {
            db,
            aws: AwsConfig::from_lookup(&get),
            user_pool_id: tenant_users::identity::IdentityConfig::from_lookup(&get)?
                .map(|c| c.pool_id),
            bucket,
            receipt_key_id: get("RECEIPT_KEY_ID"),
        })
    }
}

/// The control plane's state, built once per execution environment.
pub struct Control {
    pub db: Database,
    /// The tenant users' pool (`USER_POOL_ID`): onboarding makes the first
    /// admin there, offboarding removes every identity of the tenant.
    pub identities: Option<Identities>,
    pub bucket: Option<Bucket>,
    pub signer: Option<Signer>,
}

impl Control {
    /// Builds the clients and opens (and audits) the connection; no call
    /// to S3 or KMS yet, and no failure is fatal (routes answer 503).
    pub async fn build(config: Config) -> Arc<Self> {
        let sdk = tenant_users::secret::sdk_config(&config.aws).await;
        let db = Database::new(config.db).await;
        db.warm().await;
        Arc::new(Self {
            db,
            identities: config.user_pool_id.map(|pool| Identities::new(&sdk, pool)),
            bucket: config
                .bucket
                .map(|(name, key)| Bucket::new(&sdk, name, key)),
            signer: config.receipt_key_id.map(|key| Signer::new(&sdk, key)),
        })
    }
}
