//! The API function: the users API behind API Gateway. State (keys,
//! credentials, the one connection) is built once per execution
//! environment, at cold start; the router then serves one request at a
//! time. Links the library's request path only: no migration runner, no
//! custom resource (those are crates/migrate).

use std::process::ExitCode;

use tenant_users::{app::App, app::Config, http};

fn main() -> ExitCode {
    tenant_users::telemetry::init_logs();
    tenant_users::token::install_tls_provider();
    tenant_users::token::fast_rs256::install();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        eprintln!(
            "error: not running in Lambda (AWS_LAMBDA_RUNTIME_API is unset); \
             to serve the API locally run `make dev` or `tenant-users serve` (crates/local)"
        );
        return ExitCode::from(2);
    }
    // Lambda hands an execution environment one request at a time: a
    // multi-threaded runtime there only adds thread hand-offs (most of a
    // warm invocation's CPU in a profile) and worker start-up.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = App::build(Config::from_env()?).await;
        lambda_http::run(http::router(app)).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
