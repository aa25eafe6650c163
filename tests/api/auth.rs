//! The token manager at the edge: bad tokens are 401 problems with a
//! WWW-Authenticate challenge, and never reach the database; the token
//! settings fail closed (issuer and audience required with a JWKS, keys that
//! expire, a bounded JWKS body, no test material in production).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tenant_users::clock::Clock;
use tenant_users::token::MAX_JWKS_BYTES;
use tenant_users::token::config::FIXTURE_HS256_SECRET;

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

/// A JWKS endpoint that serves `doc` padded past [`MAX_JWKS_BYTES`] with
/// junk the parser would ignore: without the size guard it would load.
/// `chunked`: streamed without a Content-Length.
async fn oversized_jwks_server(doc: Value, chunked: bool) -> Jwks {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut padded = doc;
    padded["padding"] = json!("x".repeat(MAX_JWKS_BYTES));
    let body = padded.to_string().into_bytes();
    let jwks = Jwks {
        doc: Arc::new(Mutex::new(Value::Null)),
        up: Arc::new(AtomicBool::new(true)),
        hits: Arc::new(AtomicUsize::new(0)),
        url: format!("http://{addr}/.well-known/jwks.json"),
    };
    let hits = jwks.hits.clone();
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            hits.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = if chunked {
                    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
                    Body::from_stream(futures_util::stream::iter(chunks))
                } else {
                    Body::from(body)
                };
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    jwks
}

const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_test";
const CLIENT: &str = "client-a";

/// Claims as a Cognito ID token for the app client [`CLIENT`] carries them.
fn id_claims(tenant: &str) -> Value {
    let mut claims = claims_for(tenant);
    claims["iss"] = json!(ISSUER);
    claims["aud"] = json!(CLIENT);
    claims["token_use"] = json!("id");
    claims
}

/// Claims as a Cognito access token carries them: no `aud`, a `client_id`.
fn access_claims(tenant: &str, client_id: &str) -> Value {
    let mut claims = claims_for(tenant);
    claims["iss"] = json!(ISSUER);
    claims["client_id"] = json!(client_id);
    claims["token_use"] = json!("access");
    claims
}

/// A service verifying RS256 tokens from `url`, with the issuer and
/// audience a JWKS requires; `extra` comes first, so it overrides.
async fn jwks_app(url: &str, extra: &[(&str, &str)]) -> TestApp {
    jwks_app_on(url, extra, Clock::system()).await
}

/// As `jwks_app`, with `clock` keeping the keys' age and the refetch spacing.
async fn jwks_app_on(url: &str, extra: &[(&str, &str)], clock: Clock) -> TestApp {
    let mut vars = extra.to_vec();
    vars.extend([
        ("JWT_JWKS_URL", url),
        ("JWT_ISSUER", ISSUER),
        ("JWT_AUDIENCE", CLIENT),
        ("JWT_ALGORITHMS", "RS256"),
    ]);
    TestApp::spawn_with_clock(&vars, clock).await
}

struct RsaKey {
    encoding: EncodingKey,
    jwk: Value,
    /// The RSA key itself (None for EC keys), for algorithm-confusion forgeries.
    private_rsa: Option<rsa::RsaPrivateKey>,
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
        private_rsa: Some(key),
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
        private_rsa: None,
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
    let jwks = jwks_server(json!({"keys": [rsa.jwk, ec.jwk, {"kty": "oct", "kid": "junk"}]})).await;
    // HS256 stays configured too: each algorithm has its own key source.
    let app = jwks_app(&jwks.url, &[("JWT_ALGORITHMS", "RS256,ES256,HS256")]).await;
    let claims = id_claims("acme");

    let rs = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims);
    assert_eq!(app.get("/users", &rs).await.status, StatusCode::OK);
    let es = sign_kid(Algorithm::ES256, "ec-1", &ec.encoding, &claims);
    assert_eq!(app.get("/users", &es).await.status, StatusCode::OK);
    assert_eq!(
        app.get("/users", &sign_hs256(&claims)).await.status,
        StatusCode::OK
    );

    // Unknown kid, a key used for the wrong algorithm, a kid naming the
    // RSA key on an ES256 token.
    let unknown = sign_kid(Algorithm::RS256, "rsa-2", &rsa.encoding, &claims);
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&unknown))).await;
    assert!(detail.contains("unknown"), "{detail}");
    let mismatched = sign_kid(Algorithm::ES256, "rsa-1", &ec.encoding, &claims);
    assert_unauthorized(&app, Some(&bearer(&mismatched))).await;
    // Issuer and audience apply to HS256 tokens too once configured.
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&app.token("acme")))).await;
    assert!(detail.contains("\"iss\""), "{detail}");
}

/// The public key in the encodings an attacker would try as an HMAC secret.
fn public_key_encodings(key: &rsa::RsaPrivateKey) -> Vec<(&'static str, Vec<u8>)> {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let public = key.to_public_key();
    vec![
        (
            "SPKI PEM",
            public
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
                .into_bytes(),
        ),
        (
            "PKCS#1 PEM",
            public.to_pkcs1_pem(LineEnding::LF).unwrap().into_bytes(),
        ),
        (
            "SPKI DER",
            public.to_public_key_der().unwrap().as_bytes().to_vec(),
        ),
        (
            "PKCS#1 DER",
            public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        ),
    ]
}

#[tokio::test]
async fn hs256_tokens_keyed_with_the_rsa_public_key_are_refused_and_run_no_sql() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    let claims = id_claims("acme");
    let forged: Vec<(&str, String)> = public_key_encodings(rsa.private_rsa.as_ref().unwrap())
        .into_iter()
        .map(|(name, bytes)| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            let token =
                jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&bytes)).unwrap();
            (name, token)
        })
        .collect();
    let genuine = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &claims);

    // RS256 only; then HS256 beside it, with a secret of its own.
    for (algorithms, expected) in [("RS256", "not accepted"), ("HS256,RS256", "signature")] {
        let app = jwks_app(&jwks.url, &[("JWT_ALGORITHMS", algorithms)]).await;
        assert_eq!(app.get("/users", &genuine).await.status, StatusCode::OK);
        let before = app.app_activity().await;
        for (name, token) in &forged {
            let (detail, _) = assert_unauthorized(&app, Some(&bearer(token))).await;
            assert!(detail.contains(expected), "{algorithms}, {name}: {detail}");
        }
        assert_eq!(
            app.app_activity().await,
            before,
            "{algorithms}: a forged token ran SQL"
        );
        if algorithms.contains("HS256") {
            // The same claims and kid with the real secret pass: the key is
            // what the forgeries got wrong.
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            let real = jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(crate::common::SECRET.as_bytes()),
            )
            .unwrap();
            assert_eq!(app.get("/users", &real).await.status, StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn the_audience_is_aud_or_else_client_id_as_api_gateway_checks_it() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    let app = jwks_app(&jwks.url, &[("JWT_AUDIENCE", "client-a, client-b")]).await;
    let sign = |claims: &Value| sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, claims);
    let with = |mut claims: Value, edits: &[(&str, Value)]| {
        for (k, v) in edits {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(*k);
            } else {
                claims[*k] = v.clone();
            }
        }
        claims
    };

    for (name, claims) in [
        ("ID token for client-a", id_claims("acme")),
        (
            "ID token, aud list naming client-b",
            with(id_claims("acme"), &[("aud", json!(["other", "client-b"]))]),
        ),
        (
            "access token for client-b",
            access_claims("acme", "client-b"),
        ),
    ] {
        let r = app.get("/users", &sign(&claims)).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    }

    let before = app.app_activity().await;
    for (name, claims, expected) in [
        (
            "aud of another client",
            with(id_claims("acme"), &[("aud", json!("client-c"))]),
            "audience is not accepted",
        ),
        (
            "aud decides when both are present",
            with(
                id_claims("acme"),
                &[("aud", json!("client-c")), ("client_id", json!(CLIENT))],
            ),
            "audience is not accepted",
        ),
        (
            "an empty aud list is an aud",
            with(
                id_claims("acme"),
                &[("aud", json!([])), ("client_id", json!(CLIENT))],
            ),
            "audience is not accepted",
        ),
        (
            "access token of another client",
            access_claims("acme", "client-c"),
            "client_id",
        ),
        (
            "neither aud nor client_id",
            with(id_claims("acme"), &[("aud", Value::Null)]),
            "required claim \"aud\"",
        ),
        (
            "aud not a string",
            with(id_claims("acme"), &[("aud", json!(42))]),
            "wrong type",
        ),
        (
            "client_id not a string",
            with(
                access_claims("acme", CLIENT),
                &[("client_id", json!([CLIENT]))],
            ),
            "wrong type",
        ),
        (
            "no issuer",
            with(id_claims("acme"), &[("iss", Value::Null)]),
            "required claim \"iss\"",
        ),
        (
            "another user pool",
            with(
                id_claims("acme"),
                &[(
                    "iss",
                    json!("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_other"),
                )],
            ),
            "issuer",
        ),
    ] {
        let (detail, _) = assert_unauthorized(&app, Some(&bearer(&sign(&claims)))).await;
        assert!(detail.contains(expected), "{name}: {detail}");
    }
    assert_eq!(app.app_activity().await, before, "a rejected token ran SQL");
}

#[tokio::test]
async fn token_use_must_match_when_configured() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    let sign = |claims: &Value| sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, claims);
    let id = id_claims("acme");
    let access = access_claims("acme", CLIENT);
    let mut unmarked = id_claims("acme");
    unmarked.as_object_mut().unwrap().remove("token_use");
    let mut not_a_string = id_claims("acme");
    not_a_string["token_use"] = json!(["id"]);

    let app = jwks_app(&jwks.url, &[("JWT_TOKEN_USE", "access")]).await;
    assert_eq!(
        app.get("/users", &sign(&access)).await.status,
        StatusCode::OK
    );
    for (name, claims, expected) in [
        ("ID token", &id, "this API takes access tokens"),
        ("no token_use", &unmarked, "required claim \"token_use\""),
        ("token_use not a string", &not_a_string, "wrong type"),
    ] {
        let (detail, _) = assert_unauthorized(&app, Some(&bearer(&sign(claims)))).await;
        assert!(detail.contains(expected), "{name}: {detail}");
    }

    let app = jwks_app(&jwks.url, &[("JWT_TOKEN_USE", "id")]).await;
    assert_eq!(app.get("/users", &sign(&id)).await.status, StatusCode::OK);
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&sign(&access)))).await;
    assert!(detail.contains("this API takes id tokens"), "{detail}");
}

#[tokio::test]
async fn an_rs256_only_deployment_refuses_hs256_tokens() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    let app = jwks_app(&jwks.url, &[]).await;
    let (detail, _) =
        assert_unauthorized(&app, Some(&bearer(&sign_hs256(&id_claims("acme"))))).await;
    assert!(detail.contains("not accepted"), "{detail}");
}

#[tokio::test]
async fn an_unreachable_jwks_is_503_not_401() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let app = jwks_app(&url, &[]).await;
    let rsa = rsa_key("rsa-1");
    let token = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &id_claims("acme"));
    let r = app.get("/users", &token).await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn an_oversized_jwks_is_refused_with_and_without_content_length() {
    let rsa = rsa_key("rsa-1");
    let token = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &id_claims("acme"));
    for chunked in [false, true] {
        let jwks = oversized_jwks_server(json!({"keys": [rsa.jwk]}), chunked).await;
        let app = jwks_app(&jwks.url, &[]).await;
        let r = app.get("/users", &token).await;
        r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(jwks.hits() >= 1, "chunked: {chunked}: the JWKS was fetched");
    }
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval_and_run_no_sql() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    let app = jwks_app(&jwks.url, &[]).await;
    let claims = id_claims("acme");
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
    let app = jwks_app(&jwks.url, &[]).await;
    let claims = id_claims("acme");
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
async fn a_withdrawn_key_stops_working_once_the_keys_pass_their_max_age() {
    let old = rsa_key("key-old");
    let new = rsa_key("key-new");
    let jwks = jwks_server(json!({"keys": [old.jwk, new.jwk]})).await;
    // The keys' age is kept by a clock the test moves. The default refetch
    // interval (300 s) does not hold back the schedule.
    let clock = Clock::manual();
    let app = jwks_app_on(
        &jwks.url,
        &[("JWT_JWKS_MAX_AGE_SECONDS", "1")],
        clock.clone(),
    )
    .await;
    let claims = id_claims("acme");
    let by_old = sign_kid(Algorithm::RS256, "key-old", &old.encoding, &claims);
    let by_new = sign_kid(Algorithm::RS256, "key-new", &new.encoding, &claims);
    assert_eq!(app.get("/users", &by_old).await.status, StatusCode::OK);

    // The IdP withdraws the old key; no token names an unknown kid, so
    // only the schedule can notice, and not before the maximum age.
    jwks.set(json!({"keys": [new.jwk]}));
    clock.advance(Duration::from_millis(999));
    assert_eq!(app.get("/users", &by_old).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 1, "no refetch while the keys are fresh");
    clock.advance(Duration::from_millis(1));
    let before = app.app_activity().await;
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&by_old))).await;
    assert!(detail.contains("unknown"), "{detail}");
    assert_eq!(app.app_activity().await, before, "a rejected token ran SQL");
    assert_eq!(jwks.hits(), 2, "one scheduled refetch");
    assert_eq!(app.get("/users", &by_new).await.status, StatusCode::OK);

    // Keys keep being refreshed on schedule while they are in use.
    clock.advance(Duration::from_secs(1));
    assert_eq!(app.get("/users", &by_new).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 3);
}

#[tokio::test]
async fn stale_keys_outlive_a_failed_refetch_until_twice_max_age_then_503() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    // Time moves only when the test says: each step lands exactly where it
    // is meant to, however slow the machine.
    let clock = Clock::manual();
    let app = jwks_app_on(
        &jwks.url,
        &[
            ("JWT_JWKS_MAX_AGE_SECONDS", "1"),
            ("JWT_JWKS_REFETCH_SECONDS", "1"),
        ],
        clock.clone(),
    )
    .await;
    let token = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &id_claims("acme"));
    let ms = Duration::from_millis;
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 1);

    // The IdP goes down. At max age the refetch fails, and the stale keys
    // still serve; the failure holds back the next try for the interval.
    jwks.up.store(false, Ordering::SeqCst);
    clock.advance(ms(1000));
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 2, "one refetch attempt");
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    clock.advance(ms(999));
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 2, "no retry within the refetch interval");

    // At twice max age the stale keys are dropped: 503, not 401, and
    // still at most one attempt per interval.
    clock.advance(ms(1));
    for _ in 0..5 {
        let r = app.get("/users", &token).await;
        r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(jwks.hits(), 3, "five requests, one attempt");

    // The IdP is back: the next allowed attempt heals, without a restart.
    jwks.up.store(true, Ordering::SeqCst);
    clock.advance(ms(999));
    app.get("/users", &token)
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(jwks.hits(), 3, "still within the interval after a failure");
    clock.advance(ms(1));
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 4);
}

#[tokio::test]
async fn an_idp_down_at_cold_start_is_503_and_heals_without_a_restart() {
    let rsa = rsa_key("rsa-1");
    let jwks = jwks_server(json!({"keys": [rsa.jwk]})).await;
    jwks.up.store(false, Ordering::SeqCst);
    let clock = Clock::manual();
    let app = jwks_app_on(
        &jwks.url,
        &[("JWT_JWKS_REFETCH_SECONDS", "1")],
        clock.clone(),
    )
    .await;
    let token = sign_kid(Algorithm::RS256, "rsa-1", &rsa.encoding, &id_claims("acme"));
    app.get("/users", &token)
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    jwks.up.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_millis(999));
    app.get("/users", &token)
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(jwks.hits(), 1, "no retry within the interval");
    clock.advance(Duration::from_millis(1));
    assert_eq!(app.get("/users", &token).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 2);
}

/// Runs a real binary of the workspace (`api`, or the local tool
/// `tenant-users`) with only `env` (no inherited ALLOW_TEST_FIXTURES from
/// make test) and returns (success, stdout + stderr).
fn run_binary(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(crate::common::workspace_bin(bin))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_function_refuses_to_start_on_unsafe_token_settings() {
    let db = ("DATABASE_URL", "postgres://app@127.0.0.1:1/app");
    let jwks = ("JWT_JWKS_URL", "https://idp.example/.well-known/jwks.json");
    // In Lambda mode: the configuration is read before the runtime API is
    // contacted, so a bad one stops the function at its cold start.
    let lambda = [
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1"),
        ("AWS_LAMBDA_FUNCTION_NAME", "tenant-users-test"),
    ];
    let secret = ("JWT_HS256_SECRET", crate::common::SECRET);
    for (name, env, expected) in [
        (
            "JWKS without an issuer",
            vec![db, jwks, ("JWT_AUDIENCE", CLIENT)],
            "JWT_ISSUER",
        ),
        (
            "JWKS without an audience",
            vec![db, jwks, ("JWT_ISSUER", ISSUER)],
            "JWT_AUDIENCE",
        ),
        (
            "JWKS over plain http",
            vec![
                db,
                ("JWT_JWKS_URL", "http://idp.example/jwks.json"),
                ("JWT_ISSUER", ISSUER),
                ("JWT_AUDIENCE", CLIENT),
            ],
            "JWT_JWKS_URL",
        ),
        ("HS256 in Lambda", vec![db, secret], "JWT_ALLOW_HS256"),
        (
            "the fixture secret",
            vec![
                db,
                ("JWT_HS256_SECRET", FIXTURE_HS256_SECRET),
                ("JWT_ALLOW_HS256", "true"),
            ],
            "ALLOW_TEST_FIXTURES",
        ),
    ] {
        let env: Vec<_> = env.into_iter().chain(lambda).collect();
        let (ok, output) = run_binary("api", &[], &env);
        assert!(!ok, "{name}: started");
        assert!(output.contains(expected), "{name}: {output}");
    }

    // `token` reads the same settings: the fixture secret works only under
    // ALLOW_TEST_FIXTURES=1, as in make test.
    let fixture = ("JWT_HS256_SECRET", FIXTURE_HS256_SECRET);
    let (ok, output) = run_binary("tenant-users", &["token", "--tenant", "acme"], &[fixture]);
    assert!(!ok && output.contains("ALLOW_TEST_FIXTURES"), "{output}");
    let (ok, output) = run_binary(
        "tenant-users",
        &["token", "--tenant", "acme"],
        &[fixture, ("ALLOW_TEST_FIXTURES", "1")],
    );
    assert!(ok, "{output}");
    assert_eq!(output.trim().split('.').count(), 3, "{output}");
}

/// A function without a route to the IdP (private subnets, no NAT) gets
/// its keys inline: `JWT_JWKS` holds the key set itself.
#[tokio::test]
async fn an_inline_jwks_verifies_without_any_network_and_never_ages() {
    let rsa = rsa_key("inline-1");
    let other = rsa_key("elsewhere");
    let document = json!({"keys": [rsa.jwk]}).to_string();
    let clock = Clock::manual();
    let app = TestApp::spawn_with_clock(
        &[
            ("JWT_JWKS", &document),
            ("JWT_ISSUER", ISSUER),
            ("JWT_AUDIENCE", CLIENT),
            // Were the inline keys to age like fetched ones, they would be
            // unusable after twice this.
            ("JWT_JWKS_MAX_AGE_SECONDS", "1"),
        ],
        clock.clone(),
    )
    .await;
    let token = sign_kid(
        Algorithm::RS256,
        "inline-1",
        &rsa.encoding,
        &id_claims("acme"),
    );
    let r = app.get("/users", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // A key the set does not hold: 401 at once, there is nowhere to fetch.
    let started = Instant::now();
    let unknown = sign_kid(
        Algorithm::RS256,
        "elsewhere",
        &other.encoding,
        &id_claims("acme"),
    );
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&unknown))).await;
    assert!(detail.contains("signing key is unknown"), "{detail}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The right kid with the wrong key is a bad signature, not a refetch.
    let forged = sign_kid(
        Algorithm::RS256,
        "inline-1",
        &other.encoding,
        &id_claims("acme"),
    );
    let (detail, _) = assert_unauthorized(&app, Some(&bearer(&forged))).await;
    assert!(detail.contains("signature"), "{detail}");

    clock.advance(Duration::from_millis(2100));
    let r = app.get("/users", &token).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "inline keys do not expire: {}",
        r.text()
    );
}
