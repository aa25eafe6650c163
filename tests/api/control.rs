//! The control plane (crates/control) through its router, against real
//! PostgreSQL (its own role, made by `migrate`, without BYPASSRLS) and moto
//! (S3 with SSE-KMS, KMS signing): only IAM-signed operators get in; a
//! tenant is onboarded, suspended, resumed, exported and offboarded with a
//! signed receipt, and every action leaves a row in the operator trail.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerIamDescription,
    ApiGatewayRequestAuthorizerJwtDescription, ApiGatewayV2httpRequestContext,
};
use lambda_http::request::RequestContext;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tenant_users::db::config::{DbConfig, TlsConfig};
use tenant_users::secret::config::AwsConfig;
use tenant_users_control::{Config, Control, routes};
use tenant_users_migrate::{self as migrate, AppRole};
use tower::ServiceExt;

use crate::common::moto::{Moto, UserPool};
use crate::common::{TestApp, TestResponse};

const OPERATOR: &str = "arn:aws:sts::123456789012:assumed-role/operators/alice";

/// The control plane on a test database, with its bucket and keys on moto.
struct ControlPlane {
    config: Config,
    app: TestApp,
    router: axum::Router,
    s3: aws_sdk_s3::Client,
    kms: aws_sdk_kms::Client,
    bucket: String,
    export_key: String,
    receipt_key: String,
    control_role: String,
    pool: Option<UserPool>,
    _moto: Moto,
}

/// How a request reaches the function: through the control API with an
/// IAM principal, with another API's JWT authorizer, or with none.
#[derive(Clone, Copy)]
enum Via {
    Iam,
    Jwt,
    Nothing,
}

fn context(via: Via, request_id: &str) -> RequestContext {
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.request_id = Some(request_id.to_owned());
    let mut authorizer = ApiGatewayRequestAuthorizer::default();
    match via {
        Via::Iam => {
            let mut iam = ApiGatewayRequestAuthorizerIamDescription::default();
            iam.user_arn = Some(OPERATOR.to_owned());
            authorizer.iam = Some(iam);
            context.authorizer = Some(authorizer);
        }
        Via::Jwt => {
            authorizer.jwt = Some(ApiGatewayRequestAuthorizerJwtDescription::default());
            context.authorizer = Some(authorizer);
        }
        Via::Nothing => {}
    }
    RequestContext::ApiGatewayV2(context)
}

impl ControlPlane {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With `pool`, a user pool on moto that both functions keep the
    /// identities of (the API verifying the ID tokens moto issues).
    async fn start_with(with_pool: bool) -> Self {
        Self::start_full(with_pool, false).await
    }

    /// With `projects`, the API also serves the test-only resource of the
    /// resource kit, whose table (`projects`, a foreign key to `users`
    /// with `tenant_id`) a test-only migration adds.
    async fn start_full(with_pool: bool, projects: bool) -> Self {
        let moto = Moto::start().await;
        let env = moto.own_role_env();
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let aws = AwsConfig::from_lookup(&get);
        let sdk = tenant_users::secret::sdk_config(&aws).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        let kms = aws_sdk_kms::Client::new(&sdk);
        let bucket = format!("exports-{}", uuid::Uuid::new_v4().simple());
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let export_key = kms
            .create_key()
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .arn
            .unwrap();
        let receipt_key = kms
            .create_key()
            .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
            .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .arn
            .unwrap();

        let pool = match with_pool {
            true => Some(moto.user_pool().await),
            false => None,
        };
        let app = match &pool {
            None if projects => crate::resource_kit::with_projects().await,
            None => TestApp::spawn().await,
            Some(pool) => {
                let mut env = pool.token_env();
                env.extend([
                    ("USER_POOL_ID".into(), pool.id.clone()),
                    ("AWS_ENDPOINT_URL".into(), moto.endpoint.clone()),
                    ("AWS_REGION".into(), "us-east-1".into()),
                    ("AWS_ACCESS_KEY_ID".into(), moto.function_key.0.clone()),
                    ("AWS_SECRET_ACCESS_KEY".into(), moto.function_key.1.clone()),
                ]);
                let vars: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                TestApp::spawn_with(&vars).await
            }
        };
        let control_role = format!("{}_control", app.db.app_user);
        let control = AppRole {
            name: control_role.clone(),
            password: Some("control-pw".into()),
        };
        let app_role = AppRole {
            name: app.db.app_user.clone(),
            password: Some(app.db.app_password.clone()),
        };
        migrate::ensure_control_role(
            &app.db.admin_config(),
            &TlsConfig::DISABLED,
            &control,
            &app_role,
        )
        .await
        .expect("the control role is made and passes its audit");
        let mut pg = app.db.admin_config();
        pg.user(&control_role).password("control-pw");
        let mut db = DbConfig::plain(pg);
        db.audit_profile = tenant_users::audit::Profile::Control;
        let config = Config {
            db,
            aws,
            user_pool_id: pool.as_ref().map(|p| p.id.clone()),
            bucket: Some((bucket.clone(), export_key.clone())),
            receipt_key_id: Some(receipt_key.clone()),
        };
        let control = Control::build(config.clone()).await;
        ControlPlane {
            config,
            router: routes::router(control),
            app,
            s3,
            kms,
            bucket,
            export_key,
            receipt_key,
            control_role,
            pool,
            _moto: moto,
        }
    }

    async fn send(
        &self,
        via: Via,
        method: Method,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        request.extensions_mut().insert(context(via, &id));
        let response = self.router.clone().oneshot(request).await.unwrap();
        TestResponse::from_response(response).await
    }

    async fn operator(&self, method: Method, path: &str, body: Option<Value>) -> TestResponse {
        self.send(Via::Iam, method, path, body, None).await
    }

    /// Rows of `tenant` in every tenant table, as the owner sees them.
    async fn rows_of(&self, tenant: &str) -> Vec<(String, i64)> {
        self.app.db.rows_of(tenant).await
    }

    async fn trail(&self, tenant: &str) -> Vec<(String, String, String, String)> {
        self.app
            .db
            .admin()
            .await
            .query(
                "SELECT operator, action, outcome, request_id FROM control.operator_trail \
                 WHERE tenant = $1 ORDER BY at",
                &[&tenant],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    async fn object(&self, key: &str) -> (Vec<u8>, Option<String>, Option<String>) {
        let object = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("object {key}: {e:?}"));
        let sse = object
            .server_side_encryption()
            .map(|s| s.as_str().to_owned());
        let key_id = object.ssekms_key_id().map(str::to_owned);
        let body = object.body.collect().await.unwrap().into_bytes().to_vec();
        (body, sse, key_id)
    }
}

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/tenants"),
    ("GET", "/tenants/acme"),
    ("PATCH", "/tenants/acme"),
    ("DELETE", "/tenants/acme"),
    ("POST", "/tenants/acme/export"),
];

#[tokio::test]
async fn every_control_route_refuses_all_but_an_iam_signed_operator() {
    let cp = ControlPlane::start().await;
    assert_eq!(
        routes::ROUTES.len(),
        ROUTES.len(),
        "every route of the control plane is tried here"
    );
    let token = cp.app.token("acme");
    let before = cp.rows_of("acme").await;
    for (method, path) in ROUTES {
        let method: Method = method.parse().unwrap();
        let body = Some(
            json!({"status": "suspended", "tenant_id": "acme", "tier": "basic", "admin_email": "a@acme.test"}),
        );
        // No credentials at all.
        let r = cp
            .send(Via::Nothing, method.clone(), path, body.clone(), None)
            .await;
        r.assert_problem(StatusCode::UNAUTHORIZED);
        // A tenant user's valid token (acme's admin, as the tests sign it),
        // directly or through a JWT authorizer.
        for via in [Via::Nothing, Via::Jwt] {
            let r = cp
                .send(via, method.clone(), path, body.clone(), Some(&token))
                .await;
            let detail = r.assert_problem(StatusCode::FORBIDDEN);
            assert!(detail.contains("IAM"), "{method} {path}: {detail}");
        }
    }
    assert_eq!(cp.rows_of("acme").await, before, "nothing changed");
    assert!(
        cp.trail("acme").await.is_empty(),
        "and nothing was recorded"
    );
}

#[tokio::test]
async fn a_tenant_is_onboarded_suspended_resumed_exported_and_offboarded_with_a_signed_receipt() {
    let cp = ControlPlane::start().await;
    let tenant = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let onboard = json!({"tenant_id": tenant, "name": "Initech", "tier": "premium", "admin_email": "boss@initech.test"});

    // Onboard: 201, then the same request again is 200, a different one 409.
    let r = cp
        .operator(Method::POST, "/tenants", Some(onboard.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["status"], "active");
    assert_eq!(r.json()["tier"], "premium");
    let r = cp
        .operator(Method::POST, "/tenants", Some(onboard.clone()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut other = onboard.clone();
    other["tier"] = json!("basic");
    cp.operator(Method::POST, "/tenants", Some(other))
        .await
        .assert_problem(StatusCode::CONFLICT);
    let mut unknown_tier = onboard.clone();
    unknown_tier["tenant_id"] = json!(format!("{tenant}-x"));
    unknown_tier["tier"] = json!("platinum");
    cp.operator(Method::POST, "/tenants", Some(unknown_tier))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);

    // The tenant is served at once, and its first admin is a user.
    let token = cp.app.token(&tenant);
    let r = cp.app.get("/users", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["users"][0]["email"], "boss@initech.test");
    for n in 0..3 {
        cp.app
            .create_user(&tenant, &format!("u{n}@initech.test"), "U")
            .await;
    }
    let acme_before = cp.rows_of("acme").await;
    let acme_users = cp.app.emails_seen_by("acme").await;

    // Suspend: the tenant's very next request is 403; resume: 200.
    let r = cp
        .operator(
            Method::PATCH,
            &format!("/tenants/{tenant}"),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(r.json()["status"], "suspended", "{}", r.text());
    cp.app
        .get("/users", &token)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    let r = cp
        .operator(
            Method::PATCH,
            &format!("/tenants/{tenant}"),
            Some(json!({"status": "active", "tier": "basic"})),
        )
        .await;
    assert_eq!(r.json()["status"], "active", "{}", r.text());
    assert_eq!(r.json()["tier"], "basic");
    assert_eq!(cp.app.get("/users", &token).await.status, StatusCode::OK);
    let r = cp
        .operator(Method::GET, &format!("/tenants/{tenant}"), None)
        .await;
    assert_eq!(r.json()["tier"], "basic", "{}", r.text());
    cp.operator(Method::GET, "/tenants/nobody-here", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    // Export: every tenant table from one snapshot, SSE-KMS, a manifest
    // whose counts and digests match the files.
    let r = cp
        .operator(Method::POST, &format!("/tenants/{tenant}/export"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let exported = r.json();
    let manifest_key = exported["manifest_key"].as_str().unwrap().to_owned();
    let (manifest, sse, key) = cp.object(&manifest_key).await;
    assert_eq!(sse.as_deref(), Some("aws:kms"));
    assert_eq!(key.as_deref(), Some(cp.export_key.as_str()));
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest, exported["manifest"]);
    let counted = cp.rows_of(&tenant).await;
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        counted.len(),
        "a file per tenant table: {counted:?}"
    );
    for file in files {
        let (body, sse, _) = cp.object(file["key"].as_str().unwrap()).await;
        assert_eq!(sse.as_deref(), Some("aws:kms"));
        let digest: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(file["sha256"], digest.as_str());
        let lines = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        assert_eq!(file["rows"], lines);
        let table = file["table"].as_str().unwrap();
        let (_, owner_count) = counted
            .iter()
            .find(|(t, _)| t == table)
            .unwrap_or_else(|| panic!("{table} in {counted:?}"));
        assert_eq!(lines as i64, *owner_count, "{table}");
    }
    let users_file = files.iter().find(|f| f["table"] == "public.users").unwrap();
    assert_eq!(users_file["rows"], 4, "the admin and three users");

    // Offboard with proof: zero rows everywhere, the tombstone, a receipt
    // that verifies with the key's public half.
    let r = cp
        .operator(
            Method::DELETE,
            &format!("/tenants/{tenant}?export=true"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["stored"], true);
    let (receipt_bytes, sse, _) = cp.object(answer["receipt_key"].as_str().unwrap()).await;
    assert_eq!(sse.as_deref(), Some("aws:kms"));
    let (signature, ..) = cp.object(answer["signature_key"].as_str().unwrap()).await;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(&signature),
        answer["signature"].as_str().unwrap()
    );
    let receipt: Value = serde_json::from_slice(&receipt_bytes).unwrap();
    assert_eq!(receipt, answer["receipt"]);
    assert_eq!(receipt["tenant_id"], tenant.as_str());
    assert_eq!(receipt["operator"], OPERATOR);
    assert!(receipt["export_manifest_key"].is_string());
    let deleted = |table: &str| {
        receipt["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .map(|t| t["rows_deleted"].as_u64().unwrap())
    };
    assert_eq!(deleted("public.users"), Some(4));
    assert_eq!(deleted("public.tenant_rate"), Some(1));
    assert!(
        receipt["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["rows_left"] == 0)
    );
    verify(&cp, &receipt_bytes, &signature).await;
    let mut forged = receipt_bytes.clone();
    let at = forged.len() / 2;
    forged[at] ^= 1;
    assert!(
        !verifies(&cp, &forged, &signature).await,
        "a changed receipt does not verify"
    );

    for (table, n) in cp.rows_of(&tenant).await {
        let expected = i64::from(table == "public.tenants");
        assert_eq!(n, expected, "{table} after offboarding");
    }
    let r = cp
        .operator(Method::GET, &format!("/tenants/{tenant}"), None)
        .await;
    assert_eq!(r.json()["status"], "offboarded");
    cp.app
        .get("/users", &token)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    cp.operator(Method::DELETE, &format!("/tenants/{tenant}"), None)
        .await
        .assert_problem(StatusCode::CONFLICT);
    cp.operator(
        Method::PATCH,
        &format!("/tenants/{tenant}"),
        Some(json!({"status": "active"})),
    )
    .await
    .assert_problem(StatusCode::CONFLICT);

    // The other tenant was never touched.
    assert_eq!(cp.rows_of("acme").await, acme_before);
    assert_eq!(cp.app.emails_seen_by("acme").await, acme_users);

    // Every action is in the trail, with the operator and request id.
    let trail = cp.trail(&tenant).await;
    let actions: Vec<&str> = trail.iter().map(|(_, a, _, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "onboard", "suspend", "resume", "export", "export", "offboard"
        ]
    );
    assert!(
        trail
            .iter()
            .all(|(op, _, outcome, id)| op == OPERATOR && outcome == "succeeded" && !id.is_empty())
    );
}

/// Checks `signature` over `message` with the receipt key's public half,
/// as anyone holding it would (`aws kms get-public-key`), not through KMS.
async fn verifies(cp: &ControlPlane, message: &[u8], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let public = cp
        .kms
        .get_public_key()
        .key_id(&cp.receipt_key)
        .send()
        .await
        .unwrap();
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(public.public_key().unwrap().as_ref())
        .unwrap();
    let signature = p256::ecdsa::Signature::from_der(signature).unwrap();
    key.verify(message, &signature).is_ok()
}

async fn verify(cp: &ControlPlane, message: &[u8], signature: &[u8]) {
    assert!(
        verifies(cp, message, signature).await,
        "the receipt verifies"
    );
}

#[tokio::test]
async fn without_a_signing_key_nothing_is_offboarded() {
    let moto = Moto::start().await;
    let app = TestApp::spawn().await;
    let control_role = format!("{}_control", app.db.app_user);
    let role = AppRole {
        name: control_role.clone(),
        password: Some("pw".into()),
    };
    let app_role = AppRole {
        name: app.db.app_user.clone(),
        password: None,
    };
    migrate::ensure_control_role(
        &app.db.admin_config(),
        &TlsConfig::DISABLED,
        &role,
        &app_role,
    )
    .await
    .unwrap();
    let mut pg = app.db.admin_config();
    pg.user(&control_role).password("pw");
    let mut db = DbConfig::plain(pg);
    db.audit_profile = tenant_users::audit::Profile::Control;
    let env = moto.own_role_env();
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let control = Control::build(Config {
        db,
        aws: AwsConfig::from_lookup(&get),
        user_pool_id: None,
        bucket: None,
        receipt_key_id: None,
    })
    .await;
    let router = routes::router(control);
    app.create_user("acme", "kept@acme.test", "Kept").await;
    let mut request = Request::builder()
        .method(Method::DELETE)
        .uri("/tenants/acme")
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(context(Via::Iam, "req-1"));
    let r = TestResponse::from_response(router.oneshot(request).await.unwrap()).await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.emails_seen_by("acme").await, ["kept@acme.test"]);
}

#[tokio::test]
async fn the_trail_is_out_of_the_app_roles_reach_and_append_only_for_the_control_role() {
    let cp = ControlPlane::start().await;
    let denied = |e: tokio_postgres::Error| {
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{e}"
        )
    };
    let insert = "INSERT INTO control.operator_trail (operator, action, tenant, request_id, outcome) \
                  VALUES ('x', 'onboard', 'acme', 'r', 'succeeded')";
    // The application role: neither read nor write.
    let app = cp.app.db.app_client().await;
    denied(
        app.query("SELECT * FROM control.operator_trail", &[])
            .await
            .unwrap_err(),
    );
    denied(app.execute(insert, &[]).await.unwrap_err());
    // The control role: append, nothing else.
    let mut pg = cp.app.db.admin_config();
    pg.user(&cp.control_role).password("control-pw");
    let control = crate::common::connect(&pg).await;
    control.execute(insert, &[]).await.unwrap();
    for sql in [
        "SELECT * FROM control.operator_trail",
        "UPDATE control.operator_trail SET outcome = 'failed'",
        "DELETE FROM control.operator_trail",
        "TRUNCATE control.operator_trail",
    ] {
        denied(control.batch_execute(sql).await.unwrap_err());
    }
    // Not even the owner changes it.
    let owner = cp.app.db.admin().await;
    for sql in [
        "UPDATE control.operator_trail SET outcome = 'failed'",
        "DELETE FROM control.operator_trail",
        "TRUNCATE control.operator_trail",
    ] {
        let e = owner.batch_execute(sql).await.unwrap_err();
        assert!(
            e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"),
            "{sql}: {e:?}"
        );
    }
    // The audit proves both, and fails the moment either changes.
    let audit = |client: Arc<tokio_postgres::Client>, profile| async move {
        tenant_users::audit::check_as(&client, profile)
            .await
            .unwrap()
    };
    let app = Arc::new(app);
    let control = Arc::new(control);
    assert_eq!(
        audit(app.clone(), tenant_users::audit::Profile::Api).await,
        Vec::<String>::new()
    );
    assert_eq!(
        audit(control.clone(), tenant_users::audit::Profile::Control).await,
        Vec::<String>::new()
    );
    owner
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA control TO {app}; GRANT SELECT ON control.operator_trail TO {app};
             GRANT SELECT ON control.operator_trail TO {control}",
            app = cp.app.db.app_user,
            control = cp.control_role
        ))
        .await
        .unwrap();
    for (client, profile) in [
        (app, tenant_users::audit::Profile::Api),
        (control, tenant_users::audit::Profile::Control),
    ] {
        let findings = audit(client, profile).await;
        assert!(
            findings
                .iter()
                .any(|f| f
                    .contains("[trail-out-of-reach-or-append-only] table control.operator_trail")),
            "{profile:?}: {findings:?}"
        );
    }
}

#[tokio::test]
async fn an_offboarding_whose_receipt_cannot_be_signed_deletes_nothing_and_is_recorded() {
    let mut cp = ControlPlane::start().await;
    let mut config = cp.config.clone();
    // A key that does not exist: KMS refuses to sign.
    config.receipt_key_id =
        Some("arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000".into());
    cp.router = routes::router(Control::build(config).await);
    cp.app.create_user("acme", "kept@acme.test", "Kept").await;
    let before = cp.rows_of("acme").await;
    let r = cp.operator(Method::DELETE, "/tenants/acme", None).await;
    let detail = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("no row was deleted"), "{detail}");
    assert_eq!(cp.rows_of("acme").await, before);
    let token = cp.app.token("acme");
    assert_eq!(cp.app.get("/users", &token).await.status, StatusCode::OK);
    let trail = cp.trail("acme").await;
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(
        (trail[0].1.as_str(), trail[0].2.as_str()),
        ("offboard", "failed")
    );
}

/// The identities of `tenant` left in the pool.
async fn identities_of(pool: &UserPool, tenant: &str) -> Vec<String> {
    let mut left = Vec::new();
    for username in pool.usernames().await {
        if pool
            .identity(&username)
            .await
            .is_some_and(|i| i.tenant() == Some(tenant))
        {
            left.push(username);
        }
    }
    left
}

#[tokio::test]
async fn one_tenants_whole_life_through_both_functions_leaves_the_other_tenant_untouched() {
    let cp = ControlPlane::start_with(true).await;
    let pool = cp.pool.as_ref().unwrap();
    let app = &cp.app;

    // The other tenant, living alongside: its admin and a member it invited.
    pool.add("boss@globex.test", "globex", true).await;
    let globex_admin = pool.sign_in("boss@globex.test").await.unwrap();
    let r = app
        .post(
            "/users",
            &globex_admin,
            json!({"email": "staff@globex.test", "name": "Staff"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let globex_rows = cp.rows_of("globex").await;
    let globex_identities = identities_of(pool, "globex").await;
    assert_eq!(globex_identities.len(), 2);

    // Onboard: the registry row, the first admin's row and identity.
    let tenant = "initrode";
    let r = cp
        .operator(
            Method::POST,
            "/tenants",
            Some(json!({"tenant_id": tenant, "name": "Initrode", "tier": "premium", "admin_email": "peter@initrode.test"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let admin_identity = pool
        .identity("peter@initrode.test")
        .await
        .expect("the first admin's identity");
    assert_eq!(admin_identity.tenant(), Some(tenant));
    assert_eq!(admin_identity.groups, [tenant_users::tenant::ADMIN_GROUP]);

    // The admin signs in (after the invitation's temporary password).
    pool.set_password("peter@initrode.test").await;
    let admin = pool.sign_in("peter@initrode.test").await.unwrap();
    // ... and invites a member, who reads and cannot write.
    let r = app
        .post(
            "/users",
            &admin,
            json!({"email": "milton@initrode.test", "name": "Milton"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    pool.set_password("milton@initrode.test").await;
    let member = pool.sign_in("milton@initrode.test").await.unwrap();
    let r = app.get("/users", &member).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut emails: Vec<String> = r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect();
    emails.sort();
    assert_eq!(emails, ["milton@initrode.test", "peter@initrode.test"]);
    app.post(
        "/users",
        &member,
        json!({"email": "x@initrode.test", "name": "X"}),
    )
    .await
    .assert_problem(StatusCode::FORBIDDEN);

    // Suspend: 403 on the next request; resume: 200.
    let path = format!("/tenants/{tenant}");
    cp.operator(Method::PATCH, &path, Some(json!({"status": "suspended"})))
        .await;
    app.get("/users", &member)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    app.get("/users", &admin)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    cp.operator(Method::PATCH, &path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(app.get("/users", &member).await.status, StatusCode::OK);

    // Export, its manifest checked against the files.
    let r = cp
        .operator(Method::POST, &format!("{path}/export"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for file in r.json()["manifest"]["files"].as_array().unwrap() {
        let (body, ..) = cp.object(file["key"].as_str().unwrap()).await;
        let digest: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(file["sha256"], digest.as_str());
        let lines = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(file["rows"], lines);
    }

    // Offboard: a verified receipt, zero rows, no identities.
    let r = cp.operator(Method::DELETE, &path, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["receipt"]["identities_deleted"], 2);
    let (receipt, ..) = cp.object(answer["receipt_key"].as_str().unwrap()).await;
    let (signature, ..) = cp.object(answer["signature_key"].as_str().unwrap()).await;
    verify(&cp, &receipt, &signature).await;
    for (table, n) in cp.rows_of(tenant).await {
        assert_eq!(n, i64::from(table == "public.tenants"), "{table}");
    }
    assert!(identities_of(pool, tenant).await.is_empty());
    assert!(pool.sign_in("peter@initrode.test").await.is_err());
    // Its old tokens are refused.
    for token in [&admin, &member] {
        let r = app.get("/users", token).await;
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&r.status),
            "{}",
            r.text()
        );
    }

    // The other tenant: untouched throughout, and still served.
    assert_eq!(cp.rows_of("globex").await, globex_rows);
    assert_eq!(identities_of(pool, "globex").await, globex_identities);
    assert_eq!(
        app.get("/users", &globex_admin).await.status,
        StatusCode::OK
    );
    let actions: Vec<String> = cp
        .trail(tenant)
        .await
        .into_iter()
        .map(|(_, a, _, _)| a)
        .collect();
    assert_eq!(
        actions,
        ["onboard", "suspend", "resume", "export", "offboard"]
    );
}

#[tokio::test]
async fn an_onboarding_whose_admin_the_pool_refuses_leaves_no_half_tenant() {
    let mut cp = ControlPlane::start_with(true).await;
    let pool = cp.pool.as_ref().unwrap();
    // The address is taken in the pool by another tenant's user: 409, and
    // neither the registry row nor the users row is kept.
    pool.add("taken@globex.test", "globex", false).await;
    let r = cp
        .operator(
            Method::POST,
            "/tenants",
            Some(
                json!({"tenant_id": "hooli", "tier": "basic", "admin_email": "taken@globex.test"}),
            ),
        )
        .await;
    r.assert_problem(StatusCode::CONFLICT);
    assert!(cp.rows_of("hooli").await.iter().all(|(_, n)| *n == 0));
    assert_eq!(
        pool.identity("taken@globex.test").await.unwrap().tenant(),
        Some("globex"),
        "the other tenant's identity is untouched"
    );

    // The pool unreachable between the two steps (a fault injected after
    // the rows are written): 503, and nothing is kept.
    let mut config = cp.config.clone();
    config.aws.endpoint_url = Some(format!(
        "http://127.0.0.1:{}",
        crate::common::moto::free_port()
    ));
    cp.router = routes::router(Control::build(config).await);
    let onboard = json!({"tenant_id": "hooli", "tier": "basic", "admin_email": "gavin@hooli.test"});
    let r = cp
        .operator(Method::POST, "/tenants", Some(onboard.clone()))
        .await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(cp.rows_of("hooli").await.iter().all(|(_, n)| *n == 0));
    let outcomes: Vec<(String, String)> = cp
        .trail("hooli")
        .await
        .into_iter()
        .map(|(_, a, o, _)| (a, o))
        .collect();
    assert_eq!(
        outcomes.last(),
        Some(&("onboard".to_owned(), "compensated".to_owned()))
    );
    // The pool back: the same request onboards the tenant whole.
    cp.router = routes::router(Control::build(cp.config.clone()).await);
    let r = cp.operator(Method::POST, "/tenants", Some(onboard)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let pool = cp.pool.as_ref().unwrap();
    assert_eq!(
        pool.identity("gavin@hooli.test").await.unwrap().tenant(),
        Some("hooli")
    );
}

#[tokio::test]
async fn a_tenant_table_a_later_migration_adds_is_exported_and_emptied_with_no_code_change() {
    // `projects` (tests/api/resource_kit/projects.sql) is added after the
    // control plane was written; its role's grants come from the catalog.
    let cp = ControlPlane::start_full(false, true).await;
    for tenant in ["acme", "globex"] {
        let owner = cp
            .app
            .create_user(tenant, &format!("owner@{tenant}.test"), "Owner")
            .await;
        for name in ["Apollo", "Gemini"] {
            crate::resource_kit::create(
                &cp.app,
                tenant,
                "/projects",
                json!({"name": name, "owner_user_id": owner}),
            )
            .await;
        }
    }
    let r = cp
        .operator(Method::DELETE, "/tenants/acme?export=true", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let receipt = r.json()["receipt"].clone();
    let projects = receipt["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.projects")
        .cloned()
        .expect("projects is in the receipt");
    assert_eq!(projects["rows_deleted"], 2);
    assert_eq!(projects["rows_left"], 0);
    // Exported before: its file holds acme's two projects.
    let manifest_key = receipt["export_manifest_key"].as_str().unwrap();
    let (manifest, ..) = cp.object(manifest_key).await;
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let file = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["table"] == "public.projects")
        .expect("projects is exported");
    assert_eq!(file["rows"], 2);
    let (body, ..) = cp.object(file["key"].as_str().unwrap()).await;
    let names: Vec<String> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"Apollo".to_owned()) && names.contains(&"Gemini".to_owned()));
    // Emptied for acme, untouched for globex.
    let counts: std::collections::BTreeMap<String, i64> =
        cp.rows_of("acme").await.into_iter().collect();
    assert_eq!(counts["public.projects"], 0);
    assert_eq!(counts["public.users"], 0);
    let globex: std::collections::BTreeMap<String, i64> =
        cp.rows_of("globex").await.into_iter().collect();
    assert_eq!(globex["public.projects"], 2);
}
