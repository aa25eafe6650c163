//! `make dev`: the same service as a local HTTP server, with a migrated,
//! seeded database and ready-to-use tokens for two demo tenants.
//!
//! Runs as the application role, exactly as in Lambda; the admin connection
//! is used only to migrate. Both reach the same server, so both follow
//! `DB_SSLMODE`/`DB_CA_FILE`: a remote admin URL must not leave the app
//! role's password on the wire in clear.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::app::{App, Config};
use crate::db::config::{DbConfig, SslMode, TlsConfig};
use crate::migrate::{self, AppRole};
use crate::tenant::{TenantContext, TenantId};
use crate::token::config::token_config;
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
    let tls = TlsConfig::from_env()?;
    migrate::run(&admin, &tls, &role).await?;

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

/// The application role's connection: the admin URL's server and
/// database, the role's credentials, and TLS settled exactly as `migrate`
/// settles it for the admin connection (`DB_SSLMODE`; without it, the
/// URL's own `sslmode=require`).
pub fn app_db_config(admin: &tokio_postgres::Config, role: &AppRole, tls: TlsConfig) -> DbConfig {
    let mut pg = admin.clone();
    pg.user(&role.name);
    if let Some(password) = &role.password {
        pg.password(password.as_str());
    }
    pg.application_name("tenant-users-dev");
    let url_requires = admin.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let tls = match tls.mode {
        SslMode::Disable if url_requires => TlsConfig {
            mode: SslMode::Require,
            ..tls
        },
        _ => tls,
    };
    DbConfig {
        tls,
        ..DbConfig::plain(pg)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn role() -> AppRole {
        AppRole {
            name: "tenant_app".into(),
            password: Some("pw".into()),
        }
    }

    #[test]
    fn the_app_connection_follows_the_admin_tls_settings() {
        let admin: tokio_postgres::Config = "postgres://owner@db.example/app".parse().unwrap();
        let verify = TlsConfig {
            mode: SslMode::VerifyFull,
            ca_file: Some("/etc/rds-ca.pem".into()),
            roots: crate::db::config::Roots::System,
        };
        let db = app_db_config(&admin, &role(), verify);
        assert_eq!(db.tls.mode, SslMode::VerifyFull);
        assert_eq!(db.tls.ca_file, Some("/etc/rds-ca.pem".into()));
        let crate::db::config::DbSource::Url(pg) = &db.source else {
            panic!("fixed credentials")
        };
        assert_eq!(pg.get_user(), Some("tenant_app"));

        let required: tokio_postgres::Config = "postgres://owner@db.example/app?sslmode=require"
            .parse()
            .unwrap();
        let db = app_db_config(&required, &role(), TlsConfig::DISABLED);
        assert_eq!(db.tls.mode, SslMode::Require, "the URL's sslmode=require");
        let db = app_db_config(&admin, &role(), TlsConfig::DISABLED);
        assert_eq!(
            db.tls.mode,
            SslMode::Disable,
            "plain only when nothing asks for TLS"
        );
    }
}
