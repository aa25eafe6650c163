//! The local tool: serve the API over HTTP, run the dev stack (migrated,
//! seeded, tokens printed: `make dev`), or print an HS256 token. The Lambda
//! functions are the `api` and `migrate` binaries.

use std::net::SocketAddr;
use std::process::ExitCode;

use tenant_users::entry::{self, BoxError, Threads};
use tenant_users::{app::App, app::Config, http};

mod dev;

const USAGE: &str =
    "usage: tenant-users [serve | dev | token --tenant ID [--group NAME]... [--ttl SECONDS]]
  serve          serve the API on 127.0.0.1:$PORT (default 3000)
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
