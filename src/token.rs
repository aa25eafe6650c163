//! The token manager: turns an `Authorization` header into a [`TenantContext`].
//!
//! Algorithms are pinned by configuration and each one has exactly one key
//! source: HS256 the shared secret, RS256/ES256 the JWKS. The JWKS is
//! fetched at cold start and refetched when a verification finds it older
//! than `JWT_JWKS_MAX_AGE_SECONDS` (Lambda freezes between invocations, so
//! there is no timer), and when a token names a key we do not know, at most
//! once per `JWT_JWKS_REFETCH_SECONDS` (default [`DEFAULT_JWKS_REFETCH`]).
//! Every failure fails closed: stale keys outlive a failed refetch only up
//! to twice the maximum age, then requests get 503, and failed fetches are
//! retried at a bounded rate, never in a storm. The key age and the
//! refetch spacing follow the configured clock (the system's in service; a
//! test's manual clock moves only when told). A key set given inline
//! (`JWT_JWKS`, for a function without a route to the IdP) is loaded once
//! and never ages or refetches: an unknown `kid` is simply refused. Nothing
//! here touches the database.
//!
//! A JWKS-verified token is remembered (by the SHA-256 of the whole token,
//! in a bounded cache) so a client that sends it again is not charged
//! another RSA/ECDSA check: the signature, issuer, audience and tenant of
//! those exact bytes cannot change. What can change is re-checked on every
//! hit: `exp` and `nbf` against the clock, and the key set (the cache is
//! used only while the keys are fresh, and emptied whenever a fetch loads
//! new keys, so a withdrawn key stops its tokens at once).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use crate::config::TokenConfig;
use crate::tenant::{TenantContext, TenantId};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Junk tokens naming unknown keys must not make us hammer the IdP.
pub const DEFAULT_JWKS_REFETCH: Duration = Duration::from_secs(300);
/// While we hold no usable keys (the IdP was down at cold start, or for
/// longer than the stale-key grace), retry sooner than that, so the
/// function heals without a restart.
const JWKS_RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(10);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// A real JWKS is a few KiB; this bounds what a hostile or broken endpoint
/// can make us hold in memory.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
const MAX_JWKS_REDIRECTS: usize = 3;
/// Verified tokens remembered per execution environment: one request at a
/// time means few live tokens; this bounds memory at a few hundred KiB
/// whatever callers send.
pub const VERIFIED_CACHE_ENTRIES: usize = 4096;

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

/// The keys and when they were fetched. Wall-clock time, not `Instant`: a
/// frozen or snapshotted execution environment's monotonic clock is not
/// promised to advance while frozen, and keys must not look younger than
/// they are.
struct KeySet {
    jwks: Jwks,
    fetched_at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Freshness {
    /// Younger than the maximum age.
    Fresh,
    /// Due for a refetch, still usable if that fails.
    Stale,
    /// None at all, or older than twice the maximum age: not usable.
    Unusable,
}

/// Why a refetch is wanted: the schedule is bounded by the maximum age
/// itself (a success makes the keys fresh); unknown `kid`s, which anyone
/// can send, also by the refetch interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refetch {
    Schedule,
    UnknownKid,
}

#[derive(Default)]
struct FetchLog {
    /// Last fetch for an unknown `kid` or on schedule, success or not (the
    /// cold-start fetch does not count, so a rotation right after it is
    /// still picked up).
    last_attempt: Option<Instant>,
    /// Last fetch that failed: retries wait at least the refetch interval.
    last_failure: Option<Instant>,
}

enum Lookup {
    Verified(Map<String, Value>),
    UnknownKid,
    NoUsableKeys,
}

/// What a verification established, and the two claims that make it expire.
#[derive(Clone)]
struct Verified {
    context: TenantContext,
    exp: u64,
    nbf: Option<u64>,
}

/// Verified tokens by SHA-256 of the token, for one key generation;
/// oldest out first when full.
#[derive(Default)]
struct VerifiedCache {
    generation: u64,
    entries: HashMap<[u8; 32], Verified>,
    order: VecDeque<[u8; 32]>,
}

pub struct TokenManager {
    config: TokenConfig,
    /// One validation per accepted algorithm, built once (not per request).
    validations: Vec<(Algorithm, Validation)>,
    hmac: Option<DecodingKey>,
    keys: RwLock<Option<KeySet>>,
    /// Held across a fetch, so concurrent requests cause one fetch, not many.
    fetches: Mutex<FetchLog>,
    /// Bumped by every successful fetch: a request that waited for another
    /// one's fetch uses its result instead of fetching again.
    generation: AtomicU64,
    http: Option<reqwest::Client>,
    verified: std::sync::Mutex<VerifiedCache>,
    verified_capacity: usize,
}

impl TokenManager {
    /// Builds the manager and, when a JWKS URL is configured, fetches the
    /// keys. A failed fetch is logged, not fatal: requests then get 503
    /// until a later (rate-limited) fetch succeeds.
    pub async fn new(config: TokenConfig) -> Self {
        fast_rs256::install();
        let hmac = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        let http = config.jwks_url.as_ref().map(|_| jwks_client());
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

    /// The verdict on a token verified before, if it still holds: the keys
    /// are fresh and the same generation that verified it, and `exp`/`nbf`
    /// pass against the clock now, with the same leeway as a verification.
    async fn cached(
        &self,
        digest: &[u8; 32],
        generation: u64,
    ) -> Option<Result<TenantContext, AuthError>> {
        if self.freshness().await != Freshness::Fresh {
            return None;
        }
        let mut cache = self.verified.lock().ok()?;
        if cache.generation != generation {
            cache.entries.clear();
            cache.order.clear();
            cache.generation = generation;
            return None;
        }
        let hit = cache.entries.get(digest)?.clone();
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.config.leeway_seconds;
        if hit.exp < now.saturating_sub(leeway) {
            cache.entries.remove(digest);
            return Some(Err(AuthError::Invalid("token has expired".into())));
        }
        if hit.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Some(Err(AuthError::Invalid(
                "token is not valid yet (nbf)".into(),
            )));
        }
        Some(Ok(hit.context))
    }

    fn remember(&self, digest: [u8; 32], generation: u64, verified: Verified) {
        let Ok(mut cache) = self.verified.lock() else {
            return;
        };
        if cache.generation != generation {
            if generation < cache.generation {
                return;
            }
            cache.entries.clear();
            cache.order.clear();
            cache.generation = generation;
        }
        while cache.entries.len() >= self.verified_capacity {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            cache.entries.remove(&oldest);
        }
        if cache.entries.insert(digest, verified).is_none() {
            cache.order.push_back(digest);
        }
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

    async fn freshness(&self) -> Freshness {
        let guard = self.keys.read().await;
        let Some(set) = guard.as_ref() else {
            return Freshness::Unusable;
        };
        // Inline keys are as fresh as the deployment that set them.
        if self.config.jwks_inline.is_some() {
            return Freshness::Fresh;
        }
        let max_age = self.config.jwks_max_age;
        // A clock that went backwards makes the age unknown: refetch.
        let age = self
            .config
            .clock
            .wall()
            .duration_since(set.fetched_at)
            .unwrap_or(max_age);
        if age < max_age {
            Freshness::Fresh
        } else if age < max_age.saturating_mul(2) {
            Freshness::Stale
        } else {
            Freshness::Unusable
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

    /// Fetches the JWKS, unless the rate limits for `why` say no (`None`:
    /// cold start, always). Returns whether new keys are loaded, by this
    /// call or by a concurrent one it waited for.
    async fn refresh_jwks(&self, why: Option<Refetch>) -> bool {
        let (Some(url), Some(http)) = (&self.config.jwks_url, &self.http) else {
            return false;
        };
        let seen = self.generation.load(Ordering::Acquire);
        let mut log = self.fetches.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return true;
        }
        let freshness = self.freshness().await;
        if let Some(why) = why {
            let interval = self.config.jwks_refetch;
            let retry_after_failure = if freshness == Freshness::Unusable {
                interval.min(JWKS_RETRY_WITHOUT_KEYS)
            } else {
                interval
            };
            let now = self.config.clock.now();
            let recent = |at: Option<Instant>, within: Duration| {
                at.is_some_and(|at| now.saturating_duration_since(at) < within)
            };
            if recent(log.last_failure, retry_after_failure)
                || (why == Refetch::UnknownKid && recent(log.last_attempt, interval))
            {
                tracing::info!(reason = ?why, "JWKS refetch skipped: rate-limited");
                return false;
            }
            log.last_attempt = Some(now);
        }
        match fetch_jwks(http, url).await {
            Ok(jwks) => {
                tracing::info!(keys = jwks.keys.len() + jwks.anonymous.len(), "JWKS loaded");
                *self.keys.write().await = Some(KeySet {
                    jwks,
                    fetched_at: self.config.clock.wall(),
                });
                self.generation.fetch_add(1, Ordering::AcqRel);
                log.last_failure = None;
                true
            }
            Err(error) => {
                log.last_failure = Some(self.config.clock.now());
                match freshness {
                    Freshness::Stale => tracing::error!(
                        %url, %error,
                        grace_seconds = self.config.jwks_max_age.as_secs() * 2,
                        "could not refresh JWKS: keeping the stale keys until twice their maximum age"
                    ),
                    _ => tracing::error!(%url, %error, "could not load JWKS"),
                }
                false
            }
        }
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
        Ok(TenantContext::new(tenant, subject))
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

/// The JWKS client: a timeout, and redirects only to URLs the configuration
/// would accept (https, or http on loopback).
fn jwks_client() -> reqwest::Client {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= MAX_JWKS_REDIRECTS {
            attempt.error("too many JWKS redirects")
        } else if crate::config::check_jwks_url(attempt.url().as_str()).is_err() {
            attempt.error("JWKS redirect to a URL that is neither https nor loopback")
        } else {
            attempt.follow()
        }
    });
    install_tls_provider();
    let builder = reqwest::Client::builder()
        .timeout(JWKS_TIMEOUT)
        .redirect(redirects);
    let builder = match jwks_tls() {
        Ok(tls) => builder.tls_backend_preconfigured(tls),
        Err(error) => {
            tracing::warn!(%error, "JWKS TLS set-up failed; using reqwest's defaults");
            builder
        }
    };
    builder.build().unwrap_or_default()
}

/// reqwest is built on rustls without a compiled-in crypto provider: every
/// reqwest client in the process (the JWKS client's fallback, the custom
/// resource's) needs ring installed as the process default first, or
/// building one panics. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// rustls (ring) trusting the system's roots: what native-tls would
/// trust, without OpenSSL parsing every root certificate at cold start.
fn jwks_tls() -> Result<rustls::ClientConfig, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no system root certificates found ({} errors)",
            found.errors.len()
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads the JWKS chunk by chunk and gives up as soon as it passes
/// [`MAX_JWKS_BYTES`] (or says up front it will): an endless body costs us
/// one megabyte, not all our memory.
async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Jwks, String> {
    let mut response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("JWKS endpoint answered {}", response.status()));
    }
    if let Some(length) = response.content_length()
        && length > MAX_JWKS_BYTES as u64
    {
        return Err(format!(
            "JWKS document is larger than {MAX_JWKS_BYTES} bytes (Content-Length: {length})"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "JWKS document is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    parse_jwks(&body)
}

/// Checks a JWKS document as the configuration gives it (`JWT_JWKS`):
/// within the size cap and holding at least one usable signing key; the
/// number of keys.
pub fn check_jwks_document(body: &[u8]) -> Result<usize, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "JWKS document is larger than {MAX_JWKS_BYTES} bytes"
        ));
    }
    let jwks = parse_jwks(body)?;
    Ok(jwks.keys.len() + jwks.anonymous.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-connection HTTP server on a loopback port that answers with
    /// `head` and then whatever `body` writes, for bodies no well-behaved
    /// server framework would send.
    async fn raw_server<F, Fut>(head: &'static str, body: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(head.as_bytes()).await.unwrap();
            body(stream).await;
        });
        url
    }

    /// Well inside the client's own timeout, so a pass means the size
    /// guard fired, not the timeout.
    async fn fetch_quickly(url: &str) -> Result<Jwks, String> {
        tokio::time::timeout(Duration::from_secs(3), fetch_jwks(&jwks_client(), url))
            .await
            .expect("the size guard answers before the client's timeout")
    }

    #[tokio::test]
    async fn an_endless_jwks_body_is_cut_off_past_the_cap() {
        let url = raw_server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            |mut stream| async move {
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                // Until the client hangs up.
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            },
        )
        .await;
        let error = fetch_quickly(&url).await.err().expect("refused");
        assert_eq!(error, "JWKS document is larger than 1048576 bytes");
    }

    #[tokio::test]
    async fn an_oversized_content_length_is_refused_before_reading() {
        // Announces 2 MiB, sends a byte and stalls: only the up-front check
        // can answer before the timeout.
        let url = raw_server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n{",
            |stream| async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(stream);
            },
        )
        .await;
        let error = fetch_quickly(&url).await.err().expect("refused");
        assert!(error.contains("Content-Length: 2097152"), "{error}");
    }

    #[tokio::test]
    async fn a_jwks_just_under_the_cap_is_read() {
        let url = raw_server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            |mut stream| async move {
                // A valid document padded to just under the cap, in chunks.
                let key = r#"{"kty":"oct","kid":"k","alg":"HS256","k":"c2VjcmV0"}"#;
                let head = format!(r#"{{"keys":[{key}],"pad":""#);
                let tail = r#""}"#;
                let pad = MAX_JWKS_BYTES - head.len() - tail.len();
                let doc = format!("{head}{}{tail}", " ".repeat(pad));
                assert_eq!(doc.len(), MAX_JWKS_BYTES);
                for part in doc.as_bytes().chunks(100_000) {
                    let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                    chunk.extend_from_slice(part);
                    chunk.extend_from_slice(b"\r\n");
                    stream.write_all(&chunk).await.unwrap();
                }
                stream.write_all(b"0\r\n\r\n").await.unwrap();
            },
        )
        .await;
        let jwks = fetch_quickly(&url)
            .await
            .expect("a document of exactly the cap is read");
        assert!(jwks.keys.contains_key("k"));
    }
}

/// RS256 signatures checked with `ring` (already built for the AWS SDK's
/// TLS, and cross-compiled for arm64 with it): several times faster than
/// the `rsa` crate, which rebuilds the public key for every verification.
/// Everything else (signing, other algorithms, keys given as DER or of a
/// size `ring` does not take) stays with jsonwebtoken's RustCrypto
/// provider, so what verifies, and what is refused, does not change.
pub mod fast_rs256 {
    use std::sync::OnceLock;

    use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
    use jsonwebtoken::signature::{Error, Verifier};
    use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

    struct RingRs256 {
        n: Vec<u8>,
        e: Vec<u8>,
    }

    impl Verifier<Vec<u8>> for RingRs256 {
        fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), Error> {
            ring::signature::RsaPublicKeyComponents {
                n: &self.n,
                e: &self.e,
            }
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                signature,
            )
            .map_err(|_| Error::new())
        }
    }

    impl JwtVerifier for RingRs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::RS256
        }
    }

    /// Bits of a big-endian modulus.
    fn bits(n: &[u8]) -> usize {
        let n = &n[n.iter().take_while(|b| **b == 0).count()..];
        n.first()
            .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize)
    }

    fn verifier(
        alg: &Algorithm,
        key: &DecodingKey,
    ) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
        if *alg == Algorithm::RS256
            && let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind()
            && (2048..=8192).contains(&bits(n))
        {
            return Ok(Box::new(RingRs256 {
                n: n.clone(),
                e: e.clone(),
            }));
        }
        (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key)
    }

    /// Makes this the process's jsonwebtoken provider, if none was chosen
    /// yet (the first use of jsonwebtoken fixes it). Idempotent.
    pub fn install() {
        static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
        let base = &rust_crypto::DEFAULT_PROVIDER;
        let provider = PROVIDER.get_or_init(|| CryptoProvider {
            signer_factory: base.signer_factory,
            verifier_factory: verifier,
            key_utils: base.key_utils.clone(),
        });
        let _ = provider.install_default();
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn modulus_bits_ignore_leading_zeros() {
            assert_eq!(bits(&[0, 0x80, 0]), 16);
            assert_eq!(bits(&[0x01]), 1);
            assert_eq!(bits(&[]), 0);
            assert_eq!(bits(&[0xff; 256]), 2048);
        }
    }
}

/// The verified-token cache must never let through a token that a full
/// verification would refuse now.
#[cfg(test)]
mod cache_tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use std::sync::Arc;

    const ISSUER: &str = "https://idp.cache.test/";
    const AUDIENCE: &str = "cache-client";

    struct Key {
        kid: &'static str,
        encoding: EncodingKey,
        jwk: Value,
    }

    fn key(kid: &'static str) -> Key {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        Key {
            kid,
            encoding: EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
            jwk: serde_json::json!({
                "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
            }),
        }
    }

    fn sign(key: &Key, tenant: &str, exp: u64) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.into());
        let claims = serde_json::json!({
            "sub": "someone", "custom:tenant_id": tenant, "iss": ISSUER, "aud": AUDIENCE,
            "exp": exp, "iat": jsonwebtoken::get_current_timestamp(),
        });
        let _: &Header = &header;
        jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
    }

    /// A JWKS endpoint whose document the test can replace, answering any
    /// number of requests.
    async fn jwks_server(document: Arc<std::sync::Mutex<String>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let document = document.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = document.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        url
    }

    fn document(keys: &[&Key]) -> String {
        serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
            .to_string()
    }

    async fn manager(url: &str, leeway: &str) -> TokenManager {
        let vars = [
            ("JWT_JWKS_URL", url),
            ("JWT_ISSUER", ISSUER),
            ("JWT_AUDIENCE", AUDIENCE),
            ("JWT_ALGORITHMS", "RS256"),
            ("JWT_LEEWAY_SECONDS", leeway),
            // Unknown kids may refetch at once: the test controls when.
            ("JWT_JWKS_REFETCH_SECONDS", "1"),
        ];
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        };
        TokenManager::new(crate::config::token_config(&get).unwrap()).await
    }

    fn cached_entries(manager: &TokenManager) -> usize {
        manager.verified.lock().unwrap().entries.len()
    }

    #[tokio::test]
    async fn a_token_that_expires_after_caching_is_refused() {
        let a = key("a");
        let url = jwks_server(Arc::new(std::sync::Mutex::new(document(&[&a])))).await;
        let tokens = manager(&url, "0").await;
        let token = sign(&a, "acme", jsonwebtoken::get_current_timestamp() + 1);
        assert!(tokens.verify(&token).await.is_ok());
        assert_eq!(cached_entries(&tokens), 1, "the verdict is cached");
        assert!(tokens.verify(&token).await.is_ok(), "a hit while valid");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            tokens.verify(&token).await.err(),
            Some(AuthError::Invalid("token has expired".into()))
        );
    }

    #[tokio::test]
    async fn a_key_withdrawn_by_a_jwks_change_stops_its_cached_tokens() {
        let (a, b) = (key("a"), key("b"));
        let served = Arc::new(std::sync::Mutex::new(document(&[&a])));
        let url = jwks_server(served.clone()).await;
        let tokens = manager(&url, "0").await;
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let old = sign(&a, "acme", exp);
        assert!(tokens.verify(&old).await.is_ok());
        assert!(tokens.verify(&old).await.is_ok());
        // The IdP rotates: key a withdrawn, key b published. A token
        // naming b makes the service fetch the new set.
        *served.lock().unwrap() = document(&[&b]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(tokens.verify(&sign(&b, "acme", exp)).await.is_ok());
        assert_eq!(
            tokens.verify(&old).await.err(),
            Some(AuthError::Invalid("token signing key is unknown".into())),
            "the cached verdict went with the key"
        );
    }

    #[tokio::test]
    async fn different_tenant_claims_are_different_entries() {
        let a = key("a");
        let url = jwks_server(Arc::new(std::sync::Mutex::new(document(&[&a])))).await;
        let tokens = manager(&url, "0").await;
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let (acme, globex) = (sign(&a, "acme", exp), sign(&a, "globex", exp));
        for _ in 0..2 {
            assert_eq!(
                tokens.verify(&acme).await.unwrap().tenant().as_str(),
                "acme"
            );
            assert_eq!(
                tokens.verify(&globex).await.unwrap().tenant().as_str(),
                "globex"
            );
        }
        assert_eq!(cached_entries(&tokens), 2);
        // A forged copy of a cached token with another tenant in its
        // payload is another key, verified (and refused) in full.
        let mut parts: Vec<String> = acme.split('.').map(str::to_owned).collect();
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        parts[1] = URL_SAFE_NO_PAD.encode(payload.replace("acme", "globex"));
        assert_eq!(
            tokens.verify(&parts.join(".")).await.err(),
            Some(AuthError::Invalid("token signature is invalid".into()))
        );
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let a = key("a");
        let url = jwks_server(Arc::new(std::sync::Mutex::new(document(&[&a])))).await;
        let mut tokens = manager(&url, "0").await;
        tokens.verified_capacity = 3;
        let now = jsonwebtoken::get_current_timestamp();
        for i in 0..5 {
            assert!(
                tokens
                    .verify(&sign(&a, "acme", now + 600 + i))
                    .await
                    .is_ok()
            );
        }
        assert_eq!(cached_entries(&tokens), 3);
    }
}
