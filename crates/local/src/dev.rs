//! `make dev`: the same service as a local HTTP server, with a migrated,
//! seeded database and ready-to-use tokens for two demo tenants, registered
//! in the tenant registry (acme `standard`, globex `basic`).
//!
//! Runs as the application role, exactly as in Lambda; the admin connection
//! is used only to migrate. Both reach the same server, so both follow
//! `DB_SSLMODE`/`DB_CA_FILE`: a remote admin URL must not leave the app
//! role's password on the wire in clear.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tenant_users::app::{App, Config};
use tenant_users::db::config::TlsConfig;
use tenant_users::entry::BoxError;
use tenant_users::token::config::token_config;
use tenant_users_migrate::{self as migrate, AppRole, app_db_config};
use tower::ServiceExt;

/// A demo tenant, its tier, and its users (email, name).
type DemoTenant = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const DEMO: &[DemoTenant] = &[
    (
        "acme",
        "standard",
        &[
            ("ada@acme.test", "Ada Lovelace"),
            ("alan@acme.test", "Alan Turing"),
            ("grace@acme.test", "Grace Hopper"),
        ],
    ),
    (
        "globex",
        "basic",
        &[
            ("hank@globex.test", "Hank Scorpio"),
            ("homer@globex.test", "Homer Simpson"),
        ],
    ),
];

pub async fn run() -> Result<(), BoxError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let admin_url =
        env("DATABASE_ADMIN_URL").ok_or("DATABASE_ADMIN_URL is required (make dev sets it)")?;
    let admin: tokio_postgres::Config = admin_url
        .parse()
        .map_err(|e| format!("DATABASE_ADMIN_URL: {e}"))?;
    let role = AppRole {
        name: env("APP_DB_USER").unwrap_or_else(|| migrate::DEFAULT_APP_USER.to_owned()),
        password: Some(env("APP_DB_PASSWORD").unwrap_or_else(random_secret)),
    };
    let tls = TlsConfig::from_env()?;
    migrate::run(&admin, &tls, &role).await?;
    let (client, _task) = migrate::connect_admin(&admin, &tls).await?;
    for (tenant, tier, _) in DEMO {
        migrate::register_tenant(&client, tenant, tier)
            .await
            .map_err(|e| format!("registering {tenant}: {e}"))?;
    }
    drop(client);

    let secret = env("JWT_HS256_SECRET").unwrap_or_else(random_secret);
    let token = token_config(&|k| {
        if k == "JWT_HS256_SECRET" {
            Some(secret.clone())
        } else {
            env(k)
        }
    })?;
    if !token.algorithms.contains(&jsonwebtoken::Algorithm::HS256) {
        return Err(
            "make dev signs its demo tokens with HS256: JWT_ALGORITHMS must include HS256".into(),
        );
    }
    let config = Config {
        token: token.clone(),
        db: app_db_config(&admin, &role, tls),
        // Unset locally: the dev server keeps no identities.
        identity: tenant_users::identity::IdentityConfig::from_lookup(&env)?,
        metrics: tenant_users::telemetry::Metrics::from_lookup(env),
    };
    let app = App::build(config).await;

    // One 12-hour token per demo tenant: printed below, and first used to
    // seed through the API itself, as each tenant's client would (the token
    // check and the tenant scope decide where each row goes).
    let mut tokens = Vec::new();
    for (tenant, _, _) in DEMO {
        tokens.push(mint_token(
            secret.as_bytes(),
            &token.tenant_claim,
            token.issuer.as_deref(),
            token.audience.first().map(String::as_str),
            tenant,
            &[tenant_users::tenant::ADMIN_GROUP],
            12 * 3600,
        )?);
    }
    let router = tenant_users::http::router(app.clone());
    for ((tenant, _, people), jwt) in DEMO.iter().zip(&tokens) {
        for (email, name) in *people {
            let request = Request::post("/users")
                .header("authorization", format!("Bearer {jwt}"))
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({ "email": email, "name": name }).to_string(),
                ))?;
            let status = router.clone().oneshot(request).await?.status();
            // 409: seeded by an earlier `make dev` on the same database.
            if !status.is_success() && status != StatusCode::CONFLICT {
                return Err(format!("seeding {email} for {tenant}: {status}").into());
            }
        }
    }

    let port: u16 = env("PORT")
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| "PORT must be a port number")?
        .unwrap_or(3000);
    let base = format!("http://127.0.0.1:{port}");
    println!("\n== tenant-users dev server: {base}");
    println!(
        "   (tokens below are valid for 12 hours, signed with JWT_HS256_SECRET; tenant claim {:?})\n",
        token.tenant_claim
    );
    for ((tenant, tier, _), jwt) in DEMO.iter().zip(&tokens) {
        let var = format!("TOKEN_{}", tenant.to_ascii_uppercase());
        println!("# {tenant}, tier {tier}");
        println!("export {var}={jwt}");
        println!("  curl -s {base}/users -H \"Authorization: Bearer ${var}\"");
    }
    println!(
        "  curl -s {base}/users -H \"Authorization: Bearer $TOKEN_ACME\" -H 'Content-Type: application/json' \\\n    -d '{{\"email\":\"new@acme.test\",\"name\":\"New Person\"}}'\n"
    );
    tenant_users::http::serve(app, SocketAddr::from(([127, 0, 0, 1], port))).await?;
    Ok(())
}

/// Signs an HS256 token for `tenant`, with `groups` as its
/// `cognito:groups` (none: a member), valid for `ttl_seconds`.
pub fn mint_token(
    secret: &[u8],
    tenant_claim: &str,
    issuer: Option<&str>,
    audience: Option<&str>,
    tenant: &str,
    groups: &[&str],
    ttl_seconds: u64,
) -> Result<String, BoxError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims =
        json!({ "sub": format!("demo-user@{tenant}"), "iat": now, "exp": now + ttl_seconds });
    if let Value::Object(map) = &mut claims {
        map.insert(tenant_claim.to_owned(), Value::String(tenant.to_owned()));
        if let Some(iss) = issuer {
            map.insert("iss".into(), iss.into());
        }
        if let Some(aud) = audience {
            map.insert("aud".into(), aud.into());
        }
        if !groups.is_empty() {
            map.insert("cognito:groups".into(), json!(groups));
        }
    }
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
