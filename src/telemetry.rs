//! Logs and metrics, set up in this one file.
//!
//! Logs: tracing, read as Lambda's own set-up reads it
//! (`AWS_LAMBDA_LOG_LEVEL` over `RUST_LOG`, default INFO;
//! `AWS_LAMBDA_LOG_FORMAT=JSON` for JSON lines), but the level applies below
//! INFO only to this crate: every other crate is capped at INFO, because at
//! TRACE lambda_runtime logs each raw event (bearer token, emails) and the
//! database driver its statement parameters. Every request gets exactly one
//! `request` line with its request id, tenant, route, status, latency and
//! database time; never a token, password, secret or email.
//!
//! Metrics: per request, one CloudWatch Embedded Metric Format record (a
//! JSON log line CloudWatch turns into metrics; no SDK call), with the
//! dimensions `Service` and `TenantId`: the tenant's metering. Each record
//! carries `Requests`, `Throttled` (429), `Forbidden` (403), `Latency`,
//! `DatabaseTime`, `Rows` and `ResponseBytes`, plus the function's memory
//! size (`MemoryMB`), so a month of them apportions Lambda GB-seconds and
//! database time to tenants (README, "Metering").

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
use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The one target allowed below INFO: ours, whose lines we vet.
const OWN_TARGET: &str = "tenant_users";

/// Sets up logging once per process: to stdout, as Lambda expects.
pub fn init_logs() {
    let env = |key: &str| std::env::var(key).ok();
    // A second call (or a subscriber set by an embedding program) keeps
    // the first one; logging set-up must not stop the function.
    let _ = tracing::subscriber::set_global_default(log_subscriber(env, std::io::stdout));
}

/// The production subscriber, writing to `writer`: tests install it on a
/// buffer so they check exactly what runs in Lambda.
pub fn log_subscriber<W>(
    get: impl Fn(&str) -> Option<String>,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let json = get("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.trim().eq_ignore_ascii_case("json"));
    let filter = log_filter(get);
    // The builder's own ceiling is opened fully: `filter` alone decides.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_target(false)
        .without_time()
        .with_writer(writer);
    if json {
        Box::new(builder.json().finish().with(filter))
    } else {
        Box::new(builder.finish().with(filter))
    }
}

/// Which lines pass. The level comes from `AWS_LAMBDA_LOG_LEVEL`, else
/// `RUST_LOG` (a level, or `target=level` directives, comma-separated),
/// else INFO. DEBUG and TRACE reach only this crate's targets; every other
/// target is capped at INFO whatever the variables say, so a directive such
/// as `lambda_runtime=trace` cannot bring the runtime's raw-event lines
/// back. No `log`-crate bridge is installed: tokio-postgres' `log` records
/// go nowhere; were one added, its events carry the `log` target
/// (`tokio_postgres::query`) and fall under the same cap.
pub fn log_filter(get: impl Fn(&str) -> Option<String>) -> Targets {
    let spec = get("AWS_LAMBDA_LOG_LEVEL")
        .filter(|v| !v.trim().is_empty())
        .or_else(|| get("RUST_LOG"))
        .unwrap_or_default();
    let mut default = LevelFilter::INFO;
    let mut targets: Vec<(String, LevelFilter)> = Vec::new();
    // Unparseable directives are skipped, as Lambda's own set-up does:
    // a typo in the log level must not stop the function.
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.split_once('=') {
            None => {
                if let Some(level) = parse_level(directive) {
                    default = level;
                }
            }
            Some((target, level)) => {
                let target = target.trim();
                let plain = !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
                if let (true, Some(level)) = (plain, parse_level(level)) {
                    targets.retain(|(t, _)| t != target);
                    targets.push((target.to_owned(), level));
                }
            }
        }
    }
    let is_own = |target: &str| {
        target == OWN_TARGET
            || target
                .strip_prefix(OWN_TARGET)
                .is_some_and(|rest| rest.starts_with("::"))
    };
    let mut filter = Targets::new().with_default(default.min(LevelFilter::INFO));
    if !targets.iter().any(|(t, _)| t == OWN_TARGET) {
        filter = filter.with_target(OWN_TARGET, default);
    }
    for (target, level) in targets {
        let level = if is_own(&target) {
            level
        } else {
            level.min(LevelFilter::INFO)
        };
        filter = filter.with_target(target, level);
    }
    filter
}

/// A level name, any case; Lambda's FATAL is our ERROR.
fn parse_level(raw: &str) -> Option<LevelFilter> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("fatal") {
        return Some(LevelFilter::ERROR);
    }
    raw.parse().ok()
}

/// What the request path learns while it runs: filled in by the token
/// extractor (tenant) and by `Database::run` (time spent in the database).
#[derive(Default)]
struct RequestRecord {
    tenant: Mutex<Option<String>>,
    db_time: Mutex<Duration>,
    rows: std::sync::atomic::AtomicU64,
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

/// Adds rows the database returned (or wrote, with RETURNING).
pub fn record_rows(rows: usize) {
    let _ = RECORD.try_with(|r| {
        r.rows
            .fetch_add(rows as u64, std::sync::atomic::Ordering::Relaxed);
    });
}

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Where EMF records go: stdout in Lambda, nowhere locally unless asked.
#[derive(Clone)]
pub struct Metrics {
    /// Shared, not copied: the middleware's state is cloned per request.
    service: Arc<str>,
    sink: Option<Sink>,
    /// The part of every record that never changes (the metric
    /// directives), rendered once: per request only the values are written.
    directives: Arc<str>,
    /// The function's memory size (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`), for
    /// GB-seconds per tenant; 0 outside Lambda.
    memory_mb: u32,
    /// `"level":"<AWS_LAMBDA_LOG_LEVEL>",` or empty. Lambda's log-level
    /// filter files a line without a level as INFO, so under WARN or above
    /// it would drop every record: the metering must pass whatever the
    /// level, so each record carries exactly the level the filter keeps.
    level: Arc<str>,
}

/// `{"_aws":{"CloudWatchMetrics":[...]` for `namespace`, ready to be
/// followed by `,"Timestamp":...}`.
fn render_directives(namespace: &str) -> Arc<str> {
    let directives = json!([{
        "Namespace": namespace,
        "Dimensions": [["Service", "TenantId"], ["Service"]],
        "Metrics": [
            {"Name": "Latency", "Unit": "Milliseconds"},
            {"Name": "DatabaseTime", "Unit": "Milliseconds"},
            {"Name": "Requests", "Unit": "Count"},
            {"Name": "Errors", "Unit": "Count"},
            {"Name": "ServerErrors", "Unit": "Count"},
            {"Name": "Throttled", "Unit": "Count"},
            {"Name": "Forbidden", "Unit": "Count"},
            {"Name": "Rows", "Unit": "Count"},
            {"Name": "ResponseBytes", "Unit": "Bytes"},
        ],
    }]);
    format!("{{\"_aws\":{{\"CloudWatchMetrics\":{directives}").into()
}

/// The record's `"level":..,` for Lambda's configured application log
/// level, when it is one Lambda knows.
fn level_field(level: Option<&str>) -> Arc<str> {
    match level.map(|l| l.trim().to_ascii_uppercase()) {
        Some(l) if ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"].contains(&l.as_str()) => {
            format!("\"level\":\"{l}\",").into()
        }
        _ => "".into(),
    }
}

/// A JSON string literal for `raw` (quotes and escapes included).
fn json_str(raw: &str) -> String {
    serde_json::to_string(raw).unwrap_or_else(|_| "\"\"".into())
}

/// A JSON number; non-finite values (never expected) become 0.
fn json_f64(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
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
        let namespace = get("METRICS_NAMESPACE").unwrap_or_else(|| "TenantUsers".into());
        Self {
            directives: render_directives(&namespace),
            service: get("SERVICE_NAME").map_or_else(|| "tenant-users".into(), Into::into),
            sink,
            memory_mb: get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .and_then(|m| m.parse().ok())
                .unwrap_or(0),
            level: level_field(get("AWS_LAMBDA_LOG_LEVEL").as_deref()),
        }
    }

    pub fn disabled() -> Self {
        Self {
            directives: render_directives("TenantUsers"),
            service: "tenant-users".into(),
            sink: None,
            memory_mb: 0,
            level: "".into(),
        }
    }

    /// EMF records into `sink` (tests read them back).
    pub fn to_writer(namespace: &str, sink: Box<dyn Write + Send>) -> Self {
        Self {
            directives: render_directives(namespace),
            service: "tenant-users".into(),
            sink: Some(Arc::new(Mutex::new(sink))),
            memory_mb: 0,
            level: "".into(),
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
        // Unauthenticated requests have no tenant; they are counted under
        // one placeholder so the dimension set stays complete.
        let record = format!(
            "{directives},\"Timestamp\":{timestamp}}},{level}\"Service\":{service},\"TenantId\":{tenant},\
             \"Latency\":{latency},\"DatabaseTime\":{db},\"Requests\":1,\"Errors\":{errors},\
             \"ServerErrors\":{server_errors},\"Throttled\":{throttled},\"Forbidden\":{forbidden},\
             \"Rows\":{rows},\"ResponseBytes\":{bytes},\"MemoryMB\":{memory_mb},\
             \"Route\":{route},\"StatusCode\":{status},\"RequestId\":{request_id}}}",
            directives = self.directives,
            level = self.level,
            service = json_str(&self.service),
            tenant = json_str(summary.tenant.unwrap_or("unauthenticated")),
            latency = json_f64(summary.latency_ms),
            db = json_f64(summary.db_ms),
            errors = u8::from(summary.status >= 400),
            server_errors = u8::from(summary.status >= 500),
            throttled = u8::from(summary.status == 429),
            forbidden = u8::from(summary.status == 403),
            rows = summary.rows,
            bytes = summary.response_bytes,
            memory_mb = self.memory_mb,
            route = json_str(summary.route),
            status = summary.status,
            request_id = json_str(summary.request_id),
        );
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
    rows: u64,
    response_bytes: u64,
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
pub async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
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
    let rows = record.rows.load(std::sync::atomic::Ordering::Relaxed);
    // Every body this service answers with is complete in memory, so its
    // size is exact; a body of unknown length would count its lower bound.
    let response_bytes = axum::body::HttpBody::size_hint(response.body()).lower();
    tracing::info!(
        request_id = %id,
        tenant_id = tenant.as_deref().unwrap_or("-"),
        %method,
        route,
        status,
        latency_ms,
        db_ms,
        rows,
        "request"
    );
    metrics.emit(&Summary {
        request_id: &id,
        tenant: tenant.as_deref(),
        route: &route,
        status,
        latency_ms,
        db_ms,
        rows,
        response_bytes,
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn filter(vars: &[(&str, &str)]) -> Targets {
        log_filter(|key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    }

    const RAW_EVENT: &str = "lambda_runtime::layers::api_response";
    const STATEMENTS: &str = "tokio_postgres::query";

    #[test]
    fn emf_records_pass_lambdas_log_level_filter() {
        for (configured, expected) in [
            (Some("WARN"), Some("WARN")),
            (Some("fatal"), Some("FATAL")),
            (Some("INFO"), Some("INFO")),
            (None, None),
            (Some("loud"), None),
        ] {
            let out = Buffer::default();
            let mut metrics = Metrics::to_writer("T", Box::new(out.clone()));
            metrics.level = level_field(configured);
            metrics.emit(&Summary {
                request_id: "r",
                tenant: Some("acme"),
                route: "/users",
                status: 200,
                latency_ms: 1.0,
                db_ms: 0.5,
                rows: 1,
                response_bytes: 10,
            });
            let line = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let record: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
            assert_eq!(record["level"].as_str(), expected, "{configured:?}");
            assert_eq!(record["TenantId"], "acme");
        }
    }

    #[test]
    fn trace_reaches_our_crate_only() {
        for vars in [
            &[("AWS_LAMBDA_LOG_LEVEL", "TRACE")][..],
            &[("RUST_LOG", "trace")],
            &[("RUST_LOG", "debug")],
            &[(
                "RUST_LOG",
                "lambda_runtime=trace,tokio_postgres=debug,trace",
            )],
            &[("RUST_LOG", "lambda_runtime::layers::api_response=trace")],
            &[("RUST_LOG", "aws_smithy_runtime=trace,hyper=debug")],
            &[
                ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
                ("RUST_LOG", "lambda_runtime=trace"),
            ],
        ] {
            let f = filter(vars);
            for target in [
                RAW_EVENT,
                STATEMENTS,
                "aws_smithy_runtime",
                "hyper",
                "tenant_user",
            ] {
                assert!(!f.would_enable(target, &Level::DEBUG), "{vars:?}: {target}");
                assert!(f.would_enable(target, &Level::INFO), "{vars:?}: {target}");
            }
        }
        let f = filter(&[("AWS_LAMBDA_LOG_LEVEL", "TRACE")]);
        assert!(f.would_enable("tenant_users::db", &Level::TRACE));
        let f = filter(&[("RUST_LOG", "tenant_users::db=trace")]);
        assert!(f.would_enable("tenant_users::db", &Level::TRACE));
        assert!(!f.would_enable("tenant_users::token", &Level::DEBUG));
        assert!(!f.would_enable(RAW_EVENT, &Level::DEBUG));
    }

    #[test]
    fn lambda_log_level_wins_and_info_is_the_default() {
        let f = filter(&[("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("RUST_LOG", "trace")]);
        assert!(!f.would_enable("tenant_users::db", &Level::INFO));
        assert!(!f.would_enable(RAW_EVENT, &Level::INFO));
        assert!(f.would_enable("tenant_users::db", &Level::WARN));
        for vars in [
            &[][..],
            &[("RUST_LOG", "loud")],
            &[("AWS_LAMBDA_LOG_LEVEL", "")],
        ] {
            let f = filter(vars);
            assert!(f.would_enable("tenant_users", &Level::INFO), "{vars:?}");
            assert!(!f.would_enable("tenant_users", &Level::DEBUG), "{vars:?}");
        }
        let f = filter(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")]);
        assert!(f.would_enable("tenant_users", &Level::ERROR));
        assert!(!f.would_enable("tenant_users", &Level::WARN));
        // Quieting another crate is still honoured.
        let f = filter(&[("RUST_LOG", "info,hyper=error")]);
        assert!(!f.would_enable("hyper::proto", &Level::WARN));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(data);
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_subscriber_drops_the_runtimes_raw_event_at_trace() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = log_subscriber(
            |k| match k {
                "AWS_LAMBDA_LOG_LEVEL" => Some("TRACE".into()),
                "AWS_LAMBDA_LOG_FORMAT" => Some("JSON".into()),
                _ => None,
            },
            move || writer.clone(),
        );
        tracing::subscriber::with_default(subscriber, || {
            // What lambda_runtime and tokio-postgres would say at TRACE/DEBUG.
            tracing::trace!(target: "lambda_runtime::layers::api_response", body = "Bearer eyJ.raw.event", "raw JSON event received from Lambda");
            tracing::debug!(target: "tokio_postgres::query", "executing statement with parameters: [\"ada@acme.test\"]");
            tracing::trace!(target: "tenant_users::db", "our own trace line");
            tracing::info!(target: "lambda_runtime::runtime", "runtime info line");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "TRACE");
        assert_eq!(lines[0]["fields"]["message"], "our own trace line");
        assert!(lines[0].get("timestamp").is_none(), "Lambda adds the time");
        assert_eq!(lines[1]["fields"]["message"], "runtime info line");
        assert!(!text.contains("eyJ") && !text.contains("ada@"), "{text}");
    }
}
