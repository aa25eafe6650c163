//! The JWKS client: fetches the IdP's key set over TLS (rustls with ring,
//! the system's roots, shared with the AWS SDK: [`crate::https`]), at most [`MAX_JWKS_BYTES`] of it and redirects only
//! where the configuration would point; parses it key by key; and decides
//! when the key set is refetched (on schedule past the maximum age, for an
//! unknown `kid` at most once per interval, after a failure at a bounded
//! rate) and how long stale keys stay usable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use serde_json::Value;

use super::config::check_jwks_url;
use super::{
    JWKS_RETRY_WITHOUT_KEYS, JWKS_TIMEOUT, MAX_JWKS_BYTES, MAX_JWKS_REDIRECTS, TokenManager,
};

pub(super) struct JwksKey {
    pub(super) key: DecodingKey,
    pub(super) alg: Option<KeyAlgorithm>,
}

#[derive(Default)]
pub(super) struct Jwks {
    pub(super) keys: HashMap<String, JwksKey>,
    /// Keys published without a `kid`, usable only when they are alone.
    pub(super) anonymous: Vec<JwksKey>,
}

/// The keys and when they were fetched. Wall-clock time, not `Instant`: a
/// frozen or snapshotted execution environment's monotonic clock is not
/// promised to advance while frozen, and keys must not look younger than
/// they are.
pub(super) struct KeySet {
    pub(super) jwks: Jwks,
    pub(super) fetched_at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Freshness {
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
pub(super) enum Refetch {
    Schedule,
    UnknownKid,
}

#[derive(Default)]
pub(super) struct FetchLog {
    /// Last fetch for an unknown `kid` or on schedule, success or not (the
    /// cold-start fetch does not count, so a rotation right after it is
    /// still picked up).
    last_attempt: Option<Instant>,
    /// Last fetch that failed: retries wait at least the refetch interval.
    last_failure: Option<Instant>,
}

impl TokenManager {
    pub(super) async fn freshness(&self) -> Freshness {
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

    /// Fetches the JWKS, unless the rate limits for `why` say no (`None`:
    /// cold start, always). Returns whether new keys are loaded, by this
    /// call or by a concurrent one it waited for.
    pub(super) async fn refresh_jwks(&self, why: Option<Refetch>) -> bool {
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
        match crate::coldstart::timed("jwks fetch", fetch_jwks(http, url)).await {
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
}

/// The JWKS client for `url`: a timeout, and redirects only to URLs the
/// configuration would accept (https, or http on loopback). Only an
/// https:// URL reads the system's roots (a few milliseconds of a cold
/// start); for an http:// one (loopback only) the client trusts no root at
/// all, so a redirect to https:// fails its handshake: closed, as any
/// failed fetch.
pub(super) fn jwks_client(url: &str) -> reqwest::Client {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= MAX_JWKS_REDIRECTS {
            attempt.error("too many JWKS redirects")
        } else if check_jwks_url(attempt.url().as_str()).is_err() {
            attempt.error("JWKS redirect to a URL that is neither https nor loopback")
        } else {
            attempt.follow()
        }
    });
    install_tls_provider();
    let builder = reqwest::Client::builder()
        .timeout(JWKS_TIMEOUT)
        .redirect(redirects);
    let tls = if url.trim_start().starts_with("http://") {
        crate::https::tls_with(rustls::RootCertStore::empty())
    } else {
        crate::https::system_tls()
    };
    let builder = match tls {
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
    crate::coldstart::sync("jwks parse", || parse_jwks(&body))
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
pub(super) fn parse_jwks(body: &[u8]) -> Result<Jwks, String> {
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
        tokio::time::timeout(Duration::from_secs(3), fetch_jwks(&jwks_client(url), url))
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
