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
//!
//! Where to look: `verify.rs` is where a token is verified (the
//! [`TokenManager`]: algorithm, signature, claims, tenant); `jwks.rs` the
//! JWKS client (fetch, TLS, parse, the key set and when to refetch it);
//! `cache.rs` the verified-token cache; [`config`] the `JWT_*` settings;
//! [`fast_rs256`] the `ring` RS256 verifier.
//!
//! [`TenantContext`]: crate::tenant::TenantContext

use std::time::Duration;

mod cache;
pub mod config;
pub mod fast_rs256;
mod jwks;
mod verify;

pub use jwks::{check_jwks_document, install_tls_provider};
pub use verify::TokenManager;

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
