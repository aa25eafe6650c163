//! The schema bootstrap as a CloudFormation custom resource: the second
//! function of the stack (`TENANT_USERS_ROLE=migrate`), which runs inside
//! the VPC at deploy time, where the database is reachable.
//!
//! Create and Update read the RDS-managed master secret and the application
//! secret (with the function's own credentials), connect as the master
//! (TLS verified by default), apply `migrations/` and create or update the
//! application role with the application secret's password: the very same
//! [`migrate`] the command line runs. Delete answers SUCCESS and touches
//! nothing: a stack deletion never drops tenant data.
//!
//! CloudFormation waits for an answer on a pre-signed S3 URL, up to an hour
//! if none comes; so every event with a `ResponseURL` gets one, SUCCESS or
//! FAILED, also when a step fails, panics or runs into the invocation's
//! deadline. The `Reason` names the failing step and the error, never a
//! secret value (secrets errors are described by `secret`, database errors
//! by SQLSTATE and message only).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::config::{AwsConfig, ConfigError, SecretConfig, SslMode, TlsConfig};
use crate::migrate::{self, AppRole};
use crate::secret::SecretSource;

/// `PhysicalResourceId` is this plus the database name: the same on every
/// Create and Update of one database, so CloudFormation never sees a
/// replacement (which would make it send a Delete for the "old" one).
pub const PHYSICAL_ID_PREFIX: &str = "tenant-users-schema-";
/// Kept back from the invocation's deadline to send the answer.
pub const ANSWER_RESERVE: Duration = Duration::from_secs(5);
/// CloudFormation refuses response objects over 4096 bytes.
const MAX_REASON_CHARS: usize = 1000;
const PUT_ATTEMPTS: u32 = 3;

/// How the function reaches AWS and the database, from its environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub aws: AwsConfig,
    /// `DB_SSLMODE` (default `verify-full`) and `DB_CA_FILE`.
    pub tls: TlsConfig,
    /// `DB_CONNECT_TIMEOUT_MS` (default 10 s).
    pub connect_timeout: Duration,
}

impl Settings {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let mode = match get("DB_SSLMODE").as_deref().map(str::trim) {
            None | Some("verify-full") => SslMode::VerifyFull,
            Some("require") => SslMode::Require,
            Some("disable") => SslMode::Disable,
            Some(other) => {
                return Err(ConfigError(format!(
                    "DB_SSLMODE must be disable, require or verify-full, got {other:?}"
                )));
            }
        };
        let connect_timeout = match get("DB_CONNECT_TIMEOUT_MS") {
            None => Duration::from_secs(10),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms @ 1..=900_000) => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError(format!(
                        "DB_CONNECT_TIMEOUT_MS must be from 1 to 900000, got {v:?}"
                    )));
                }
            },
        };
        Ok(Settings {
            aws: AwsConfig::from_lookup(&get),
            tls: TlsConfig {
                mode,
                ca_file: get("DB_CA_FILE").map(Into::into),
            },
            connect_timeout,
        })
    }
}

/// The custom resource's `ResourceProperties`. CloudFormation sends every
/// scalar as a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Properties {
    pub master_secret_arn: String,
    pub app_secret_arn: String,
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
}

impl Properties {
    pub fn parse(value: &Value) -> Result<Self, String> {
        let text = |key: &str| -> Result<String, String> {
            match value.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                None | Some(Value::Null) => Err(format!("property {key} is missing")),
                Some(_) => Err(format!("property {key} must be a string")),
            }
        };
        let db_port = match value.get("DbPort") {
            None | Some(Value::Null) => 5432,
            Some(_) => text("DbPort")?
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or("property DbPort must be a port number")?,
        };
        Ok(Properties {
            master_secret_arn: text("MasterSecretArn")?,
            app_secret_arn: text("AppSecretArn")?,
            db_host: text("DbHost")?,
            db_port,
            db_name: text("DbName")?,
        })
    }
}

/// The fields of a CloudFormation custom resource request we use.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    request_type: String,
    #[serde(rename = "ResponseURL")]
    response_url: String,
    stack_id: String,
    request_id: String,
    logical_resource_id: String,
    #[serde(default)]
    physical_resource_id: Option<String>,
    #[serde(default)]
    resource_properties: Value,
}

/// Why an event got no answer: CloudFormation will wait for its timeout.
#[derive(Debug, thiserror::Error)]
pub enum Unanswered {
    #[error("not a CloudFormation custom resource request: {0}")]
    NotAnEvent(String),
    #[error("could not send the answer to CloudFormation: {0}")]
    Put(String),
}

/// A failed step and what went wrong, safe to show in the stack's events.
struct Failure {
    step: &'static str,
    detail: String,
}

impl Failure {
    fn new(step: &'static str, detail: impl Into<String>) -> Self {
        Failure {
            step,
            detail: detail.into(),
        }
    }

    fn reason(&self) -> String {
        let text = format!("{} failed: {}", self.step, self.detail);
        let clipped: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REASON_CHARS)
            .collect();
        clipped
    }
}

pub struct CustomResource {
    /// A configuration error is answered as FAILED on every event, rather
    /// than leaving CloudFormation to wait an hour for a crashed function.
    settings: Result<Settings, String>,
    http: reqwest::Client,
}

impl CustomResource {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        crate::token::install_tls_provider();
        CustomResource {
            settings: Settings::from_lookup(get).map_err(|e| e.to_string()),
            // S3 pre-signed URLs are https; redirects are not part of the
            // protocol, and following one would resend the answer elsewhere.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Handles one event and answers it on its `ResponseURL`; returns the
    /// answer sent. `deadline` is the invocation's (Lambda's `Context`):
    /// the work is cut off [`ANSWER_RESERVE`] before it.
    pub async fn handle(&self, event: Value, deadline: SystemTime) -> Result<Value, Unanswered> {
        let event: Event =
            serde_json::from_value(event).map_err(|e| Unanswered::NotAnEvent(e.to_string()))?;
        let properties = Properties::parse(&event.resource_properties);
        let physical_id = match (&properties, &event.physical_resource_id) {
            (Ok(p), _) => format!("{PHYSICAL_ID_PREFIX}{}", p.db_name),
            // Keep what CloudFormation knows, so a failure is no replacement.
            (Err(_), Some(known)) => known.clone(),
            (Err(_), None) => format!("{PHYSICAL_ID_PREFIX}unknown"),
        };
        let outcome = match event.request_type.as_str() {
            // Never drop data; and answer with the id CloudFormation sent,
            // whatever the properties say now.
            "Delete" => {
                tracing::info!("Delete: the schema and its data are kept");
                Ok(())
            }
            "Create" | "Update" => match (&self.settings, properties) {
                (Err(config), _) => Err(Failure::new("read configuration", config.clone())),
                (_, Err(bad)) => Err(Failure::new("read properties", bad)),
                (Ok(settings), Ok(properties)) => {
                    bootstrap(settings.clone(), properties, deadline).await
                }
            },
            other => Err(Failure::new(
                "read request",
                format!("unknown RequestType {other:?}"),
            )),
        };
        let physical_id = match (&event.request_type[..], &event.physical_resource_id) {
            ("Delete", Some(known)) => known.clone(),
            _ => physical_id,
        };
        let (status, reason) = match &outcome {
            Ok(()) => ("SUCCESS", format!("{} done", event.request_type)),
            Err(failure) => ("FAILED", failure.reason()),
        };
        match &outcome {
            Ok(()) => tracing::info!(request = %event.request_type, %physical_id, "SUCCESS"),
            Err(_) => {
                tracing::error!(request = %event.request_type, %physical_id, %reason, "FAILED")
            }
        }
        let answer = json!({
            "Status": status,
            "Reason": reason,
            "PhysicalResourceId": physical_id,
            "StackId": event.stack_id,
            "RequestId": event.request_id,
            "LogicalResourceId": event.logical_resource_id,
            "NoEcho": false,
            "Data": {},
        });
        self.answer(&event.response_url, &answer, deadline).await?;
        Ok(answer)
    }

    /// PUTs the answer to the pre-signed URL. The signature covers an empty
    /// Content-Type (as AWS's cfn-response module sends), so any other
    /// would be refused by S3. A few attempts, within the deadline.
    async fn answer(
        &self,
        url: &str,
        answer: &Value,
        deadline: SystemTime,
    ) -> Result<(), Unanswered> {
        let body = serde_json::to_vec(answer).map_err(|e| Unanswered::Put(e.to_string()))?;
        // The URL's query string is a signature: log the host only.
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let mut last = String::from("no attempt made before the deadline");
        for attempt in 1..=PUT_ATTEMPTS {
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            // Past the deadline Lambda stops us anyway; still try once.
            if attempt > 1 && left < Duration::from_millis(500) {
                break;
            }
            let sent = self
                .http
                .put(url)
                .header(reqwest::header::CONTENT_TYPE, "")
                .body(body.clone())
                .timeout(left.clamp(Duration::from_secs(1), Duration::from_secs(10)))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(%host, attempt, "answered CloudFormation");
                    return Ok(());
                }
                Ok(response) => last = format!("{host} answered {}", response.status()),
                Err(error) => last = format!("{host}: {}", crate::db::error_chain(&error)),
            }
            tracing::warn!(%host, attempt, error = %last, "answer to CloudFormation not accepted");
            tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
        }
        Err(Unanswered::Put(last))
    }
}

/// Secrets, then the database, bounded by the deadline and shielded from
/// panics: whatever happens, the caller gets a step and a reason.
async fn bootstrap(
    settings: Settings,
    properties: Properties,
    deadline: SystemTime,
) -> Result<(), Failure> {
    let budget = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(ANSWER_RESERVE);
    let step: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("read master secret"));
    let task = tokio::spawn(steps(settings, properties, step.clone()));
    let abort = task.abort_handle();
    let current = || step.lock().map(|s| *s).unwrap_or("unknown step");
    match tokio::time::timeout(budget, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Failure::new(
            current(),
            if join.is_panic() {
                "internal error (panic); see the function's log"
            } else {
                "internal error (task cancelled)"
            },
        )),
        Err(_) => {
            abort.abort();
            Err(Failure::new(
                current(),
                format!(
                    "timed out after {} s, before the function's deadline (is the database reachable from the function's subnets and security group?)",
                    budget.as_secs()
                ),
            ))
        }
    }
}

async fn steps(
    settings: Settings,
    properties: Properties,
    step: Arc<Mutex<&'static str>>,
) -> Result<(), Failure> {
    let enter = |name: &'static str| {
        if let Ok(mut s) = step.lock() {
            *s = name;
        }
    };
    let secret = |arn: &str| SecretConfig {
        secret_id: arn.to_owned(),
        // The function's own role reads both secrets.
        role_arn: None,
        session_name: "tenant-users-migrate".into(),
        // RDS-managed master secrets hold only username and password.
        host: Some(properties.db_host.clone()),
        port: Some(properties.db_port),
        dbname: Some(properties.db_name.clone()),
        aws: settings.aws.clone(),
        refresh_interval: Duration::from_secs(60),
    };
    enter("read master secret");
    let master = SecretSource::new(secret(&properties.master_secret_arn))
        .await
        .fetch()
        .await
        .map_err(|e| Failure::new("read master secret", e.to_string()))?;
    enter("read app secret");
    let app = SecretSource::new(secret(&properties.app_secret_arn))
        .await
        .fetch()
        .await
        .map_err(|e| Failure::new("read app secret", e.to_string()))?;

    let mut admin = tokio_postgres::Config::new();
    admin
        .host(&properties.db_host)
        .port(properties.db_port)
        .dbname(&properties.db_name)
        .user(&master.username)
        .password(master.password())
        .connect_timeout(settings.connect_timeout)
        .application_name("tenant-users-migrate");
    let role = AppRole {
        name: app.username.clone(),
        password: Some(app.password().to_owned()),
    };
    migrate::run_with_progress(&admin, &settings.tls, &role, enter)
        .await
        .map_err(|e| Failure::new(e.step(), e.to_string()))
}

/// The Lambda entry point of the migrate function.
pub async fn run_lambda() -> Result<(), lambda_runtime::Error> {
    let handler = Arc::new(CustomResource::from_env());
    if let Err(error) = &handler.settings {
        tracing::error!(%error, "misconfigured: every event will be answered FAILED");
    }
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Value>| {
            let handler = handler.clone();
            async move {
                // Err only when no answer could be sent: Lambda then retries
                // the (asynchronous) invocation, which may get through.
                handler
                    .handle(event.payload, event.context.deadline())
                    .await
                    .map(|_| ())
                    .map_err(lambda_runtime::Error::from)
            }
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_take_cloudformation_strings() {
        let p = Properties::parse(&json!({
            "ServiceToken": "arn:aws:lambda:eu-west-1:1:function:f",
            "MasterSecretArn": "arn:m", "AppSecretArn": "arn:a",
            "DbHost": "db.example", "DbPort": "6543", "DbName": "users",
            "SchemaVersion": "3"
        }))
        .unwrap();
        assert_eq!(p.db_port, 6543);
        assert_eq!(p.db_name, "users");
        let p = Properties::parse(&json!({
            "MasterSecretArn": "arn:m", "AppSecretArn": "arn:a",
            "DbHost": "db.example", "DbName": "users"
        }))
        .unwrap();
        assert_eq!(p.db_port, 5432);
        for (key, value) in [
            ("DbPort", json!("x")),
            ("DbPort", json!("0")),
            ("DbName", json!("")),
            ("DbHost", json!(["a"])),
        ] {
            let mut v = json!({
                "MasterSecretArn": "arn:m", "AppSecretArn": "arn:a",
                "DbHost": "db.example", "DbName": "users"
            });
            v[key] = value;
            let e = Properties::parse(&v).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn tls_is_verified_unless_told_otherwise() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        let s = Settings::from_lookup(|k| (k == "DB_SSLMODE").then(|| "disable".into())).unwrap();
        assert_eq!(s.tls.mode, SslMode::Disable);
        assert!(Settings::from_lookup(|k| (k == "DB_SSLMODE").then(|| "prefer".into())).is_err());
        assert!(
            Settings::from_lookup(|k| (k == "DB_CONNECT_TIMEOUT_MS").then(|| "0".into())).is_err()
        );
    }

    #[test]
    fn a_reason_is_one_bounded_line() {
        let f = Failure::new("connect", format!("a\nb{}", "x".repeat(5000)));
        let reason = f.reason();
        assert!(reason.starts_with("connect failed: a b"));
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
    }

    #[tokio::test]
    async fn an_event_without_a_response_url_cannot_be_answered() {
        let handler = CustomResource::from_lookup(|_| None);
        let e = handler
            .handle(json!({"RequestType": "Create"}), SystemTime::now())
            .await
            .unwrap_err();
        assert!(matches!(e, Unanswered::NotAnEvent(_)), "{e}");
    }
}
