//! The token manager: turns an `Authorization` header into a [`TenantContext`].
//!
//! Algorithms are pinned by configuration and each one has exactly one key
//! source: HS256 the shared secret, RS256/ES256 the JWKS (fetched at cold
//! start, cached, refetched at most once per `JWT_JWKS_REFETCH_SECONDS`
//! (default [`DEFAULT_JWKS_REFETCH`]) when a
//! token names a key we do not know). Nothing here touches the database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use crate::config::TokenConfig;
use crate::tenant::{TenantContext, TenantId};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Junk tokens naming unknown keys must not make us hammer the IdP.
pub const DEFAULT_JWKS_REFETCH: Duration = Duration::from_secs(300);
/// While we hold no keys at all (the IdP was down at cold start), retry
/// sooner than that, so the function heals without a restart.
const JWKS_RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(10);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a request was not authenticated. The `Display` text is safe to show
/// to the caller; it never echoes the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("an Authorization: Bearer token is required")]
    Missing,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Invalid(String),
    /// The verification keys could not be loaded: not the caller's fault.
    #[error("token verification keys are unavailable")]
    KeysUnavailable,
}

struct JwksKey {
    key: DecodingKey,
    alg: Option<KeyAlgorithm>,
}

#[derive(Default)]
struct Jwks {
    keys: HashMap<String, JwksKey>,
    /// Keys published without a `kid`, usable only when they are alone.
    anonymous: Vec<JwksKey>,
}

pub struct TokenManager {
    config: TokenConfig,
    /// One validation per accepted algorithm, built once (not per request).
    validations: Vec<(Algorithm, Validation)>,
    hmac: Option<DecodingKey>,
    jwks: RwLock<Option<Jwks>>,
    /// When the keys were last refetched on demand (the cold-start fetch
    /// does not count, so a rotation right after it is still picked up).
    last_refetch: Mutex<Option<Instant>>,
    http: Option<reqwest::Client>,
}

impl TokenManager {
    /// Builds the manager and, when a JWKS URL is configured, fetches the
    /// keys. A failed fetch is logged, not fatal: requests then get 503
    /// until a later (rate-limited) fetch succeeds.
    pub async fn new(config: TokenConfig) -> Self {
        let hmac = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        let http = config.jwks_url.as_ref().map(|_| {
            reqwest::Client::builder()
                .timeout(JWKS_TIMEOUT)
                .build()
                .unwrap_or_default()
        });
        let validations = config
            .algorithms
            .iter()
            .map(|alg| (*alg, validation(&config, *alg)))
            .collect();
        let manager = Self {
            config,
            validations,
            hmac,
            jwks: RwLock::new(None),
            last_refetch: Mutex::new(None),
            http,
        };
        if manager.config.jwks_url.is_some() {
            manager.refresh_jwks(true).await;
        }
        manager
    }

    pub fn tenant_claim(&self) -> &str {
        &self.config.tenant_claim
    }

    /// Verifies a bearer token (without the `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<TenantContext, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token is too large"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("token is not a well-formed JWT".into()))?;
        // Only configured algorithms have a validation: anything else stops here.
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                AuthError::Invalid(format!("token algorithm {:?} is not accepted", header.alg))
            })?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.hmac.as_ref().ok_or(AuthError::KeysUnavailable)?;
                decode(token, key, validation)?
            }
            _ => {
                let kid = header.kid.as_deref();
                if let Some(claims) = self
                    .with_jwks_key(kid, header.alg, token, validation)
                    .await?
                {
                    claims
                } else if self.refresh_jwks(false).await {
                    self.with_jwks_key(kid, header.alg, token, validation)
                        .await?
                        .ok_or_else(|| AuthError::Invalid("token signing key is unknown".into()))?
                } else if self.jwks.read().await.is_none() {
                    return Err(AuthError::KeysUnavailable);
                } else {
                    return Err(AuthError::Invalid("token signing key is unknown".into()));
                }
            }
        };
        self.context_from(claims)
    }

    /// Verifies with the JWKS key the token names; `Ok(None)` when we hold
    /// no such key (so the caller may refetch).
    async fn with_jwks_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        token: &str,
        validation: &Validation,
    ) -> Result<Option<Map<String, Value>>, AuthError> {
        let guard = self.jwks.read().await;
        let Some(jwks) = guard.as_ref() else {
            return Ok(None);
        };
        let key = match kid {
            Some(kid) => jwks.keys.get(kid),
            None if jwks.keys.is_empty() && jwks.anonymous.len() == 1 => jwks.anonymous.first(),
            None => return Err(AuthError::Invalid("token has no key id (kid)".into())),
        };
        let Some(key) = key else {
            return Ok(None);
        };
        if let Some(key_alg) = key.alg
            && key_alg != KeyAlgorithm::from(alg)
        {
            return Err(AuthError::Invalid(
                "token algorithm does not match its key".into(),
            ));
        }
        decode(token, &key.key, validation).map(Some)
    }

    /// Fetches the JWKS unless it was refetched within the refetch interval
    /// (`force` skips that check, for cold start). Returns whether new keys
    /// were loaded.
    async fn refresh_jwks(&self, force: bool) -> bool {
        let (Some(url), Some(http)) = (&self.config.jwks_url, &self.http) else {
            return false;
        };
        if !force {
            let interval = if self.jwks.read().await.is_some() {
                self.config.jwks_refetch
            } else {
                self.config.jwks_refetch.min(JWKS_RETRY_WITHOUT_KEYS)
            };
            let mut last = self.last_refetch.lock().await;
            if last.is_some_and(|at| at.elapsed() < interval) {
                tracing::info!("JWKS refetch skipped: rate-limited");
                return false;
            }
            *last = Some(Instant::now());
        }
        match fetch_jwks(http, url).await {
            Ok(jwks) => {
                tracing::info!(keys = jwks.keys.len() + jwks.anonymous.len(), "JWKS loaded");
                *self.jwks.write().await = Some(jwks);
                true
            }
            Err(error) => {
                tracing::error!(%url, %error, "could not load JWKS");
                false
            }
        }
    }

    fn context_from(&self, mut claims: Map<String, Value>) -> Result<TenantContext, AuthError> {
        let claim = &self.config.tenant_claim;
        let tenant = match claims.remove(claim) {
            Some(Value::String(raw)) => TenantId::parse(&raw).map_err(|e| {
                AuthError::Invalid(format!(
                    "token claim {claim:?} is not a valid tenant id: {e}"
                ))
            })?,
            Some(_) => {
                return Err(AuthError::Invalid(format!(
                    "token claim {claim:?} must be a string"
                )));
            }
            None => return Err(AuthError::Invalid(format!("token has no {claim:?} claim"))),
        };
        let subject = match claims.remove("sub") {
            Some(Value::String(sub)) => Some(sub),
            _ => None,
        };
        Ok(TenantContext::new(tenant, subject))
    }
}

fn validation(config: &TokenConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway_seconds;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(iss) = &config.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    if config.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&config.audience);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, AuthError> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| {
            if let ErrorKind::MissingRequiredClaim(claim) = e.kind() {
                return AuthError::Invalid(format!("token lacks the required claim {claim:?}"));
            }
            if let ErrorKind::InvalidClaimFormat(claim) = e.kind() {
                return AuthError::Invalid(format!("token claim {claim:?} has the wrong type"));
            }
            AuthError::Invalid(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token has expired",
                    ErrorKind::ImmatureSignature => "token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    ErrorKind::InvalidIssuer => "token issuer is not accepted",
                    ErrorKind::InvalidAudience => "token audience is not accepted",
                    ErrorKind::InvalidAlgorithm => "token algorithm does not match its key",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "token lacks a required claim (exp, iss or aud)"
                    }
                    ErrorKind::InvalidClaimFormat(_) => "token has a claim of the wrong type",
                    _ => "token is not a well-formed JWT",
                }
                .into(),
            )
        })
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Jwks, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("JWKS endpoint answered {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_JWKS_BYTES {
        return Err("JWKS document is too large".into());
    }
    parse_jwks(&body)
}

/// Parses a JWKS document key by key, so one key of a kind we do not
/// support does not hide the others.
fn parse_jwks(body: &[u8]) -> Result<Jwks, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<Value>,
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let mut jwks = Jwks::default();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            tracing::warn!("skipping a JWKS key of an unsupported kind");
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key that does not parse");
            continue;
        };
        let entry = JwksKey {
            key,
            alg: jwk.common.key_algorithm,
        };
        match jwk.common.key_id {
            Some(kid) => {
                jwks.keys.insert(kid, entry);
            }
            None => jwks.anonymous.push(entry),
        }
    }
    if jwks.keys.is_empty() && jwks.anonymous.is_empty() {
        return Err("JWKS holds no usable signing key".into());
    }
    Ok(jwks)
}
