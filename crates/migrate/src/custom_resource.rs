//! The schema bootstrap as a CloudFormation custom resource: the second
//! function of the stack (the `migrate` binary), which runs inside
//! the VPC at deploy time, where the database is reachable.
//!
//! Create and Update read the RDS-managed master secret and the application
//! secret (with the function's own credentials), connect as the master
//! (TLS verified against AWS's RDS CAs only, SCRAM only: see
//! [`crate::admin_conn`]), apply `migrations/` and create or update the
//! application role with the application secret's password: the very same
//! [`migrate`] the command line runs. Delete answers SUCCESS and touches
//! nothing: a stack deletion never drops tenant data.
//!
//! The function trusts nothing its event says. Whoever may invoke it could
//! otherwise name a host of theirs and receive the master password, or a
//! URL of theirs and learn what it answers. So the database endpoint and
//! both secrets come from the function's own environment (the template
//! sets them); an event whose properties name others is answered FAILED
//! before any secret is read or any connection made. And the answer goes
//! only to an HTTPS pre-signed URL of CloudFormation's response buckets in
//! the function's region ([`response_url_is_cloudformations`]); an event
//! with any other `ResponseURL` is not acted on, and that URL never
//! contacted.
//!
//! One property is not a target but data: `Tenants`, the tenants to
//! register (until the control plane onboards them). Create and Update
//! register each one listed after migrating, on the same admin connection;
//! a tenant already registered only moves to the listed tier. Unlisted
//! tenants are never read or changed, and no tenant is ever suspended or
//! removed, by any event. So an invoker can at most register or re-tier a
//! tenant of its choosing in the function's own database, and the list
//! is checked whole ([`tenants_property`]) before any secret is read: one
//! invalid entry fails the event with nothing changed.
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

use crate::{self as migrate, AppRole, DEFAULT_TIER, Registration};
use tenant_users::config::ConfigError;
use tenant_users::db::config::{Roots, SslMode, TlsConfig};
use tenant_users::secret::SecretSource;
use tenant_users::secret::config::{AwsConfig, SecretConfig};

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
    /// `DB_SSLMODE` (default `verify-full`, against the shipped RDS CA
    /// bundle; `DB_CA_FILE`, when set, is trusted instead of it).
    pub tls: TlsConfig,
    /// `DB_CONNECT_TIMEOUT_MS` (default 10 s).
    pub connect_timeout: Duration,
    /// `DB_HOST`, `DB_PORT` (default 5432), `DB_NAME`,
    /// `DB_MASTER_SECRET_ARN`, `DB_APP_SECRET_ARN`: the only database and
    /// secrets this function ever uses.
    pub target: Properties,
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
        let required = |key: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| ConfigError(format!("{key} is required")))
        };
        let db_port = match get("DB_PORT") {
            None => 5432,
            Some(v) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ConfigError(format!("DB_PORT must be a port number, got {v:?}")))?,
        };
        Ok(Settings {
            aws: AwsConfig::from_lookup(&get),
            tls: TlsConfig {
                mode,
                ca_file: get("DB_CA_FILE").map(Into::into),
                roots: Roots::RdsOnly,
            },
            connect_timeout,
            target: Properties {
                master_secret_arn: required("DB_MASTER_SECRET_ARN")?,
                app_secret_arn: required("DB_APP_SECRET_ARN")?,
                control_secret_arn: get("DB_CONTROL_SECRET_ARN"),
                db_host: required("DB_HOST")?,
                db_port,
                db_name: required("DB_NAME")?,
            },
        })
    }
}

/// The database and secrets the function works on: its environment's, which
/// the custom resource's `ResourceProperties` may repeat but never change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Properties {
    pub master_secret_arn: String,
    pub app_secret_arn: String,
    /// The control plane's role's secret (`DB_CONTROL_SECRET_ARN`): when
    /// set, the role is made and audited after the application role.
    pub control_secret_arn: Option<String>,
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
}

impl Properties {
    /// Each of `MasterSecretArn`, `AppSecretArn`, `DbHost`, `DbPort` and
    /// `DbName` that the event carries must equal the environment's (the
    /// template sends them so that a change re-runs the resource); a
    /// property that differs is named in the error, with both values (ARNs
    /// and host names, never a secret). CloudFormation sends every scalar
    /// as a string. The other properties name no target: `SchemaVersion`
    /// only changes to re-run the resource, `Tenants` is data
    /// ([`tenants_property`]).
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let port = self.db_port.to_string();
        let expected = [
            ("MasterSecretArn", self.master_secret_arn.as_str()),
            ("AppSecretArn", self.app_secret_arn.as_str()),
            (
                "ControlSecretArn",
                self.control_secret_arn.as_deref().unwrap_or_default(),
            ),
            ("DbHost", self.db_host.as_str()),
            ("DbPort", port.as_str()),
            ("DbName", self.db_name.as_str()),
        ];
        for (key, ours) in expected {
            let sent = match value.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.trim().to_owned(),
                Some(Value::Number(n)) => n.to_string(),
                Some(_) => return Err(format!("property {key} must be a string")),
            };
            let same = if key == "DbHost" {
                sent.eq_ignore_ascii_case(ours)
            } else {
                sent == ours
            };
            if !same {
                return Err(format!(
                    "property {key} is {sent:?}, but this function works only on {ours:?} \
                     (its environment, set by the template); nothing was contacted"
                ));
            }
        }
        Ok(())
    }
}

/// The `Tenants` property: the tenants Create and Update register, as
/// [`parse_tenant_list`] reads it; absent, null or blank lists none.
pub fn tenants_property(properties: &Value) -> Result<Vec<Registration>, String> {
    match properties.get("Tenants") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(list)) => {
            parse_tenant_list(list).map_err(|why| format!("property Tenants: {why}"))
        }
        Some(_) => Err("property Tenants must be a string".into()),
    }
}

/// `tenant_id` or `tenant_id:tier` entries, comma-separated, blanks around
/// an entry ignored; a tenant without a tier goes in [`DEFAULT_TIER`]. The
/// whole list is checked: the error names every entry that is not a valid
/// tenant id, names an unknown tier, is empty or malformed, or repeats a
/// tenant (which tier would win is not the list's to leave open).
pub fn parse_tenant_list(list: &str) -> Result<Vec<Registration>, String> {
    if list.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut registrations: Vec<Registration> = Vec::new();
    let mut problems = Vec::new();
    for (i, entry) in list.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            problems.push(format!("entry {} is empty", i + 1));
            continue;
        }
        let parsed = match entry.split(':').collect::<Vec<_>>()[..] {
            [tenant] => Registration::parse(tenant, DEFAULT_TIER),
            [tenant, tier] => Registration::parse(tenant, tier),
            _ => Err("is not tenant_id or tenant_id:tier".into()),
        };
        match parsed {
            Ok(r) if registrations.iter().any(|seen| seen.tenant() == r.tenant()) => {
                problems.push(format!(
                    "entry {entry:?}: tenant {} is listed twice",
                    r.tenant()
                ));
            }
            Ok(r) => registrations.push(r),
            Err(why) => problems.push(format!("entry {entry:?}: {why}")),
        }
    }
    if problems.is_empty() {
        Ok(registrations)
    } else {
        Err(format!("{}; no tenant was registered", problems.join("; ")))
    }
}

/// Whether `url` is where CloudFormation waits for a custom resource's
/// answer: `https`, no user info, the default port, a host that is one of
/// CloudFormation's response buckets for `region` (virtual-hosted style,
/// e.g. `cloudformation-custom-resource-response-useast1.s3.amazonaws.com`,
/// `....s3.us-east-1.amazonaws.com` or `....s3-us-east-1.amazonaws.com`;
/// `.amazonaws.com.cn` in China) and a pre-signed query (SigV4's
/// `X-Amz-Signature` or SigV2's `Signature`). Without a region, any
/// region's bucket passes.
pub fn response_url_is_cloudformations(url: &str, region: Option<&str>) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("scheme {:?} is not https", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL carries user info".into());
    }
    if parsed.port().is_some_and(|p| p != 443) {
        return Err("the URL names a port".into());
    }
    let Some(host) = parsed.domain() else {
        return Err("the host is not a domain name".into());
    };
    let host = host.to_ascii_lowercase();
    const BUCKET: &str = "cloudformation-custom-resource-response-";
    let bucket_ok = |rest: &str| -> bool {
        let Some((compact, endpoint)) = rest.split_once('.') else {
            return false;
        };
        let region_ok = |r: &str| match region {
            Some(region) => r == region,
            None => !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        };
        let compact_ok = match region {
            Some(region) => compact == region.replace('-', ""),
            None => !compact.is_empty() && compact.bytes().all(|b| b.is_ascii_alphanumeric()),
        };
        let endpoint = endpoint
            .strip_suffix(".amazonaws.com")
            .or_else(|| endpoint.strip_suffix(".amazonaws.com.cn"));
        let endpoint_ok = match endpoint {
            Some("s3") => true,
            Some(e) => e
                .strip_prefix("s3.")
                .or_else(|| e.strip_prefix("s3-"))
                .is_some_and(region_ok),
            None => false,
        };
        compact_ok && endpoint_ok
    };
    if !host.strip_prefix(BUCKET).is_some_and(bucket_ok) {
        return Err(format!(
            "host {host:?} is not a CloudFormation response bucket of {}",
            region.unwrap_or("any region")
        ));
    }
    let signed = parsed
        .query_pairs()
        .any(|(k, v)| (k == "X-Amz-Signature" || k == "Signature") && !v.is_empty());
    if !signed {
        return Err("the URL is not pre-signed".into());
    }
    Ok(())
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
    /// Not acted on, and the URL not contacted.
    #[error("ResponseURL refused, event ignored: {0}")]
    UntrustedResponseUrl(String),
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
    /// `AWS_REGION`: whose response buckets an answer may go to.
    region: Option<String>,
    http: reqwest::Client,
}

impl CustomResource {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        tenant_users::token::install_tls_provider();
        // S3 pre-signed URLs are https; redirects are not part of the
        // protocol, and following one would resend the answer elsewhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .build()
            .unwrap_or_default();
        Self::with_http_client(get, http)
    }

    /// As [`from_lookup`](Self::from_lookup), answering through `http`:
    /// tests give a client that resolves the response bucket's host name
    /// to a local HTTPS server and trusts its certificate. Which URLs are
    /// contacted at all is decided before the client is used.
    pub fn with_http_client(get: impl Fn(&str) -> Option<String>, http: reqwest::Client) -> Self {
        let region = get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .filter(|r| !r.trim().is_empty());
        CustomResource {
            settings: Settings::from_lookup(get).map_err(|e| e.to_string()),
            region,
            http,
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
        if let Err(why) =
            response_url_is_cloudformations(&event.response_url, self.region.as_deref())
        {
            tracing::error!(request = %event.request_type, %why, "ResponseURL refused: event ignored, nothing contacted");
            return Err(Unanswered::UntrustedResponseUrl(why));
        }
        // Target first, then the tenant list: both before anything is read,
        // contacted or changed.
        let checked = match &self.settings {
            Ok(settings) => settings
                .target
                .check(&event.resource_properties)
                .and_then(|()| tenants_property(&event.resource_properties))
                .map(|tenants| (settings.clone(), tenants)),
            Err(config) => Err(config.clone()),
        };
        let physical_id = match (&self.settings, &event.physical_resource_id) {
            (Ok(s), _) => format!("{PHYSICAL_ID_PREFIX}{}", s.target.db_name),
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
            "Create" | "Update" => match (&self.settings, checked) {
                (Err(config), _) => Err(Failure::new("read configuration", config.clone())),
                (_, Err(bad)) => Err(Failure::new("read properties", bad)),
                (Ok(_), Ok((settings, tenants))) => bootstrap(settings, tenants, deadline).await,
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
                Err(error) => last = format!("{host}: {}", tenant_users::db::error_chain(&error)),
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
    tenants: Vec<Registration>,
    deadline: SystemTime,
) -> Result<(), Failure> {
    let budget = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(ANSWER_RESERVE);
    let step: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("read master secret"));
    let task = tokio::spawn(steps(settings, tenants, step.clone()));
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
    tenants: Vec<Registration>,
    step: Arc<Mutex<&'static str>>,
) -> Result<(), Failure> {
    let properties = &settings.target;
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
    migrate::run_with_progress(&admin, &settings.tls, &role, &tenants, &enter)
        .await
        .map_err(|e| Failure::new(e.step(), e.to_string()))?;
    let Some(arn) = &properties.control_secret_arn else {
        return Ok(());
    };
    enter("read control secret");
    let control = SecretSource::new(secret(arn))
        .await
        .fetch()
        .await
        .map_err(|e| Failure::new("read control secret", e.to_string()))?;
    enter("control role");
    let control = AppRole {
        name: control.username.clone(),
        password: Some(control.password().to_owned()),
    };
    migrate::ensure_control_role(&admin, &settings.tls, &control, &role)
        .await
        .map_err(|e| Failure::new("control role", e.to_string()))
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

    fn env(key: &str) -> Option<String> {
        Some(
            match key {
                "DB_HOST" => "db.cluster-x.eu-west-1.rds.amazonaws.com",
                "DB_NAME" => "users",
                "DB_MASTER_SECRET_ARN" => "arn:m",
                "DB_APP_SECRET_ARN" => "arn:a",
                _ => return None,
            }
            .into(),
        )
    }

    #[test]
    fn the_target_is_the_environments_and_properties_may_only_repeat_it() {
        let s = Settings::from_lookup(env).unwrap();
        assert_eq!(s.target.db_port, 5432);
        assert_eq!(s.target.db_name, "users");
        let same = json!({
            "ServiceToken": "arn:aws:lambda:eu-west-1:1:function:f",
            "MasterSecretArn": "arn:m", "AppSecretArn": "arn:a",
            "DbHost": "DB.cluster-x.eu-west-1.rds.amazonaws.com", "DbPort": "5432",
            "DbName": "users", "SchemaVersion": "3"
        });
        assert_eq!(s.target.check(&same), Ok(()));
        assert_eq!(s.target.check(&json!({"DbPort": 5432})), Ok(()));
        assert_eq!(
            s.target.check(&json!({})),
            Ok(()),
            "properties are optional"
        );
        for (key, value) in [
            ("DbHost", json!("evil.example")),
            ("DbPort", json!("6543")),
            ("DbName", json!("other")),
            ("MasterSecretArn", json!("arn:evil")),
            ("AppSecretArn", json!("arn:evil")),
            ("DbHost", json!(["a"])),
        ] {
            let mut v = same.clone();
            v[key] = value;
            let e = s.target.check(&v).unwrap_err();
            assert!(e.starts_with(&format!("property {key} ")), "{e}");
        }
        for missing in [
            "DB_HOST",
            "DB_NAME",
            "DB_MASTER_SECRET_ARN",
            "DB_APP_SECRET_ARN",
        ] {
            let e = Settings::from_lookup(|k| if k == missing { None } else { env(k) })
                .unwrap_err()
                .to_string();
            assert!(e.contains(missing), "{e}");
        }
        let bad_port = |k: &str| {
            if k == "DB_PORT" {
                Some("0".into())
            } else {
                env(k)
            }
        };
        assert!(Settings::from_lookup(bad_port).is_err());
    }

    #[test]
    fn tls_is_verified_against_the_rds_cas_unless_told_otherwise() {
        let s = Settings::from_lookup(env).unwrap();
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.tls.roots, Roots::RdsOnly);
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        let with = |key: &'static str, value: &'static str| {
            move |k: &str| if k == key { Some(value.into()) } else { env(k) }
        };
        let s = Settings::from_lookup(with("DB_SSLMODE", "disable")).unwrap();
        assert_eq!(s.tls.mode, SslMode::Disable);
        assert!(Settings::from_lookup(with("DB_SSLMODE", "prefer")).is_err());
        assert!(Settings::from_lookup(with("DB_CONNECT_TIMEOUT_MS", "0")).is_err());
        // The shipped bundle parses and builds a connector.
        assert!(tenant_users::db::tls_connector(&s.tls).is_ok());
        assert!(
            tenant_users::db::RDS_CA_BUNDLE
                .matches("BEGIN CERTIFICATE")
                .count()
                > 20
        );
        assert!(
            tenant_users::db::RDS_CA_BUNDLE.contains("Amazon RDS us-east-1 Root CA RSA2048 G1")
        );
    }

    #[test]
    fn only_cloudformation_response_buckets_of_the_region_are_answered() {
        let region = Some("us-east-1");
        for good in [
            "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/arn%3Aaws%3Acloudformation%3Aus-east-1%3A1%3Astack/s/1%7CSchema%7Cabc?AWSAccessKeyId=AKIA&Expires=1&Signature=abc%3D",
            "https://cloudformation-custom-resource-response-useast1.s3.us-east-1.amazonaws.com/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0123",
            "https://cloudformation-custom-resource-response-useast1.s3-us-east-1.amazonaws.com/x?X-Amz-Signature=0123",
            "https://CloudFormation-Custom-Resource-Response-UsEast1.S3.amazonaws.com:443/x?Signature=1",
        ] {
            assert_eq!(
                response_url_is_cloudformations(good, region),
                Ok(()),
                "{good}"
            );
        }
        assert_eq!(
            response_url_is_cloudformations(
                "https://cloudformation-custom-resource-response-cnnorth1.s3.cn-north-1.amazonaws.com.cn/x?X-Amz-Signature=1",
                Some("cn-north-1")
            ),
            Ok(())
        );
        for bad in [
            "http://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x?Signature=1",
            "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com:8443/x?Signature=1",
            "https://u:p@cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x?Signature=1",
            "https://cloudformation-custom-resource-response-euwest1.s3.amazonaws.com/x?Signature=1",
            "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com.evil.example/x?Signature=1",
            "https://cloudformation-custom-resource-response-useast1.evil.example/x?Signature=1",
            "https://evil-cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x?Signature=1",
            "https://s3.amazonaws.com/cloudformation-custom-resource-response-useast1/x?Signature=1",
            "https://my-bucket.s3.amazonaws.com/x?X-Amz-Signature=1",
            "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x",
            "https://cloudformation-custom-resource-response-useast1.s3.eu-west-1.amazonaws.com/x?Signature=1",
            "https://127.0.0.1/x?Signature=1",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(
                response_url_is_cloudformations(bad, region).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_tenant_list_is_entries_with_an_optional_tier() {
        let list =
            parse_tenant_list(" acme , globex:premium,ops.team_1:unlimited,b-2:basic ").unwrap();
        let got: Vec<(&str, &str)> = list
            .iter()
            .map(|r| (r.tenant().as_str(), r.tier()))
            .collect();
        assert_eq!(
            got,
            [
                ("acme", "standard"),
                ("globex", "premium"),
                ("ops.team_1", "unlimited"),
                ("b-2", "basic")
            ]
        );
        for none in ["", "  "] {
            assert_eq!(parse_tenant_list(none), Ok(Vec::new()), "{none:?}");
        }
        assert_eq!(tenants_property(&json!({})), Ok(Vec::new()));
        assert_eq!(tenants_property(&json!({"Tenants": null})), Ok(Vec::new()));
        assert_eq!(
            tenants_property(&json!({"Tenants": "acme"})).unwrap().len(),
            1
        );
        let e = tenants_property(&json!({"Tenants": ["acme"]})).unwrap_err();
        assert_eq!(e, "property Tenants must be a string");
    }

    #[test]
    fn every_invalid_entry_of_a_tenant_list_is_named() {
        for (list, named) in [
            ("acme,a b", "entry \"a b\": tenant id may only contain"),
            (
                "acme:gold",
                "entry \"acme:gold\": unknown tier \"gold\" (tiers: basic, standard, premium, unlimited)",
            ),
            ("acme:Premium", "unknown tier \"Premium\""),
            ("acme:", "entry \"acme:\": unknown tier \"\""),
            (
                "acme:basic:x",
                "entry \"acme:basic:x\": is not tenant_id or tenant_id:tier",
            ),
            (":basic", "entry \":basic\": tenant id is empty"),
            ("acme,,globex", "entry 2 is empty"),
            ("acme,", "entry 2 is empty"),
            (&"x".repeat(65), "tenant id is longer than 64"),
            (
                "acme,globex,acme:premium",
                "entry \"acme:premium\": tenant acme is listed twice",
            ),
            (
                "acme;globex",
                "entry \"acme;globex\": tenant id may only contain",
            ),
        ] {
            let e = parse_tenant_list(list).unwrap_err();
            assert!(e.contains(named), "{list:?}: {e}");
            assert!(e.ends_with("; no tenant was registered"), "{e}");
        }
        let e = parse_tenant_list("a b,ok,acme:gold").unwrap_err();
        assert!(e.contains("\"a b\"") && e.contains("\"acme:gold\""), "{e}");
        assert!(!e.contains("\"ok\""), "{e}");
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
