//! Where a token is verified: [`TokenManager::verify`] refuses an oversized
//! token or an algorithm not configured, checks the signature with that
//! algorithm's one key source (the HS256 secret, or the JWKS key the token
//! names) together with `exp`, `nbf` and the issuer, then the audience and
//! `token_use`, and only then reads the tenant claim into a
//! [`TenantContext`]. The manager's JWKS methods (how fresh the keys are,
//! when to fetch them again) are in `jwks.rs`, its verified-token cache
//! in `cache.rs`.

use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::jwk::KeyAlgorithm;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use super::cache::{Verified, VerifiedCache};
use super::config::TokenConfig;
use super::jwks::{FetchLog, Freshness, KeySet, Refetch, jwks_client, parse_jwks};
use super::{AuthError, MAX_TOKEN_LEN, VERIFIED_CACHE_ENTRIES, fast_rs256};
use crate::tenant::{TenantContext, TenantId};

enum Lookup {
    Verified(Map<String, Value>),
    UnknownKid,
    NoUsableKeys,
}

pub struct TokenManager {
    pub(super) config: TokenConfig,
    /// One validation per accepted algorithm, built once (not per request).
    validations: Vec<(Algorithm, Validation)>,
    hmac: Option<DecodingKey>,
    pub(super) keys: RwLock<Option<KeySet>>,
    /// Held across a fetch, so concurrent requests cause one fetch, not many.
    pub(super) fetches: Mutex<FetchLog>,
    /// Bumped by every successful fetch: a request that waited for another
    /// one's fetch uses its result instead of fetching again.
    pub(super) generation: AtomicU64,
    pub(super) http: Option<reqwest::Client>,
    pub(super) verified: std::sync::Mutex<VerifiedCache>,
    pub(super) verified_capacity: usize,
}

impl TokenManager {
    /// Builds the manager and, when a JWKS URL is configured, fetches the
    /// keys. A failed fetch is logged, not fatal: requests then get 503
    /// until a later (rate-limited) fetch succeeds.
    pub async fn new(config: TokenConfig) -> Self {
        fast_rs256::install();
        let hmac = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        let http = config
            .jwks_url
            .as_ref()
            .map(|url| crate::coldstart::sync("jwks client", || jwks_client(url)));
        let validations = config
            .algorithms
            .iter()
            .map(|alg| (*alg, validation(&config, *alg)))
            .collect();
        let manager = Self {
            config,
            validations,
            hmac,
            keys: RwLock::new(None),
            fetches: Mutex::new(FetchLog::default()),
            generation: AtomicU64::new(0),
            http,
            verified: std::sync::Mutex::new(VerifiedCache::default()),
            verified_capacity: VERIFIED_CACHE_ENTRIES,
        };
        if manager.config.jwks_url.is_some() {
            manager.refresh_jwks(None).await;
        }
        if let Some(document) = &manager.config.jwks_inline {
            // Checked by the configuration already; a failure here leaves no
            // keys, so RS256/ES256 tokens get 503, never a pass.
            match parse_jwks(document.as_bytes()) {
                Ok(jwks) => {
                    tracing::info!(
                        keys = jwks.keys.len() + jwks.anonymous.len(),
                        "JWKS loaded from JWT_JWKS"
                    );
                    *manager.keys.write().await = Some(KeySet {
                        jwks,
                        fetched_at: manager.config.clock.wall(),
                    });
                }
                Err(error) => tracing::error!(%error, "JWT_JWKS is unusable"),
            }
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
                if self.freshness().await != Freshness::Fresh {
                    self.refresh_jwks(Some(Refetch::Schedule)).await;
                }
                // Taken before verifying: keys replaced meanwhile make the
                // entry this verification adds unusable.
                let generation = self.generation.load(Ordering::Acquire);
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                if let Some(hit) = self.cached(&digest, generation).await {
                    return hit;
                }
                let claims = self
                    .verify_with_jwks(kid, header.alg, token, validation)
                    .await?;
                let (exp, nbf) = (claim_u64(&claims, "exp"), claim_u64(&claims, "nbf"));
                self.check_audience(&claims)?;
                self.check_token_use(&claims)?;
                let context = self.context_from(claims)?;
                if let (Some(exp), Ok(nbf)) = (exp.ok().flatten(), nbf) {
                    self.remember(
                        digest,
                        generation,
                        Verified {
                            context: context.clone(),
                            exp,
                            nbf,
                        },
                    );
                }
                return Ok(context);
            }
        };
        self.check_audience(&claims)?;
        self.check_token_use(&claims)?;
        self.context_from(claims)
    }

    /// Verifies with the JWKS key the token names, fetching the keys again
    /// once for a `kid` we do not know.
    async fn verify_with_jwks(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        token: &str,
        validation: &Validation,
    ) -> Result<Map<String, Value>, AuthError> {
        match self.lookup(kid, alg, token, validation).await? {
            Lookup::Verified(claims) => Ok(claims),
            // The schedule already tried (or was rate-limited).
            Lookup::NoUsableKeys => Err(AuthError::KeysUnavailable),
            Lookup::UnknownKid => {
                if !self.refresh_jwks(Some(Refetch::UnknownKid)).await {
                    return Err(AuthError::Invalid("token signing key is unknown".into()));
                }
                match self.lookup(kid, alg, token, validation).await? {
                    Lookup::Verified(claims) => Ok(claims),
                    Lookup::UnknownKid => {
                        Err(AuthError::Invalid("token signing key is unknown".into()))
                    }
                    Lookup::NoUsableKeys => Err(AuthError::KeysUnavailable),
                }
            }
        }
    }

    /// Verifies with the JWKS key the token names.
    async fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        token: &str,
        validation: &Validation,
    ) -> Result<Lookup, AuthError> {
        if self.freshness().await == Freshness::Unusable {
            return Ok(Lookup::NoUsableKeys);
        }
        let guard = self.keys.read().await;
        let Some(jwks) = guard.as_ref().map(|set| &set.jwks) else {
            return Ok(Lookup::NoUsableKeys);
        };
        let key = match kid {
            Some(kid) => jwks.keys.get(kid),
            None if jwks.keys.is_empty() && jwks.anonymous.len() == 1 => jwks.anonymous.first(),
            None => return Err(AuthError::Invalid("token has no key id (kid)".into())),
        };
        let Some(key) = key else {
            return Ok(Lookup::UnknownKid);
        };
        if let Some(key_alg) = key.alg
            && key_alg != KeyAlgorithm::from(alg)
        {
            return Err(AuthError::Invalid(
                "token algorithm does not match its key".into(),
            ));
        }
        decode(token, &key.key, validation).map(Lookup::Verified)
    }

    /// `aud`, or for tokens without one `client_id`, must name one of the
    /// configured audiences: the rule of API Gateway's JWT authorizer
    /// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-jwt-authorizer.html>:
    /// `client_id` is validated only when `aud` is absent; when both are
    /// present, `aud` decides). Cognito ID tokens carry `aud` = app client
    /// id; its access tokens carry no `aud`, only `client_id`.
    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let accepted = &self.config.audience;
        if accepted.is_empty() {
            return Ok(());
        }
        let known = |v: &str| accepted.iter().any(|a| a == v);
        let refuse = |why: &str| Err(AuthError::Invalid(why.into()));
        match claims.get("aud") {
            Some(Value::String(aud)) if known(aud) => Ok(()),
            Some(Value::Array(auds)) if auds.iter().any(|a| a.as_str().is_some_and(known)) => {
                Ok(())
            }
            Some(Value::String(_) | Value::Array(_)) => refuse("token audience is not accepted"),
            Some(_) => refuse("token claim \"aud\" has the wrong type"),
            None => match claims.get("client_id") {
                Some(Value::String(id)) if known(id) => Ok(()),
                Some(Value::String(_)) => refuse("token client_id (audience) is not accepted"),
                Some(_) => refuse("token claim \"client_id\" has the wrong type"),
                None => {
                    refuse("token lacks the required claim \"aud\" (access tokens: \"client_id\")")
                }
            },
        }
    }

    /// Cognito marks each token `id` or `access`; when configured, only
    /// that kind is taken.
    fn check_token_use(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let Some(expected) = self.config.token_use else {
            return Ok(());
        };
        match claims.get("token_use") {
            Some(Value::String(used)) if used == expected.as_str() => Ok(()),
            Some(Value::String(_)) => Err(AuthError::Invalid(format!(
                "token_use is not accepted: this API takes {} tokens",
                expected.as_str()
            ))),
            Some(_) => Err(AuthError::Invalid(
                "token claim \"token_use\" has the wrong type".into(),
            )),
            None => Err(AuthError::Invalid(
                "token lacks the required claim \"token_use\"".into(),
            )),
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
        Ok(TenantContext::new(tenant, subject, groups(&mut claims)?))
    }
}

/// `cognito:groups`: absent is no group; anything but an array of strings
/// is a malformed token (refused, as any other malformed claim).
fn groups(claims: &mut Map<String, Value>) -> Result<Vec<String>, AuthError> {
    const CLAIM: &str = "cognito:groups";
    let wrong = || AuthError::Invalid(format!("token claim {CLAIM:?} must be an array of strings"));
    match claims.remove(CLAIM) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(group) => Ok(group),
                _ => Err(wrong()),
            })
            .collect(),
        Some(_) => Err(wrong()),
    }
}

/// A numeric claim as jsonwebtoken reads it: absent (`None`), a whole
/// number of seconds, or anything else (`Err`: not cached).
fn claim_u64(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, ()> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(()),
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
    // Audience follows API Gateway's aud-or-client_id rule, checked by
    // `check_audience`; jsonwebtoken knows only `aud`.
    v.validate_aud = false;
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
                        "token lacks a required claim (exp or iss)"
                    }
                    ErrorKind::InvalidClaimFormat(_) => "token has a claim of the wrong type",
                    _ => "token is not a well-formed JWT",
                }
                .into(),
            )
        })
}
