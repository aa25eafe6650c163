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
        // Empty is unset, as Config::from_lookup reads the environment.
        .filter(|(_, v)| !v.trim().is_empty())
        // The fixture secret is refused by value anywhere else.
        .chain([("ALLOW_TEST_FIXTURES", "1")])
        .collect();
    let db = TestDb::create().await;
    db.admin().await.batch_execute(SEED).await.unwrap();
    let app = TestApp::on(db, &token_vars).await;

    feed(&app.router, &events_dir()).await;
}

#[tokio::test]
async fn every_control_fixture_gives_its_status_through_the_lambda_adapter() {
    let dir = events_dir().join("control");
    let db = TestDb::create().await;
    db.admin().await.batch_execute(SEED).await.unwrap();
    let control_role = format!("{}_control", db.app_user);
    let role = |name: &str, password: &str| tenant_users_migrate::AppRole {
        name: name.to_owned(),
        password: Some(password.to_owned()),
    };
    tenant_users_migrate::ensure_control_role(
        &db.admin_config(),
        &tenant_users::db::config::TlsConfig::DISABLED,
        &role(&control_role, "control-pw"),
        &role(&db.app_user, &db.app_password),
    )
    .await
    .unwrap();
    let mut pg = db.admin_config();
    pg.user(&control_role).password("control-pw");
    let mut db_config = tenant_users::db::config::DbConfig::plain(pg);
    db_config.audit_profile = tenant_users::audit::Profile::Control;
    // As env.json leaves it: no pool, no bucket, no signing key.
    let control = tenant_users_control::Control::build(tenant_users_control::Config {
        db: db_config,
        aws: Default::default(),
        user_pool_id: None,
        bucket: None,
        receipt_key_id: None,
    })
    .await;
    let router = tenant_users_control::routes::router(control);

    feed(&router, &dir).await;
    // The fixtures' effects, as the owner sees them: hooli onboarded with
    // its first admin, vandelay re-tiered and (no signing key) not
    // offboarded, and the trail holds the two actions.
    let admin = db.admin().await;
    let tiers: Vec<(String, String, String)> = admin
        .query(
            "SELECT tenant_id, tier, status FROM tenants WHERE tenant_id IN ('hooli', 'vandelay') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        tiers,
        [
            ("hooli".into(), "standard".into(), "active".into()),
            ("vandelay".into(), "premium".into(), "active".into())
        ]
    );
    let trail: Vec<(String, String, String)> = admin
        .query(
            "SELECT action, tenant, request_id FROM control.operator_trail ORDER BY at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        trail,
        [
            (
                "onboard".into(),
                "hooli".into(),
                "fixture-control-onboard".into()
            ),
            (
                "update".into(),
                "vandelay".into(),
                "fixture-control-retier-tenant".into()
            )
        ]
    );
}

/// Feeds every fixture `dir/manifest.json` names to `router` through
/// lambda_http's adapter; each must give its status, errors as
/// problem+json, and every fixture of `dir` must be in the manifest.
async fn feed(router: &axum::Router, dir: &std::path::Path) {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest.as_object().unwrap();
    let on_disk = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json") && n != "env.json" && n != "manifest.json")
        .count();
    assert_eq!(on_disk, cases.len(), "every fixture is in the manifest");
    for (file, expected) in cases {
        let raw = std::fs::read_to_string(dir.join(file)).unwrap();
        let payload: LambdaRequest =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut adapter = lambda_http::Adapter::from(router.clone());
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

fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The variables `template.yaml` gives the API function: its own and the
/// Globals', with their values (intrinsics such as `!Ref` as tagged values).
fn template_variables() -> serde_norway::Mapping {
    let template: serde_norway::Value =
        serde_norway::from_str(&read("template.yaml")).expect("template.yaml is YAML");
    let mut vars = template["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .cloned()
        .unwrap_or_default();
    let own =
        template["Resources"]["TenantUsersFunction"]["Properties"]["Environment"]["Variables"]
            .as_mapping()
            .expect("TenantUsersFunction declares its environment");
    vars.extend(own.clone());
    vars
}

/// `sam local invoke` hands a function only the variables its template
/// declares and silently drops the rest of `--env-vars`; and every declared
/// variable env.json leaves out keeps its deployment value (a secret ARN, a
/// JWKS URL, verify-full) in the fixture run. So the two name the same set.
#[test]
fn env_json_sets_exactly_the_variables_the_template_declares() {
    let env: Value = serde_json::from_str(&read("events/env.json")).unwrap();
    let env: std::collections::BTreeSet<String> = env["TenantUsersFunction"]
        .as_object()
        .expect("env.json names the function")
        .keys()
        .cloned()
        .collect();
    let declared: std::collections::BTreeSet<String> = template_variables()
        .keys()
        .map(|k| k.as_str().expect("variable names are strings").to_owned())
        .collect();
    let undeclared: Vec<_> = env.difference(&declared).collect();
    let unset: Vec<_> = declared.difference(&env).collect();
    assert!(
        undeclared.is_empty(),
        "events/env.json sets {undeclared:?}, which template.yaml does not declare: sam local drops them"
    );
    assert!(
        unset.is_empty(),
        "template.yaml declares {unset:?}, which events/env.json does not set: the fixtures would run with the deployment's value"
    );
}

/// The variables only the fixtures set are declared empty, so a deployment
/// has none of them; and empty means unset to the function: an empty
/// `JWT_HS256_SECRET` is no key at all, whatever `JWT_ALGORITHMS` says.
#[test]
fn fixture_only_variables_are_empty_in_the_template_and_empty_is_unset() {
    let vars = template_variables();
    for key in [
        "DATABASE_URL",
        "JWT_HS256_SECRET",
        "JWT_ALLOW_HS256",
        "RUST_LOG",
        "ALLOW_TEST_FIXTURES",
    ] {
        assert_eq!(
            vars.get(key).and_then(|v| v.as_str()),
            Some(""),
            "template.yaml declares {key} with an empty default"
        );
    }

    let config = |extra: &[(&str, &str)]| {
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", "postgres://app:pw@127.0.0.1:5432/app"),
            ("JWT_HS256_SECRET", ""),
            ("JWT_ALLOW_HS256", ""),
            ("ALLOW_TEST_FIXTURES", ""),
            ("AWS_LAMBDA_FUNCTION_NAME", "tenant-users"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.reverse(); // later entries win
        tenant_users::app::Config::from_lookup(|key| {
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        })
    };
    let err = |extra: &[(&str, &str)]| match config(extra) {
        Ok(_) => panic!("{extra:?}: an empty JWT_HS256_SECRET was taken as a key"),
        Err(e) => e.0,
    };
    assert!(err(&[]).contains("no way to verify tokens"));
    assert!(err(&[("JWT_ALGORITHMS", "HS256")]).contains("JWT_HS256_SECRET is not set"));
    assert!(
        err(&[("JWT_ALGORITHMS", "HS256"), ("JWT_HS256_SECRET", "   ")])
            .contains("JWT_HS256_SECRET is not set")
    );
}
