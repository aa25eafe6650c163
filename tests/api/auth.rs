//! The token manager at the edge: bad tokens are 401 problems with a
//! WWW-Authenticate challenge, and never reach the database.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{SECRET, TestApp, claims_for, now, raw_hs256, sign_hs256, sign_with};

/// Sends `authorization` (as the raw header value) and expects 401.
async fn assert_unauthorized(app: &TestApp, authorization: Option<&str>) -> (String, String) {
    let mut request = Request::get("/users");
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let r = app.send(request.body(Body::empty()).unwrap()).await;
    let detail = r.assert_problem(StatusCode::UNAUTHORIZED);
    let challenge = r
        .header("www-authenticate")
        .expect("WWW-Authenticate")
        .to_owned();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    (detail, challenge)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn bad_tokens_are_401_and_issue_no_query() {
    let app = TestApp::spawn().await;
    // Warm the connection with one good request, then watch it.
    assert_eq!(
        app.get("/users", &app.token("acme")).await.status,
        StatusCode::OK
    );
    let before = app.app_activity().await;
    assert_eq!(before.len(), 1);

    let (detail, challenge) = assert_unauthorized(&app, None).await;
    assert!(detail.contains("Bearer"), "{detail}");
    assert!(
        !challenge.contains("error="),
        "RFC 6750: no error code when credentials are missing"
    );

    let mut expired = claims_for("acme");
    expired["exp"] = json!(now() - 3600);
    let mut not_yet = claims_for("acme");
    not_yet["nbf"] = json!(now() + 3600);
    let mut no_tenant = claims_for("acme");
    no_tenant
        .as_object_mut()
        .unwrap()
        .remove("custom:tenant_id");
    let mut no_exp = claims_for("acme");
    no_exp.as_object_mut().unwrap().remove("exp");
    let wrong_secret = sign_with(
        Algorithm::HS256,
        &claims_for("acme"),
        b"another-secret-0123456789abcdef0123",
    );
    let hs384 = sign_with(Algorithm::HS384, &claims_for("acme"), SECRET.as_bytes());
    let claims = claims_for("acme").to_string();
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    let good = app.token("acme");
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(claims_for("globex").to_string());
        format!("{}.{}.{}", parts[0], other, parts[2])
    };

    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", bearer("garbage"), "well-formed"),
        ("three dots of junk", bearer("a.b.c"), "well-formed"),
        ("expired", bearer(&sign_hs256(&expired)), "expired"),
        (
            "not yet valid",
            bearer(&sign_hs256(&not_yet)),
            "not valid yet",
        ),
        (
            "no exp",
            bearer(&sign_hs256(&no_exp)),
            "required claim \"exp\"",
        ),
        ("wrong signature", bearer(&wrong_secret), "signature"),
        ("tampered payload", bearer(&tampered), "signature"),
        ("wrong algorithm", bearer(&hs384), "not accepted"),
        ("alg none", bearer(&alg_none), "well-formed"),
        (
            "missing tenant claim",
            bearer(&sign_hs256(&no_tenant)),
            "custom:tenant_id",
        ),
        (
            "exp as a string",
            bearer(&raw_hs256(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"exp":"{}","custom:tenant_id":"acme"}}"#, now() + 3600),
            )),
            "\"exp\"",
        ),
        (
            "nbf as a string",
            bearer(&raw_hs256(
                r#"{"alg":"HS256"}"#,
                &format!(
                    r#"{{"exp":{},"nbf":"0","custom:tenant_id":"acme"}}"#,
                    now() + 3600
                ),
            )),
            "wrong type",
        ),
        (
            "Basic scheme",
            format!("Basic {}", URL_SAFE_NO_PAD.encode("a:b")),
            "Bearer",
        ),
        ("no token after the scheme", "Bearer ".into(), "Bearer"),
        (
            "token with a space",
            format!("Bearer {good} x"),
            "malformed",
        ),
        (
            "oversized token",
            bearer(&"a".repeat(9 * 1024)),
            "too large",
        ),
        (
            "header not base64url",
            bearer(&format!("!!!.{}", good.split_once('.').unwrap().1)),
            "well-formed",
        ),
        (
            "payload not base64url",
            bearer(&format!(
                "{}.%%%.{}",
                good.split('.').next().unwrap(),
                good.rsplit('.').next().unwrap()
            )),
            "signature",
        ),
        (
            "payload not JSON",
            bearer(&raw_hs256(r#"{"alg":"HS256"}"#, "not json")),
            "well-formed",
        ),
        (
            "kid with path characters",
            bearer(&raw_hs256(
                r#"{"alg":"HS256","kid":"../../etc/passwd"}"#,
                &format!(r#"{{"exp":{}}}"#, now() + 60),
            )),
            "custom:tenant_id",
        ),
    ];
    for (name, value, expected) in &cases {
        let (detail, _) = assert_unauthorized(&app, Some(value)).await;
        assert!(detail.contains(expected), "{name}: {detail}");
    }

    // Two Authorization headers are refused, even if one is good.
    let r = app
        .send(
            Request::get("/users")
                .header(header::AUTHORIZATION, bearer(&good))
                .header(header::AUTHORIZATION, bearer(&good))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    r.assert_problem(StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_request")
    );

    assert_eq!(
        app.app_activity().await,
        before,
        "a rejected request ran SQL"
    );
}

#[tokio::test]
async fn hostile_tenant_claims_are_refused_and_the_table_is_intact() {
    let app = TestApp::spawn().await;
    app.create_user("acme", "ada@acme.test", "Ada").await;
    let before = app.app_activity().await;
    let hostile: Vec<Value> = vec![
        json!("x'; DROP TABLE users; --"),
        json!("acme' OR '1'='1"),
        json!(""),
        json!(" acme"),
        json!("acme\u{0}"),
        json!("a".repeat(65)),
        json!("ténant"),
        json!(42),
        json!(["acme"]),
        json!({"id": "acme"}),
        json!(null),
        json!(true),
    ];
    for value in hostile {
        let mut claims = claims_for("acme");
        claims["custom:tenant_id"] = value.clone();
        let (detail, challenge) =
            assert_unauthorized(&app, Some(&bearer(&sign_hs256(&claims)))).await;
        assert!(detail.contains("custom:tenant_id"), "{value}: {detail}");
        assert!(challenge.contains("invalid_token"));
    }
    assert_eq!(app.app_activity().await, before);
    assert_eq!(app.all_rows().await.len(), 1, "users table intact");
}

#[tokio::test]
async fn a_lowercase_bearer_scheme_is_accepted() {
    let app = TestApp::spawn().await;
    let r = app
        .send(
            Request::get("/users")
                .header(
                    header::AUTHORIZATION,
                    format!("bearer {}", app.token("acme")),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn issuer_audience_and_tenant_claim_are_configurable() {
    let app = TestApp::spawn_with(&[
        ("JWT_ISSUER", "https://issuer.test"),
        ("JWT_AUDIENCE", "users-api"),
        ("TENANT_CLAIM", "org"),
    ])
    .await;
    let claims = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = json!({"sub": "u", "org": "acme", "exp": now() + 600});
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            c["aud"] = json!(aud);
        }
        bearer(&sign_hs256(&c))
    };
    let good = claims(Some("https://issuer.test"), Some("users-api"));
    let r = app
        .send(
            Request::get("/users")
                .header(header::AUTHORIZATION, &good)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for (name, value, expected) in [
        (
            "wrong issuer",
            claims(Some("https://evil.test"), Some("users-api")),
            "issuer",
        ),
        (
            "no issuer",
            claims(None, Some("users-api")),
            "required claim \"iss\"",
        ),
        (
            "wrong audience",
            claims(Some("https://issuer.test"), Some("other")),
            "audience",
        ),
        (
            "no audience",
            claims(Some("https://issuer.test"), None),
            "required claim \"aud\"",
        ),
    ] {
        let (detail, _) = assert_unauthorized(&app, Some(&value)).await;
        assert!(detail.contains(expected), "{name}: {detail}");
    }
    // The default claim name means nothing when another is configured.
    let mut default_claim = claims_for("acme");
    default_claim["iss"] = json!("https://issuer.test");
    default_claim["aud"] = json!("users-api");
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&sign_hs256(&default_claim)))).await;
    assert!(detail.contains("\"org\""), "{detail}");
}

/// A JWKS endpoint over real HTTP on a loopback port, whose document can
/// be swapped (key rotation) or withheld (IdP down), and which counts hits.
#[derive(Clone)]
struct Jwks {
    doc: Arc<Mutex<Value>>,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    url: String,
}

impl Jwks {
    fn set(&self, doc: Value) {
        *self.doc.lock().unwrap() = doc;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn jwks_server(doc: Value) -> Jwks {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwks = Jwks {
        doc: Arc::new(Mutex::new(doc)),
        up: Arc::new(AtomicBool::new(true)),
        hits: Arc::new(AtomicUsize::new(0)),
        url: format!("http://{addr}/.well-known/jwks.json"),
    };
    let state = jwks.clone();
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                state.hits.fetch_add(1, Ordering::SeqCst);
                if !state.up.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                let doc = state.doc.lock().unwrap().clone();
                axum::Json(doc).into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    jwks
}

async fn serve_jwks(doc: Value) -> SocketAddr {
    let jwks = jwks_server(doc).await;
    jwks.url
        .trim_start_matches("http://")
        .trim_end_matches("/.well-known/jwks.json")
        .parse()
        .unwrap()
}

struct RsaKey {
    encoding: EncodingKey,
    jwk: Value,
}

fn rsa_key(kid: &str) -> RsaKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let jwk = json!({
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    });
    RsaKey {
        encoding: EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
        jwk,
    }
}

fn ec_key(kid: &str) -> RsaKey {
    use p256::pkcs8::EncodePrivateKey;
    let key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let point = key.verifying_key().to_encoded_point(false);
    let jwk = json!({
        "kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    });
    RsaKey {
        encoding: EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes()),
        jwk,
    }
}

fn sign_kid(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_the_jwks() {
    let rsa = rsa_key("rsa-1");
    let ec = ec_key("ec-1");
    let addr = serve_jwks(json!({"keys": [rsa.jwk, ec.jwk, {"kty": "oct", "kid": "junk"}]})).await;
    let url = format!("http://{addr}/.well-known/jwks.json");
    // HS256 stays configured too: each algorithm has its own key source.
    let app = TestApp::spawn_with(&[
        ("JWT_JWKS_URL", &url),
        ("JWT_ALGORITHMS", "RS256,ES256,HS256"),
    ])
    .await;
    let claims = claims_for("acme");

    let rs = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims);
    assert_eq!(app.get("/users", &rs).await.status, StatusCode::OK);
    let es = sign_kid(Algorithm::ES256, "ec-1", &ec.encoding, &claims);
    assert_eq!(app.get("/users", &es).await.status, StatusCode::OK);
    assert_eq!(
        app.get("/users", &app.token("acme")).await.status,
        StatusCode::OK
    );

    // Unknown kid, a key used for the wrong algorithm, a kid naming the
    // RSA key on an ES256 token.
    let unknown = sign_kid(Algorithm::RS256, "rsa-2", &rsa.encoding, &claims);
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&unknown))).await;
    assert!(detail.contains("unknown"), "{detail}");
    let mismatched = sign_kid(Algorithm::ES256, "rsa-1", &ec.encoding, &claims);
    assert_unauthorized(&app, Some(&bearer(&mismatched))).await;

    // Algorithm confusion: an HS256 token "signed" with the RSA public key
    // is checked against the HS256 secret, and fails.
    let public_n = rsa_public_pem_like(&rsa);
    let confused = sign_with(Algorithm::HS256, &claims, public_n.as_bytes());
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&confused))).await;
    assert!(detail.contains("signature"), "{detail}");
}

fn rsa_public_pem_like(key: &RsaKey) -> String {
    key.jwk["n"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_rs256_only_deployment_refuses_hs256_tokens() {
    let rsa = rsa_key("rsa-1");
    let addr = serve_jwks(json!({"keys": [rsa.jwk]})).await;
    let url = format!("http://{addr}/.well-known/jwks.json");
    let app = TestApp::spawn_with(&[("JWT_JWKS_URL", &url), ("JWT_ALGORITHMS", "RS256")]).await;
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&app.token("acme")))).await;
    assert!(detail.contains("not accepted"), "{detail}");
}

#[tokio::test]
async fn an_unreachable_jwks_is_503_not_401() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let app = TestApp::spawn_with(&[("JWT_JWKS_URL", &url), ("JWT_ALGORITHMS", "RS256")]).await;
    let rsa = rsa_key("rsa-1");
    let token = sign_kid(
        Algorithm::RS256,
        "rsa-1",
        &rsa.encoding,
        &claims_for("acme"),
    );
    let r = app.get("/users", &token).await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval_and_run_no_sql() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    let app =
        TestApp::spawn_with(&[("JWT_JWKS_URL", &jwks.url), ("JWT_ALGORITHMS", "RS256")]).await;
    let claims = claims_for("acme");
    let good = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims);
    assert_eq!(app.get("/users", &good).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 1, "fetched once at cold start");
    let before = app.app_activity().await;

    // Junk kids, including path and SQL characters: one refetch, then none.
    for kid in [
        "nope",
        "../../../etc/passwd",
        "' OR 1=1 --",
        "%00",
        &"k".repeat(300),
    ] {
        for _ in 0..5 {
            let junk = sign_kid(Algorithm::RS256, kid, &rsa.encoding, &claims);
            let (detail, _) = assert_unauthorized(&app, Some(&bearer(&junk))).await;
            assert!(detail.contains("unknown"), "{kid}: {detail}");
        }
    }
    assert_eq!(jwks.hits(), 2, "25 junk tokens caused one refetch");
    assert_eq!(
        app.app_activity().await,
        before,
        "no SQL for rejected tokens"
    );
    assert_eq!(app.get("/users", &good).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_jwks_is_picked_up_and_the_removed_key_stops_working() {
    let old = rsa_key("key-old");
    let new = rsa_key("key-new");
    let jwks = jwks_server(json!({"keys": [old.jwk]})).await;
    let app =
        TestApp::spawn_with(&[("JWT_JWKS_URL", &jwks.url), ("JWT_ALGORITHMS", "RS256")]).await;
    let claims = claims_for("acme");
    let by_old = sign_kid(Algorithm::RS256, "key-old", &old.encoding, &claims);
    let by_new = sign_kid(Algorithm::RS256, "key-new", &new.encoding, &claims);
    assert_eq!(app.get("/users", &by_old).await.status, StatusCode::OK);

    // The IdP adds the new key and removes the old one.
    jwks.set(json!({"keys": [new.jwk]}));
    assert_eq!(
        app.get("/users", &by_new).await.status,
        StatusCode::OK,
        "new key picked up"
    );
    assert_unauthorized(&app, Some(&bearer(&by_old))).await;
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test]
async fn an_idp_down_at_cold_start_is_503_and_heals_without_a_restart() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    jwks.up.store(false, Ordering::SeqCst);
    let app = TestApp::spawn_with(&[
        ("JWT_JWKS_URL", &jwks.url),
        ("JWT_ALGORITHMS", "RS256"),
        ("JWT_JWKS_REFETCH_SECONDS", "1"),
    ])
    .await;
    let token = sign_kid(
        Algorithm::RS256,
        "rsa-1",
        &rsa.encoding,
        &claims_for("acme"),
    );
    app.get("/users", &token)
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    jwks.up.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
}
