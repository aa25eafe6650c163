//! The schema function: in Lambda (no argument), the CloudFormation custom
//! resource that migrates at deploy time; locally, `migrate` applies the
//! migrations and the app role with `DATABASE_ADMIN_URL`, and `audit`
//! checks, as the app role, that the database enforces isolation.

use std::process::ExitCode;

use tenant_users::app::Config;
use tenant_users::db::config::TlsConfig;
use tenant_users::entry::{self, BoxError, Threads};
use tenant_users_migrate::{self as migrate, AppRole};

const USAGE: &str = "usage: migrate [migrate | audit | register TENANT [TIER]]
  (no argument)  run as the Lambda custom resource that migrates at deploy time
                 (needs AWS_LAMBDA_RUNTIME_API)
  migrate        apply migrations and the app role with DATABASE_ADMIN_URL
                 (APP_DB_USER, APP_DB_PASSWORD), and the control plane's
                 role when CONTROL_DB_USER is set (CONTROL_DB_PASSWORD)
  audit          check, as the app role (DATABASE_URL or the secret), that the
                 database enforces isolation; exit 1 when a check fails
  register       register TENANT in the registry with DATABASE_ADMIN_URL, in
                 TIER (default standard; or move it there); its status is kept";

enum Command {
    Lambda,
    Migrate,
    Audit,
    Register(String, String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["lambda"] => Command::Lambda,
        ["migrate"] => Command::Migrate,
        ["audit"] => Command::Audit,
        ["register", tenant] => Command::Register(tenant.to_owned(), "standard".to_owned()),
        ["register", tenant, tier] => Command::Register(tenant.to_owned(), tier.to_owned()),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    entry::run(Threads::One, || async {
        match command {
            Command::Lambda => lambda().await,
            Command::Migrate => run_migrate().await,
            Command::Audit => audit().await,
            Command::Register(tenant, tier) => register(&tenant, &tier).await,
        }
    })
}

async fn lambda() -> Result<(), BoxError> {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        return Err(
            format!("not running in Lambda (AWS_LAMBDA_RUNTIME_API is unset)\n{USAGE}").into(),
        );
    }
    migrate::custom_resource::run_lambda().await
}

fn admin_config() -> Result<tokio_postgres::Config, BoxError> {
    let url = std::env::var("DATABASE_ADMIN_URL").map_err(|_| "DATABASE_ADMIN_URL is required")?;
    Ok(url
        .parse()
        .map_err(|e| format!("DATABASE_ADMIN_URL: {e}"))?)
}

async fn register(tenant: &str, tier: &str) -> Result<(), BoxError> {
    let (client, _task) = migrate::connect_admin(&admin_config()?, &TlsConfig::from_env()?).await?;
    migrate::register_tenant(&client, tenant, tier)
        .await
        .map_err(|e| {
            format!(
                "registering {tenant}: {}",
                tenant_users::db::error_chain(&e)
            )
        })?;
    println!("tenant {tenant} registered, tier {tier}");
    Ok(())
}

async fn run_migrate() -> Result<(), BoxError> {
    let admin = admin_config()?;
    let role = AppRole {
        name: std::env::var("APP_DB_USER").unwrap_or_else(|_| migrate::DEFAULT_APP_USER.to_owned()),
        password: std::env::var("APP_DB_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    let tls = TlsConfig::from_env()?;
    migrate::run(&admin, &tls, &role).await?;
    // The control plane's role, when asked for (CONTROL_DB_USER).
    if let Some(name) = std::env::var("CONTROL_DB_USER")
        .ok()
        .filter(|n| !n.is_empty())
    {
        let control = AppRole {
            name,
            password: std::env::var("CONTROL_DB_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty()),
        };
        migrate::ensure_control_role(&admin, &tls, &control, &role).await?;
    }
    Ok(())
}

/// Prints the isolation self-audit for the configured connection; fails
/// (exit 1) when any check fails.
async fn audit() -> Result<(), BoxError> {
    let config = Config::from_env()?;
    let db = tenant_users::db::Database::new(config.db).await;
    let checks = db.audit_report().await?;
    for check in &checks {
        println!("{check}");
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    println!("{} checks, {failed} failed", checks.len());
    if failed > 0 {
        return Err("the database does not enforce tenant isolation on its own; the service will refuse to serve".into());
    }
    Ok(())
}
