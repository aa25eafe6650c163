//! One structured log line and one CloudWatch EMF record per request, with
//! the request id, tenant, route, status, latency and database time; and
//! never a token, password or email in any log line.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

use crate::common::{Buffer, TestApp};

/// Checks one record against the EMF specification's required structure:
/// `_aws.Timestamp` (ms), `_aws.CloudWatchMetrics[]` with `Namespace`,
/// `Dimensions` (arrays of at most 30 keys, each a root string member) and
/// `Metrics` (at most 100, each `Name` a root numeric member, `Unit` valid).
fn assert_emf(record: &Value) {
    let aws = &record["_aws"];
    assert!(
        aws["Timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{record}"
    );
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics");
    assert!(!directives.is_empty());
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Count",
        "Percent",
        "None",
    ];
    for directive in directives {
        let namespace = directive["Namespace"].as_str().expect("Namespace");
        assert!((1..=255).contains(&namespace.len()));
        for set in directive["Dimensions"].as_array().expect("Dimensions") {
            let keys = set.as_array().expect("a dimension set is an array");
            assert!(keys.len() <= 30);
            for key in keys {
                let key = key.as_str().expect("dimension key");
                assert!(
                    record[key].is_string(),
                    "dimension {key} must be a root string member: {record}"
                );
            }
        }
        let metrics = directive["Metrics"].as_array().expect("Metrics");
        assert!(metrics.len() <= 100);
        for metric in metrics {
            let name = metric["Name"].as_str().expect("metric Name");
            assert!(
                record[name].is_number(),
                "metric {name} must be a root number: {record}"
            );
            if let Some(unit) = metric.get("Unit") {
                assert!(UNITS.contains(&unit.as_str().unwrap()), "{unit}");
            }
        }
    }
}

fn records(emf: &Buffer) -> Vec<Value> {
    emf.lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("each EMF line is JSON"))
        .collect()
}

#[tokio::test]
async fn every_request_emits_one_emf_record_per_tenant() {
    let app = TestApp::spawn().await;
    app.create_user("acme", "ada@acme.test", "Ada").await;
    app.get("/users", &app.token("globex")).await;
    app.request(axum::http::Method::GET, "/users", None, None)
        .await;
    let records = records(&app.emf);
    assert_eq!(records.len(), 3, "{records:#?}");
    for record in &records {
        assert_emf(record);
        assert_eq!(
            record["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0],
            json!(["Service", "TenantId"])
        );
    }
    assert_eq!(records[0]["TenantId"], "acme");
    assert_eq!(records[0]["StatusCode"], 201);
    assert_eq!(records[0]["Route"], "/users");
    assert!(records[0]["DatabaseTime"].as_f64().unwrap() > 0.0);
    assert!(
        records[0]["Latency"].as_f64().unwrap() >= records[0]["DatabaseTime"].as_f64().unwrap()
    );
    assert_eq!(records[1]["TenantId"], "globex");
    assert_eq!(records[1]["Errors"], 0);
    assert_eq!(records[2]["TenantId"], "unauthenticated");
    assert_eq!(records[2]["Errors"], 1);
    assert_eq!(
        records[2]["DatabaseTime"], 0.0,
        "no database work for a 401"
    );
}

#[tokio::test]
async fn one_json_log_line_per_request_and_no_secrets_in_any_line() {
    let logs = global_logs();

    let app = TestApp::spawn().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let tenant = format!("logs-{run}");
    let token = app.token(&tenant);
    let email = format!("secret-{run}@acme.test");
    let call = |id: &str, auth: &str, body: Option<Value>| {
        let mut request = Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri("/users")
            .header(header::AUTHORIZATION, format!("Bearer {auth}"))
            .header("x-request-id", format!("{id}-{run}"));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        request
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap()
    };
    let created = app
        .send(call(
            "create",
            &token,
            Some(json!({"email": email, "name": "Ada"})),
        ))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    app.send(call(
        "dup",
        &token,
        Some(json!({"email": email, "name": "Dup"})),
    ))
    .await;
    let r = app.send(call("list", &token, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("x-request-id"),
        Some(format!("list-{run}").as_str())
    );
    app.send(call("forged", "forged.token.value", None)).await;

    // The test binary shares one log sink: pick out this test's lines.
    let lines: Vec<Value> = logs
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let line_for = |id: &str| {
        let id = format!("{id}-{run}");
        let found: Vec<&Value> = lines
            .iter()
            .filter(|l| {
                l["fields"]["message"] == "request" && l["fields"]["request_id"] == id.as_str()
            })
            .collect();
        assert_eq!(found.len(), 1, "one request line for {id}");
        found[0]["fields"].clone()
    };
    let list = line_for("list");
    assert_eq!(list["tenant_id"], tenant.as_str());
    assert_eq!(list["route"], "/users");
    assert_eq!(list["method"], "GET");
    assert_eq!(list["status"], 200);
    assert!(
        list["latency_ms"].as_f64().is_some() && list["db_ms"].as_f64().unwrap() > 0.0,
        "{list}"
    );
    assert_eq!(line_for("create")["status"], 201);
    assert_eq!(line_for("dup")["status"], 409);
    let forged = line_for("forged");
    assert_eq!(
        (forged["status"].clone(), forged["tenant_id"].clone()),
        (json!(401), json!("-"))
    );
    assert_eq!(forged["db_ms"], 0.0);

    let all = logs.lines().join("\n");
    for secret in [
        token.as_str(),
        "forged.token.value",
        email.as_str(),
        &app.db.app_password,
        crate::common::SECRET,
    ] {
        assert!(!all.contains(secret), "a log line contains {secret:?}");
    }
}

/// One JSON log sink for the whole test binary (a global subscriber: the
/// tests run on many threads at once).
fn global_logs() -> Buffer {
    static LOGS: std::sync::OnceLock<Buffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Buffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("first and only global subscriber");
        logs
    })
    .clone()
}
