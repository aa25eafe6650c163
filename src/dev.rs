//! `make dev`: the same service as a local HTTP server, with a migrated,
//! seeded database and ready-to-use tokens for two demo tenants.
//!
//! Runs as the application role, exactly as in Lambda; the admin connection
//! is used only to migrate.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::app::App;
use crate::config::{Config, DbConfig, token_config};
use crate::migrate::{self, AppRole};
use crate::tenant::{TenantContext, TenantId};
use crate::users::{self, Email, NewUser, UserName};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DEMO: &[(&str, &[(&str, &str)])] = &[
    (
        "acme",
        &[
            ("ada@acme.test", "Ada Lovelace"),
            ("alan@acme.test", "Alan Turing"),
            ("grace@acme.test", "Grace Hopper"),
        ],
    ),
    (
        "globex",
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
    migrate::run(&admin, &crate::config::TlsConfig::from_env()?, &role).await?;

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
    let mut pg = admin.clone();
    pg.user(&role.name);
    if let Some(password) = &role.password {
        pg.password(password.as_str());
    }
    pg.application_name("tenant-users-dev");
    let config = Config {
        token: token.clone(),
        db: DbConfig::plain(pg),
        metrics: crate::telemetry::Metrics::from_lookup(env),
    };
    let app = App::build(config).await;

    for (tenant, people) in DEMO {
        let caller = TenantContext::new(TenantId::parse(tenant)?, Some("dev-seed".into()));
        for (email, name) in *people {
            let new = NewUser {
                email: Email::parse(email)?,
                name: UserName::parse(name)?,
            };
            match users::create(&app.db, &caller, &new).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(e.into()),
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
    for (tenant, _) in DEMO {
        let jwt = mint_token(
            secret.as_bytes(),
            &token.tenant_claim,
            token.issuer.as_deref(),
            token.audience.first().map(String::as_str),
            tenant,
            12 * 3600,
        )?;
        let var = format!("TOKEN_{}", tenant.to_ascii_uppercase());
        println!("export {var}={jwt}");
        println!("  curl -s {base}/users -H \"Authorization: Bearer ${var}\"");
    }
    println!(
        "  curl -s {base}/users -H \"Authorization: Bearer $TOKEN_ACME\" -H 'Content-Type: application/json' \\\n    -d '{{\"email\":\"new@acme.test\",\"name\":\"New Person\"}}'\n"
    );
    crate::http::serve(app, SocketAddr::from(([127, 0, 0, 1], port))).await?;
    Ok(())
}

/// Signs an HS256 token for `tenant`, valid for `ttl_seconds`.
pub fn mint_token(
    secret: &[u8],
    tenant_claim: &str,
    issuer: Option<&str>,
    audience: Option<&str>,
    tenant: &str,
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
