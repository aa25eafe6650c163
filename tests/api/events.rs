//! The API Gateway (HTTP API, payload 2.0) fixtures in `events/`, fed
//! through lambda_http's own adapter (event parsing, response encoding):
//! each must give the status `events/manifest.json` names.

use lambda_http::lambda_runtime::{Context, LambdaEvent, Service};
use lambda_http::request::LambdaRequest;
use serde_json::Value;

use crate::common::{TestApp, TestDb};

/// Users the fixtures refer to, by fixed id.
const SEED: &str = include_str!("../../events/seed.sql");

fn events_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events")
}

#[tokio::test]
async fn every_fixture_gives_its_status_through_the_lambda_adapter() {
    let env: Value =
        serde_json::from_str(&std::fs::read_to_string(events_dir().join("env.json")).unwrap())
            .unwrap();
    let vars = env["TenantUsersFunction"]
        .as_object()
        .expect("env.json names the function");
    let token_vars: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("JWT_") || *k == "TENANT_CLAIM")
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        // The fixture secret is refused by value anywhere else.
        .chain([("ALLOW_TEST_FIXTURES", "1")])
        .collect();
    let db = TestDb::create().await;
    db.admin().await.batch_execute(SEED).await.unwrap();
    let app = TestApp::on(db, &token_vars).await;

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(events_dir().join("manifest.json")).unwrap())
            .unwrap();
    let cases = manifest.as_object().unwrap();
    let on_disk = std::fs::read_dir(events_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json") && n != "env.json" && n != "manifest.json")
        .count();
    assert_eq!(on_disk, cases.len(), "every fixture is in the manifest");

    for (file, expected) in cases {
        let raw = std::fs::read_to_string(events_dir().join(file)).unwrap();
        let payload: LambdaRequest =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut adapter = lambda_http::Adapter::from(app.router.clone());
        let response = adapter
            .call(LambdaEvent::new(payload, Context::default()))
            .await
            .unwrap();
        let response = serde_json::to_value(&response).unwrap();
        assert_eq!(response["statusCode"], *expected, "{file}: {response}");
        let content_type = response["headers"]["content-type"]
            .as_str()
            .unwrap_or_default();
        if expected.as_u64().unwrap() >= 400 {
            assert_eq!(content_type, "application/problem+json", "{file}");
        } else if expected != 204 {
            assert_eq!(content_type, "application/json", "{file}");
        }
    }
}
