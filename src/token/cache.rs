//! The verified-token cache: a JWKS-verified token is remembered by the
//! SHA-256 of its bytes, for the key generation that verified it, so the
//! same token sent again costs a hash and a lookup instead of an RSA/ECDSA
//! check. A hit is re-judged on what can change (`exp` and `nbf` against
//! the clock, the keys still fresh and of the same generation); the cache
//! holds at most [`VERIFIED_CACHE_ENTRIES`](super::VERIFIED_CACHE_ENTRIES),
//! oldest out first.

use std::collections::{HashMap, VecDeque};

use super::jwks::Freshness;
use super::{AuthError, TokenManager};
use crate::tenant::TenantContext;

/// What a verification established, and the two claims that make it expire.
#[derive(Clone)]
pub(super) struct Verified {
    pub(super) context: TenantContext,
    pub(super) exp: u64,
    pub(super) nbf: Option<u64>,
}

/// Verified tokens by SHA-256 of the token, for one key generation;
/// oldest out first when full.
#[derive(Default)]
pub(super) struct VerifiedCache {
    generation: u64,
    entries: HashMap<[u8; 32], Verified>,
    order: VecDeque<[u8; 32]>,
}

impl TokenManager {
    /// The verdict on a token verified before, if it still holds: the keys
    /// are fresh and the same generation that verified it, and `exp`/`nbf`
    /// pass against the clock now, with the same leeway as a verification.
    pub(super) async fn cached(
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

    pub(super) fn remember(&self, digest: [u8; 32], generation: u64, verified: Verified) {
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
}

/// The verified-token cache must never let through a token that a full
/// verification would refuse now.
#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use serde_json::Value;
    use std::sync::Arc;
    use std::time::Duration;

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
        TokenManager::new(crate::token::config::token_config(&get).unwrap()).await
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
