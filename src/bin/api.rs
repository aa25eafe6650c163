//! The API function: the users API behind API Gateway. State (keys,
//! credentials, the one connection) is built once per execution
//! environment, at cold start; the router then serves one request at a
//! time. Links the library's request path only: no migration runner, no
//! custom resource (those are crates/migrate).

use std::process::ExitCode;

use tenant_users::coldstart;
use tenant_users::entry::{self, Threads};
use tenant_users::{app::App, app::Config, http};

fn main() -> ExitCode {
    entry::run(Threads::One, || async {
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
            return Err("not running in Lambda (AWS_LAMBDA_RUNTIME_API is unset); \
                 to serve the API locally run `make dev` or `tenant-users serve` (crates/local)"
                .into());
        }
        let config = coldstart::sync("config", Config::from_env)?;
        let app = App::build(config).await;
        coldstart::report();
        lambda_http::run(http::router(app)).await
    })
}
