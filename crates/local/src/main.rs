//! The local tool: serve the API over HTTP, run the dev stack (migrated,
//! seeded, tokens printed: `make dev`), or print an HS256 token. The Lambda
//! functions are the `api` and `migrate` binaries.

use std::net::SocketAddr;
use std::process::ExitCode;

use tenant_users::entry::{self, BoxError, Threads};
use tenant_users::{app::App, app::Config, http};

mod dev;

const USAGE: &str =
    "usage: tenant-users [serve | serve-control | dev | token --tenant ID [--group NAME]... [--ttl SECONDS]]
  serve          serve the API on 127.0.0.1:$PORT (default 3000)
  serve-control  serve the control plane on 127.0.0.1:$PORT (default 3001): a request
                 with `Authorization: Operator $CONTROL_OPERATOR_KEY` acts as
                 operator local:$USER (in AWS, API Gateway's IAM authorization
                 decides who)
  dev            migrate, seed demo tenants, print tokens (tenant admins), serve (see make dev)
  token          print an HS256 token for a tenant, signed with JWT_HS256_SECRET;
                 --group puts it in cognito:groups (--group tenant-admin: an admin,
                 who may write users; without: a member, who may only read)
  (migrate and audit are the `migrate` binary's: cargo run -p tenant-users-migrate -- migrate)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["serve"] => entry::run(Threads::Many, serve),
        ["serve-control"] => entry::run(Threads::Many, serve_control),
        ["dev"] => entry::run(Threads::Many, dev::run),
        ["token", ref rest @ ..] => entry::run(Threads::One, || async { token(rest) }),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
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

/// The control plane's router on loopback. In AWS its API Gateway lets
/// only IAM-signed requests through and names the principal; here, whoever
/// can reach this machine's loopback is the operator, named
/// `local:$USER` in the operator trail.
async fn serve_control() -> Result<(), BoxError> {
    use lambda_http::aws_lambda_events::apigw::{
        ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerIamDescription,
        ApiGatewayV2httpRequestContext,
    };
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT must be a port number, got {p:?}"))?,
        Err(_) => 3001,
    };
    let operator = format!(
        "local:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    );
    // The stand-in for a SigV4 signature: `Authorization: Operator <key>`.
    let key = std::env::var("CONTROL_OPERATOR_KEY")
        .ok()
        .filter(|k| k.len() >= 16)
        .ok_or("CONTROL_OPERATOR_KEY is required (16 characters or more): requests act as the operator only with `Authorization: Operator <key>`")?;
    let expected = format!("Operator {key}");
    let control =
        tenant_users_control::Control::build(tenant_users_control::Config::from_env()?).await;
    let router = tenant_users_control::routes::router(control).layer(axum::middleware::from_fn(
        move |mut request: axum::extract::Request, next: axum::middleware::Next| {
            // As API Gateway with IAM authorization lets through only a
            // validly signed request: without the key the request reaches
            // the control plane with no principal (401 without credentials,
            // 403 with any others).
            let signed = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if !signed {
                return next.run(request);
            }
            let mut iam = ApiGatewayRequestAuthorizerIamDescription::default();
            iam.user_arn = Some(operator.clone());
            let mut authorizer = ApiGatewayRequestAuthorizer::default();
            authorizer.iam = Some(iam);
            let mut context = ApiGatewayV2httpRequestContext::default();
            context.authorizer = Some(authorizer);
            context.request_id = Some(uuid::Uuid::new_v4().to_string());
            request
                .extensions_mut()
                .insert(lambda_http::request::RequestContext::ApiGatewayV2(context));
            next.run(request)
        },
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (is the port taken? set PORT)"))?;
    eprintln!("control plane on http://{addr} (operator local:$USER)");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn token(args: &[&str]) -> Result<(), BoxError> {
    let (mut tenant, mut ttl, mut groups) = (None, 3600u64, Vec::new());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (*arg, it.next()) {
            ("--tenant", Some(t)) => tenant = Some(*t),
            ("--group", Some(g)) => groups.push(*g),
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
        &groups,
        ttl,
    )?;
    println!("{jwt}");
    Ok(())
}
