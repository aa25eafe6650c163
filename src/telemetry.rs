//! Logs and metrics, set up in this one file.
//!
//! Logs: tracing, through Lambda's own subscriber set-up, so
//! `AWS_LAMBDA_LOG_LEVEL`/`RUST_LOG` and `AWS_LAMBDA_LOG_FORMAT=JSON` work
//! in Lambda and locally alike. Every request gets exactly one `request`
//! line with its request id, tenant, route, status, latency and database
//! time; never a token, password, secret or email.
//!
//! Metrics: per request, one CloudWatch Embedded Metric Format record (a
//! JSON log line CloudWatch turns into metrics; no SDK call), with the
//! dimensions `Service` and `TenantId`, so an operator sees each tenant's
//! consumption and noisy neighbours.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use serde_json::json;

use crate::app::App;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Sets up logging once per process.
pub fn init_logs() {
    lambda_http::tracing::init_default_subscriber();
}

/// What the request path learns while it runs: filled in by the token
/// extractor (tenant) and by `Database::run` (time spent in the database).
#[derive(Default)]
struct RequestRecord {
    tenant: Mutex<Option<String>>,
    db_time: Mutex<Duration>,
}

tokio::task_local! {
    static RECORD: Arc<RequestRecord>;
}

/// Notes the verified tenant for this request's log line and metrics.
pub fn record_tenant(tenant: &str) {
    let _ = RECORD.try_with(|r| {
        if let Ok(mut t) = r.tenant.lock() {
            *t = Some(tenant.to_owned());
        }
    });
}

/// Adds time spent waiting for the database.
pub fn record_db_time(elapsed: Duration) {
    let _ = RECORD.try_with(|r| {
        if let Ok(mut d) = r.db_time.lock() {
            *d += elapsed;
        }
    });
}

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Where EMF records go: stdout in Lambda, nowhere locally unless asked.
#[derive(Clone)]
pub struct Metrics {
    namespace: String,
    service: String,
    sink: Option<Sink>,
}

impl Metrics {
    /// `METRICS=emf|off` (default: emf in Lambda, off elsewhere),
    /// `METRICS_NAMESPACE` (default `TenantUsers`), `SERVICE_NAME` (default
    /// `tenant-users`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let in_lambda = get("AWS_LAMBDA_FUNCTION_NAME").is_some();
        let enabled = match get("METRICS").as_deref() {
            Some("emf") => true,
            Some(_) => false,
            None => in_lambda,
        };
        let sink: Option<Sink> = enabled.then(|| {
            Arc::new(Mutex::new(
                Box::new(std::io::stdout()) as Box<dyn Write + Send>
            ))
        });
        Self {
            namespace: get("METRICS_NAMESPACE").unwrap_or_else(|| "TenantUsers".into()),
            service: get("SERVICE_NAME").unwrap_or_else(|| "tenant-users".into()),
            sink,
        }
    }

    pub fn disabled() -> Self {
        Self {
            namespace: "TenantUsers".into(),
            service: "tenant-users".into(),
            sink: None,
        }
    }

    /// EMF records into `sink` (tests read them back).
    pub fn to_writer(namespace: &str, sink: Box<dyn Write + Send>) -> Self {
        Self {
            namespace: namespace.into(),
            service: "tenant-users".into(),
            sink: Some(Arc::new(Mutex::new(sink))),
        }
    }

    fn emit(&self, summary: &Summary<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let record = json!({
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["Service", "TenantId"], ["Service"]],
                    "Metrics": [
                        {"Name": "Latency", "Unit": "Milliseconds"},
                        {"Name": "DatabaseTime", "Unit": "Milliseconds"},
                        {"Name": "Requests", "Unit": "Count"},
                        {"Name": "Errors", "Unit": "Count"},
                        {"Name": "ServerErrors", "Unit": "Count"},
                    ],
                }],
            },
            "Service": self.service,
            // Unauthenticated requests have no tenant; they are counted
            // under one placeholder so the dimension set stays complete.
            "TenantId": summary.tenant.unwrap_or("unauthenticated"),
            "Latency": summary.latency_ms,
            "DatabaseTime": summary.db_ms,
            "Requests": 1,
            "Errors": u8::from(summary.status >= 400),
            "ServerErrors": u8::from(summary.status >= 500),
            "Route": summary.route,
            "StatusCode": summary.status,
            "RequestId": summary.request_id,
        });
        if let Ok(mut out) = sink.lock() {
            let _ = writeln!(out, "{record}");
            let _ = out.flush();
        }
    }
}

struct Summary<'a> {
    request_id: &'a str,
    tenant: Option<&'a str>,
    route: &'a str,
    status: u16,
    latency_ms: f64,
    db_ms: f64,
}

/// The request id API Gateway assigned, else the caller's `x-request-id`
/// (if sane), else a fresh one.
fn request_id(request: &Request) -> String {
    if let Some(RequestContext::ApiGatewayV2(ctx)) = request.request_context_ref()
        && let Some(id) = &ctx.request_id
    {
        return id.clone();
    }
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// One log line and one metrics record per request.
pub async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let record = Arc::new(RequestRecord::default());
    let mut response = RECORD.scope(record.clone(), next.run(request)).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let tenant = record.tenant.lock().ok().and_then(|t| t.clone());
    let db_ms = record
        .db_time
        .lock()
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let status = response.status().as_u16();
    tracing::info!(
        request_id = %id,
        tenant_id = tenant.as_deref().unwrap_or("-"),
        %method,
        route,
        status,
        latency_ms,
        db_ms,
        "request"
    );
    app.metrics.emit(&Summary {
        request_id: &id,
        tenant: tenant.as_deref(),
        route: &route,
        status,
        latency_ms,
        db_ms,
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
