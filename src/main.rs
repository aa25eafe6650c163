//! Entry point: in Lambda, hand the router to the runtime (or, for the
//! stack's second function, the custom resource handler that migrates);
//! locally, serve it over HTTP, migrate, or run the dev stack. State is
//! built once (cold start).

use std::net::SocketAddr;
use std::process::ExitCode;

use tenant_users::{app::App, app::Config, db::config::TlsConfig, dev, http, migrate};

const USAGE: &str =
    "usage: tenant-users [lambda | serve | migrate | dev | token --tenant ID [--ttl SECONDS]]
  (no argument)  run as a Lambda function (needs AWS_LAMBDA_RUNTIME_API); with
                 TENANT_USERS_ROLE=migrate (or handler name migrate), as the
                 CloudFormation custom resource that migrates at deploy time
  serve          serve the API on 127.0.0.1:$PORT (default 3000)
  migrate        apply migrations and the app role with DATABASE_ADMIN_URL
  audit          check, as the app role, that the database enforces isolation
  dev            migrate, seed demo tenants, print tokens, serve (see make dev)
  token          print an HS256 token for a tenant, signed with JWT_HS256_SECRET";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    tenant_users::telemetry::init_logs();
    tenant_users::token::install_tls_provider();
    tenant_users::token::fast_rs256::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Lambda hands an execution environment one request at a time: a
    // multi-threaded runtime there only adds thread hand-offs (most of a
    // warm invocation's CPU in a profile) and worker start-up. The local
    // server and the tools serve or wait on several things at once.
    let runtime = match args.as_slice() {
        [] | ["lambda"] => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(&args))
}

async fn run(args: &[&str]) -> ExitCode {
    let result = match args {
        [] | ["lambda"] => lambda().await,
        ["serve"] => serve().await,
        ["migrate"] => run_migrate().await,
        ["audit"] => audit().await,
        ["dev"] => dev::run().await,
        ["token", rest @ ..] => token(rest),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn lambda() -> Result<(), BoxError> {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        return Err(
            format!("not running in Lambda (AWS_LAMBDA_RUNTIME_API is unset)\n{USAGE}").into(),
        );
    }
    if is_migrate_function() {
        return tenant_users::custom_resource::run_lambda().await;
    }
    let app = App::build(Config::from_env()?).await;
    lambda_http::run(http::router(app)).await
}

/// One binary, two functions: the API, and the schema bootstrap that
/// CloudFormation calls. The template says which by `TENANT_USERS_ROLE`
/// or by the function's handler name (`_HANDLER`).
fn is_migrate_function() -> bool {
    let is = |key: &str| std::env::var(key).is_ok_and(|v| v.trim() == "migrate");
    is("TENANT_USERS_ROLE") || is("_HANDLER")
}

async fn serve() -> Result<(), BoxError> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT must be a port number, got {p:?}"))?,
        Err(_) => 3000,
    };
    let app = App::build(Config::from_env()?).await;
    http::serve(app, SocketAddr::from(([127, 0, 0, 1], port))).await?;
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

async fn run_migrate() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_ADMIN_URL").map_err(|_| "DATABASE_ADMIN_URL is required")?;
    let admin: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("DATABASE_ADMIN_URL: {e}"))?;
    let role = migrate::AppRole {
        name: std::env::var("APP_DB_USER").unwrap_or_else(|_| migrate::DEFAULT_APP_USER.to_owned()),
        password: std::env::var("APP_DB_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    };
    migrate::run(&admin, &TlsConfig::from_env()?, &role).await?;
    Ok(())
}

fn token(args: &[&str]) -> Result<(), BoxError> {
    let (mut tenant, mut ttl) = (None, 3600u64);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (*arg, it.next()) {
            ("--tenant", Some(t)) => tenant = Some(*t),
            ("--ttl", Some(s)) => ttl = s.parse().map_err(|_| "--ttl takes seconds")?,
            _ => return Err(USAGE.into()),
        }
    }
    let tenant = tenant.ok_or(USAGE)?;
    tenant_users::tenant::TenantId::parse(tenant)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config = tenant_users::token::config::token_config(&env)?;
    let secret = config
        .hs256_secret
        .as_deref()
        .ok_or("JWT_HS256_SECRET is required")?;
    let jwt = dev::mint_token(
        secret,
        &config.tenant_claim,
        config.issuer.as_deref(),
        config.audience.first().map(String::as_str),
        tenant,
        ttl,
    )?;
    println!("{jwt}");
    Ok(())
}
