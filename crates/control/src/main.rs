//! The control-plane function: operators' routes behind the control API
//! (IAM authorization on every route). State (the control role's
//! connection, the bucket and signing key's clients) is built once per
//! execution environment.

use std::process::ExitCode;

use tenant_users::coldstart;
use tenant_users::entry::{self, Threads};
use tenant_users_control::{Config, Control, routes};

fn main() -> ExitCode {
    entry::run(Threads::One, || async {
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
            return Err(
                "not running in Lambda (AWS_LAMBDA_RUNTIME_API is unset): the control \
                 plane serves only IAM-signed requests through its API Gateway"
                    .into(),
            );
        }
        let config = coldstart::sync("config", Config::from_env)?;
        let control = Control::build(config).await;
        coldstart::report();
        lambda_http::run(routes::router(control)).await
    })
}
