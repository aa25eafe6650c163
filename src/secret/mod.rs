//! Database credentials from AWS Secrets Manager, read under an assumed role.
//!
//! At cold start the function assumes `DB_SECRET_ROLE_ARN` (STS), reads
//! `DB_SECRET_ARN` with those temporary credentials, and caches the result
//! for the life of the execution environment. `db` asks for a fresh copy when
//! the database rejects the password (rotation). The password never appears
//! in logs: `DbCredentials` redacts it from `Debug`, and a failed call is
//! described by service, error code, message and request id only (or, when
//! no answer came, the kind of failure and a short cause): never the raw
//! response, its headers or its body.
//!
//! The settings (which secret, which role, the AWS SDK's) are parsed in
//! [`config`].

pub mod config;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_types::region::Region;
use aws_types::request_id::RequestId;
use serde_json::Value;

use self::config::{AwsConfig, SecretConfig};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Secrets Manager or STS could not be reached or refused the call.
    #[error("could not read the database secret: {0}")]
    Fetch(String),
    /// The secret exists but is not usable as database credentials.
    #[error("the database secret is malformed: {0}")]
    Malformed(String),
}

/// What the secret (completed by `DB_HOST`/`DB_PORT`/`DB_NAME`) says.
#[derive(Clone, PartialEq, Eq)]
pub struct DbCredentials {
    pub username: String,
    password: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

impl DbCredentials {
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish()
    }
}

pub struct SecretSource {
    client: aws_sdk_secretsmanager::Client,
    config: SecretConfig,
}

impl SecretSource {
    /// Builds the clients; makes no call yet.
    pub async fn new(config: SecretConfig) -> Self {
        let base = sdk_config(&config.aws).await;
        let mut sm = aws_sdk_secretsmanager::config::Builder::from(&base);
        if let Some(role) = &config.role_arn {
            let provider = AssumeRoleProvider::builder(role.clone())
                .session_name(config.session_name.clone())
                .configure(&base)
                .build()
                .await;
            sm = sm.credentials_provider(TimedAssumeRole(provider));
        }
        Self {
            client: aws_sdk_secretsmanager::Client::from_conf(sm.build()),
            config,
        }
    }

    /// Assumes the role (when configured), reads the secret and parses it.
    pub async fn fetch(&self) -> Result<DbCredentials, SecretError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.config.secret_id)
            .send()
            .await
            .map_err(|e| SecretError::Fetch(describe_sdk_error("secretsmanager", &e)))?;
        let text = output
            .secret_string()
            .ok_or_else(|| SecretError::Malformed("it has no SecretString".into()))?;
        let mut creds = parse_secret(text)?;
        if let Some(host) = &self.config.host {
            creds.host = Some(host.clone());
        }
        if let Some(port) = self.config.port {
            creds.port = Some(port);
        }
        if let Some(dbname) = &self.config.dbname {
            creds.dbname = Some(dbname.clone());
        }
        if creds.host.is_none() {
            return Err(SecretError::Malformed(
                "it names no host; set DB_HOST to the RDS Proxy endpoint".into(),
            ));
        }
        Ok(creds)
    }

    pub fn refresh_interval(&self) -> Duration {
        self.config.refresh_interval
    }
}

/// The AWS SDK's configuration for `aws` (region, endpoint, keys), on our
/// HTTP client and with timeouts fit for a request path: the one every AWS
/// client of the function starts from (Secrets Manager here, the user pool
/// in [`crate::identity`]). Loading it makes no network call.
pub async fn sdk_config(aws: &AwsConfig) -> aws_types::SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .timeout_config(timeouts);
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.clone(),
            aws.session_token.clone(),
            None,
            "environment",
        ));
    }
    loader.load().await
}

/// The HTTP client for AWS calls: rustls with ring, which cross-compiles
/// for arm64 with nothing beyond what cargo-lambda brings (the SDK's default
/// aws-lc needs a C/cmake toolchain for the target).
/// The assumed role's credentials provider, its calls to STS timed as a
/// cold-start phase ([`crate::coldstart`]); otherwise the SDK's own.
#[derive(Debug)]
struct TimedAssumeRole(AssumeRoleProvider);

impl ProvideCredentials for TimedAssumeRole {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(crate::coldstart::timed(
            "sts",
            self.0.provide_credentials(),
        ))
    }

    fn fallback_on_interrupt(&self) -> Option<Credentials> {
        self.0.fallback_on_interrupt()
    }
}

/// The SDK's HTTP client: on the process's one TLS configuration
/// ([`crate::https`]).
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    crate::https::aws_http_client()
}

/// A failed AWS call in one line, fit for logs and error chains. The SDK's
/// own `DisplayErrorContext` would print the whole raw response, headers
/// included; this keeps what an operator needs and nothing more.
pub fn describe_sdk_error<E>(service: &str, error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // The credentials provider (STS AssumeRole) fails before any request
    // is sent, so its failure surfaces inside a dispatch failure.
    if let Some(credentials) = find_in_chain::<CredentialsError>(error) {
        return format!(
            "{service}: credentials failure: {}",
            describe_credentials_error(credentials)
        );
    }
    match error {
        SdkError::ServiceError(context) => {
            let err = context.err();
            let code = err
                .code()
                .or_else(|| xml_error_code(context.raw().body().bytes()?));
            let mut line = format!(
                "{service}: {} (HTTP {})",
                code.unwrap_or("unknown error code"),
                context.raw().status().as_u16()
            );
            if let Some(message) = err.message() {
                line.push_str(": ");
                line.push_str(&clip(message));
            }
            if let Some(id) = error.request_id() {
                line.push_str(&format!(" [request id {}]", clip(id)));
            }
            line
        }
        SdkError::TimeoutError(_) => format!("{service}: timeout"),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "timeout"
            } else if failure.is_io() {
                "connection failure"
            } else {
                "dispatch failure"
            };
            format!("{service}: {kind}: {}", root_cause(error))
        }
        // Its cause would quote the unparseable body.
        SdkError::ResponseError(response) => format!(
            "{service}: unreadable response (HTTP {})",
            response.raw().status().as_u16()
        ),
        SdkError::ConstructionFailure(_) => {
            format!("{service}: request not built: {}", root_cause(error))
        }
        _ => format!("{service}: call failed"),
    }
}

/// The `<Code>` of an XML error body the SDK's parser did not recognise
/// (e.g. `<ErrorResponse><Errors><Error>`, as moto and some proxies
/// answer): only that one token, checked to look like an error code, so
/// nothing else of the body can reach a log line.
fn xml_error_code(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let code = &text[start..start + text[start..].find("</Code>")?];
    let token = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    token.then_some(code)
}

fn describe_credentials_error(error: &CredentialsError) -> String {
    if let Some(sts) = find_in_chain::<SdkError<AssumeRoleError, HttpResponse>>(error) {
        return describe_sdk_error("sts", sts);
    }
    let kind = match error {
        CredentialsError::CredentialsNotLoaded(_) => "no credentials",
        CredentialsError::ProviderTimedOut(_) => "timeout",
        CredentialsError::InvalidConfiguration(_) => "invalid configuration",
        _ => "provider error",
    };
    format!("{kind}: {}", root_cause(error))
}

/// The first error of type `T` in `error`'s source chain, itself included.
fn find_in_chain<'e, T: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The innermost cause (e.g. "Connection refused"), clipped.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    clip(&innermost.to_string())
}

/// One line of at most 200 characters.
fn clip(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line
}

/// Parses the standard RDS secret JSON: `username` and `password` required;
/// `host`, `port` (number or string), `dbname` optional; `engine`, when
/// present, must be PostgreSQL.
pub fn parse_secret(text: &str) -> Result<DbCredentials, SecretError> {
    let bad = |what: &str| SecretError::Malformed(what.to_owned());
    let value: Value = serde_json::from_str(text).map_err(|_| bad("it is not a JSON object"))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("it is not a JSON object"))?;
    let text_field = |key: &str| -> Result<Option<String>, SecretError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("{key} must be a non-empty string"))),
        }
    };
    if let Some(engine) = text_field("engine")?
        && !matches!(
            engine.as_str(),
            "postgres" | "postgresql" | "aurora-postgresql"
        )
    {
        return Err(bad(&format!("engine is {engine:?}, not PostgreSQL")));
    }
    let port = match object.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| bad("port is out of range"))?,
        ),
        Some(Value::String(s)) => Some(s.parse().map_err(|_| bad("port is not a number"))?),
        Some(_) => return Err(bad("port must be a number")),
    };
    Ok(DbCredentials {
        username: text_field("username")?.ok_or_else(|| bad("username is missing"))?,
        password: text_field("password")?.ok_or_else(|| bad("password is missing"))?,
        host: text_field("host")?,
        port,
        dbname: text_field("dbname")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rds_secret_shapes() {
        let full = parse_secret(
            r#"{"engine":"postgres","host":"proxy.example","port":5432,"username":"app","password":"p@ss","dbname":"users","dbInstanceIdentifier":"x"}"#,
        )
        .unwrap();
        assert_eq!(full.username, "app");
        assert_eq!(full.password(), "p@ss");
        assert_eq!(full.port, Some(5432));
        assert_eq!(full.dbname.as_deref(), Some("users"));
        // RDS-managed master secrets: only username and password.
        let managed = parse_secret(r#"{"username":"app","password":"x"}"#).unwrap();
        assert_eq!(managed.host, None);
        assert_eq!(
            parse_secret(r#"{"username":"a","password":"b","port":"6432"}"#)
                .unwrap()
                .port,
            Some(6432)
        );
    }

    #[test]
    fn refuses_unusable_secrets() {
        for bad in [
            "not json",
            "[]",
            r#"{"password":"x"}"#,
            r#"{"username":"a"}"#,
            r#"{"username":"a","password":""}"#,
            r#"{"username":"a","password":7}"#,
            r#"{"username":"a","password":"b","port":70000}"#,
            r#"{"username":"a","password":"b","engine":"mysql"}"#,
        ] {
            assert!(parse_secret(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_an_error_code_is_taken_from_an_unparsed_body() {
        let moto = br#"<?xml version="1.0"?><ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: x</Message></Error></Errors></ErrorResponse>"#;
        assert_eq!(xml_error_code(moto), Some("AccessDenied"));
        for junk in [
            &b"<Code>Access Denied; password=hunter2</Code>"[..],
            b"<Code></Code>",
            b"<Code>unterminated",
            b"no xml at all",
            b"\xff\xfe",
        ] {
            assert_eq!(xml_error_code(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let c = parse_secret(r#"{"username":"app","password":"hunter2-secret"}"#).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = parse_secret(r#"{"username":"app","password":"hunter2","port":"x"}"#).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }
}
