//! Criterion micro-benchmarks: verifying a bearer token (HS256, RS256,
//! ES256, through the same TokenManager the service uses), and the
//! handler's work that never touches the database (routing, the token,
//! body parsing, the problem response). Part of `make bench`.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use axum::body::Body;
use axum::http::{Request, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tenant_users::app::Config;
use tenant_users::db::config::DbConfig;
use tenant_users::token::TokenManager;
use tenant_users::token::config::token_config;
use tower::ServiceExt;

const ISSUER: &str = "https://issuer.bench";
const AUDIENCE: &str = "bench-client";

/// With a JWKS the issuer and audience are required, for every algorithm.
fn claims() -> serde_json::Value {
    let mut claims = common::claims_for("acme");
    claims["iss"] = json!(ISSUER);
    claims["aud"] = json!(AUDIENCE);
    claims
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims(), key).unwrap()
}

async fn jwks_url(keys: serde_json::Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/jwks.json")
}

fn verify(c: &mut Criterion) {
    use p256::pkcs8::EncodePrivateKey as _;
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;
    // As the service does, before jsonwebtoken's first use fixes a provider.
    tenant_users::token::fast_rs256::install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let ec = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let point = ec.verifying_key().to_encoded_point(false);
    let keys = json!({"keys": [
        {"kty": "RSA", "kid": "r", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(rsa.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(rsa.e().to_bytes_be())},
        {"kty": "EC", "kid": "e", "alg": "ES256", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())},
    ]});
    let url = rt.block_on(jwks_url(keys));
    let manager = rt.block_on(async {
        TokenManager::new(
            token_config(&|k| match k {
                "JWT_HS256_SECRET" => Some(common::SECRET.to_owned()),
                "JWT_JWKS_URL" => Some(url.clone()),
                "JWT_ALGORITHMS" => Some("HS256,RS256,ES256".to_owned()),
                "JWT_ISSUER" => Some(ISSUER.to_owned()),
                "JWT_AUDIENCE" => Some(AUDIENCE.to_owned()),
                _ => None,
            })
            .unwrap(),
        )
        .await
    });
    let hs = common::sign_hs256(&claims());
    let rs = sign(
        Algorithm::RS256,
        "r",
        &EncodingKey::from_rsa_der(rsa.to_pkcs1_der().unwrap().as_bytes()),
    );
    let es = sign(
        Algorithm::ES256,
        "e",
        &EncodingKey::from_ec_der(ec.to_pkcs8_der().unwrap().as_bytes()),
    );
    // The signature check alone, as on a token's first sight (the
    // manager caches verified RS256/ES256 tokens, so verifying the same
    // token again below measures a cache hit).
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
        "kty": "RSA", "kid": "r", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(rsa.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(rsa.e().to_bytes_be()),
    }))
    .unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    assert!(jsonwebtoken::decode::<serde_json::Value>(&rs, &key, &validation).is_ok());
    c.bench_function("rs256_first_sight", |b| {
        b.iter(|| jsonwebtoken::decode::<serde_json::Value>(&rs, &key, &validation).unwrap())
    });
    for (name, token) in [
        ("verify_hs256", hs),
        ("verify_rs256_cached", rs),
        ("verify_es256_cached", es),
    ] {
        assert!(rt.block_on(manager.verify(&token)).is_ok(), "{name}");
        c.bench_function(name, |b| {
            b.iter(|| rt.block_on(manager.verify(&token)).unwrap())
        });
    }

    // The handler without the database: a request refused before any SQL
    // (bad body after a good token), through routing, extraction, parsing
    // and the problem response.
    let app = rt.block_on(async {
        let pg: tokio_postgres::Config = "postgres://nobody@127.0.0.1:1/none".parse().unwrap();
        tenant_users::app::App::build(Config {
            token: token_config(&|k| (k == "JWT_HS256_SECRET").then(|| common::SECRET.to_owned()))
                .unwrap(),
            db: DbConfig::plain(pg),
            identity: None,
            metrics: tenant_users::telemetry::Metrics::disabled(),
        })
        .await
    });
    let router = tenant_users::http::router(app);
    let token = common::sign_hs256(&common::claims_for("acme"));
    c.bench_function("handler_without_database", |b| {
        b.iter(|| {
            let request = Request::post("/users")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"email":"not-an-email","name":"A"}"#))
                .unwrap();
            let response = rt.block_on(router.clone().oneshot(request)).unwrap();
            assert_eq!(response.status(), 422);
        })
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
