//! Roles inside a tenant: admins (`cognito:groups` holds `tenant-admin`)
//! write users, members read; and the user pool's identities are kept in
//! step with the `users` rows by `POST` and `DELETE /users`, whatever
//! fails between the two writes. The pool is moto's, and the API verifies
//! the ID tokens moto issues (RS256, its JWKS), as it would Cognito's.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::delay::{Switch, switchable_relay};
use crate::common::moto::{Moto, UserPool};
use crate::common::{TestApp, TestDb, member_claims_for, sign_hs256};

const ADMIN: &str = "admin@acme.test";
const MEMBER: &str = "member@acme.test";

/// moto, a pool with acme's first admin in it (as onboarding leaves it),
/// and the API keeping that pool's identities, reaching moto through a
/// relay the test can cut.
struct Stack {
    moto: Moto,
    pool: UserPool,
    app: TestApp,
    pool_path: Switch,
}

impl Stack {
    async fn start() -> Self {
        let moto = Moto::start().await;
        let pool = moto.user_pool().await;
        pool.add(ADMIN, "acme", true).await;
        let (relay, pool_path) = switchable_relay(moto.port).await;
        let env = Self::env(&moto, &pool, relay);
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = TestApp::spawn_with(&vars).await;
        Stack {
            moto,
            pool,
            app,
            pool_path,
        }
    }

    /// The function's environment: moto's tokens, the pool, the function's
    /// own keys, the AWS endpoint behind `relay`.
    fn env(moto: &Moto, pool: &UserPool, relay: u16) -> Vec<(String, String)> {
        let mut env = pool.token_env();
        env.extend([
            ("USER_POOL_ID".into(), pool.id.clone()),
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://127.0.0.1:{relay}"),
            ),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), moto.function_key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), moto.function_key.1.clone()),
        ]);
        env
    }

    /// Sends the request again while it is 503 `identity-unavailable` (the
    /// pool's back-off after a failure), for up to 70 s (the back-off's
    /// longest is 30 s); returns the first other answer.
    async fn retry_while_backing_off<F>(&self, send: impl Fn() -> F) -> crate::common::TestResponse
    where
        F: std::future::Future<Output = crate::common::TestResponse>,
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(70);
        loop {
            let r = send().await;
            let backing_off = r.status == StatusCode::SERVICE_UNAVAILABLE
                && r.json()["type"] == "/problems/identity-unavailable";
            if !backing_off || std::time::Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn sign_in(&self, username: &str) -> String {
        self.pool
            .sign_in(username)
            .await
            .unwrap_or_else(|e| panic!("{username} signs in: {e}"))
    }

    /// The admin creates `email` through the API; returns its user_id.
    async fn invite(&self, admin_token: &str, email: &str) -> String {
        let r = self
            .app
            .post(
                "/users",
                admin_token,
                json!({"email": email, "name": "Invited"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        r.json()["user_id"].as_str().unwrap().to_owned()
    }
}

/// The emails the holder of `token` sees through `GET /users`.
async fn emails(app: &TestApp, token: &str) -> Vec<String> {
    let r = app.get("/users", token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_problem_type(r: &crate::common::TestResponse, status: StatusCode, kind: &str) -> Value {
    r.assert_problem(status);
    let body = r.json();
    assert_eq!(body["type"], format!("/problems/{kind}"), "{body}");
    body
}

#[tokio::test]
async fn an_admin_signed_in_through_the_pool_invites_a_member_who_reads_but_cannot_write() {
    let s = Stack::start().await;
    let admin = s.sign_in(ADMIN).await;

    // Whatever tenant a body names, it is refused, and nothing is created.
    for body in [
        json!({"email": MEMBER, "name": "M", "tenant_id": "globex"}),
        json!({"email": MEMBER, "name": "M", "custom:tenant_id": "globex"}),
    ] {
        let r = s.app.post("/users", &admin, body).await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(s.pool.identity(MEMBER).await.is_none(), "no identity");
    }
    assert!(s.app.all_rows().await.is_empty());

    let id = s.invite(&admin, "Member@Acme.test").await;
    // The identity: the email, the admin's tenant from the token, no group.
    let identity = s.pool.identity(MEMBER).await.expect("identity created");
    assert_eq!(identity.tenant(), Some("acme"));
    assert_eq!(identity.attributes["email"], "Member@Acme.test");
    assert!(identity.enabled);
    assert!(identity.groups.is_empty(), "{:?}", identity.groups);
    assert_eq!(
        s.app.all_rows().await,
        vec![("acme".into(), "Member@Acme.test".into(), "Invited".into())]
    );

    // The member signs in through the pool: reads, and cannot write.
    s.pool.set_password(MEMBER).await;
    let member = s.sign_in(MEMBER).await;
    let r = s.app.get("/users", &member).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["users"][0]["user_id"], id.as_str());
    assert_eq!(
        s.app.get(&format!("/users/{id}"), &member).await.status,
        StatusCode::OK
    );
    let writes = [
        s.app
            .post(
                "/users",
                &member,
                json!({"email": "x@acme.test", "name": "X"}),
            )
            .await,
        s.app
            .patch(&format!("/users/{id}"), &member, json!({"name": "Changed"}))
            .await,
        s.app.delete(&format!("/users/{id}"), &member).await,
    ];
    for r in &writes {
        let body = assert_problem_type(r, StatusCode::FORBIDDEN, "admin-required");
        assert!(
            body["detail"].as_str().unwrap().contains("tenant-admin"),
            "{body}"
        );
    }
    assert_eq!(s.app.all_rows().await.len(), 1, "nothing written");
    assert_eq!(s.pool.usernames().await, vec![ADMIN, MEMBER]);

    // The email is the sign-in name: it cannot be renamed while the pool
    // is kept; the name can.
    let r = s
        .app
        .patch(
            &format!("/users/{id}"),
            &admin,
            json!({"email": "new@acme.test"}),
        )
        .await;
    assert_eq!(
        assert_problem_type(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input")["field"],
        "email"
    );
    let r = s
        .app
        .patch(&format!("/users/{id}"), &admin, json!({"name": "Renamed"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn deleting_a_user_removes_its_identity_and_its_sign_in_fails() {
    let s = Stack::start().await;
    let admin = s.sign_in(ADMIN).await;
    let id = s.invite(&admin, MEMBER).await;
    s.pool.set_password(MEMBER).await;
    s.sign_in(MEMBER).await;

    let r = s.app.delete(&format!("/users/{id}"), &admin).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(s.pool.identity(MEMBER).await.is_none(), "identity removed");
    assert_eq!(
        s.pool.sign_in(MEMBER).await.unwrap_err(),
        "UserNotFoundException"
    );
    assert!(s.app.all_rows().await.is_empty());
    assert_eq!(
        s.pool.usernames().await,
        vec![ADMIN],
        "the admin is untouched"
    );
    // Gone is gone: a second DELETE is a plain 404.
    let r = s.app.delete(&format!("/users/{id}"), &admin).await;
    r.assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_identity_whose_row_cannot_be_written_is_removed_again() {
    let s = Stack::start().await;
    let admin = s.sign_in(ADMIN).await;

    // (1) The row is refused: acme already has a row with this email (one
    // written before the pool was kept, so no identity stands in the way).
    s.app
        .db
        .admin()
        .await
        .execute(
            "INSERT INTO users (tenant_id, email, name) VALUES ('acme', 'old@acme.test', 'Old')",
            &[],
        )
        .await
        .unwrap();
    let r = s
        .app
        .post(
            "/users",
            &admin,
            json!({"email": "OLD@acme.test", "name": "New"}),
        )
        .await;
    let body = assert_problem_type(&r, StatusCode::CONFLICT, "duplicate");
    assert_eq!(body["field"], "email");
    assert!(
        s.pool.identity("old@acme.test").await.is_none(),
        "identity removed again"
    );
    assert_eq!(s.pool.usernames().await, vec![ADMIN]);

    // (2) The database is away: 503, and no identity is left behind.
    let dead = crate::common::moto::free_port();
    let mut env = Stack::env(&s.moto, &s.pool, s.moto.port);
    env.push((
        "DATABASE_URL".into(),
        format!(
            "postgres://{}:{}@127.0.0.1:{dead}/{}",
            s.app.db.app_user, s.app.db.app_password, s.app.db.name
        ),
    ));
    let away = TestApp::from_env(TestDb::create().await, env).await;
    let r = away
        .post(
            "/users",
            &admin,
            json!({"email": "later@acme.test", "name": "Later"}),
        )
        .await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
    assert!(
        s.pool.identity("later@acme.test").await.is_none(),
        "identity removed again"
    );
    assert_eq!(s.pool.usernames().await, vec![ADMIN]);
}

#[tokio::test]
async fn a_user_whose_identity_cannot_be_removed_is_kept_whole_and_a_retry_converges() {
    let s = Stack::start().await;
    let admin = s.sign_in(ADMIN).await;
    let id = s.invite(&admin, MEMBER).await;
    s.pool.set_password(MEMBER).await;
    let before = s.app.get(&format!("/users/{id}"), &admin).await.json();

    // The pool is unreachable once the row is deleted (after the SDK's
    // retries): the row is written back as it was, and the caller is told
    // to retry.
    s.pool_path.cut();
    let r = s.app.delete(&format!("/users/{id}"), &admin).await;
    let body = assert_problem_type(&r, StatusCode::SERVICE_UNAVAILABLE, "identity-unavailable");
    assert!(r.header("retry-after").is_some(), "{body}");
    s.pool_path.restore();
    let after = s.app.get(&format!("/users/{id}"), &admin).await;
    assert_eq!(
        after.status,
        StatusCode::OK,
        "the row is back: {}",
        after.text()
    );
    assert_eq!(
        after.json(),
        before,
        "as it was: same id, email, name, timestamps"
    );
    let identity = s
        .pool
        .identity(MEMBER)
        .await
        .expect("the identity is still there");
    assert!(
        identity.enabled,
        "not even disabled: the pool was never reached"
    );
    s.sign_in(MEMBER).await;

    let path = format!("/users/{id}");
    // Once the pool answers again (and the back-off after the failure
    // has passed), the same DELETE completes both; until then it is 503
    // and changes nothing.
    let r = s
        .retry_while_backing_off(|| s.app.delete(&path, &admin))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(s.pool.identity(MEMBER).await.is_none());
    assert!(s.app.all_rows().await.is_empty());
}

#[tokio::test]
async fn an_identity_the_pool_cannot_create_leaves_no_row() {
    let s = Stack::start().await;
    let admin = s.sign_in(ADMIN).await;
    s.pool_path.cut();
    let r = s
        .app
        .post("/users", &admin, json!({"email": MEMBER, "name": "M"}))
        .await;
    assert_problem_type(&r, StatusCode::SERVICE_UNAVAILABLE, "identity-unavailable");
    s.pool_path.restore();
    assert!(
        s.app.all_rows().await.is_empty(),
        "no row without its identity"
    );
    assert!(s.pool.identity(MEMBER).await.is_none());
    // And it heals: the same request succeeds once the back-off passes.
    let r = s
        .retry_while_backing_off(|| {
            s.app
                .post("/users", &admin, json!({"email": MEMBER, "name": "M"}))
        })
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert!(s.pool.identity(MEMBER).await.is_some());
}

#[tokio::test]
async fn a_pool_outage_costs_the_pool_a_few_calls_not_one_per_write() {
    let s = Stack::start().await;
    let admin = s.sign_in(ADMIN).await;
    let id = s.invite(&admin, MEMBER).await;
    s.pool_path.cut();
    let before = s.pool_path.connections();
    let started = std::time::Instant::now();
    for i in 0..20 {
        let r = if i % 2 == 0 {
            s.app
                .post(
                    "/users",
                    &admin,
                    json!({"email": format!("n{i}@acme.test"), "name": "N"}),
                )
                .await
        } else {
            s.app.delete(&format!("/users/{id}"), &admin).await
        };
        assert_problem_type(&r, StatusCode::SERVICE_UNAVAILABLE, "identity-unavailable");
        let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry_after), "{retry_after}");
    }
    let attempts = s.pool_path.connections() - before;
    // The first write tries (the SDK's 3 attempts); the gate then answers
    // the rest at once, while it is closed.
    assert!(
        (1..=6).contains(&attempts),
        "{attempts} connections to the pool for 20 writes in {:?}",
        started.elapsed()
    );
    s.pool_path.restore();
    let rows = s.app.all_rows().await;
    assert_eq!(rows.len(), 1, "nothing written, nothing lost: {rows:?}");
    assert_eq!(s.pool.usernames().await, vec![ADMIN, MEMBER]);
}

#[tokio::test]
async fn an_email_of_another_tenant_is_a_plain_409_and_that_identity_is_untouched() {
    let s = Stack::start().await;
    s.pool.add("admin@globex.test", "globex", true).await;
    let globex = s.sign_in("admin@globex.test").await;
    let acme = s.sign_in(ADMIN).await;
    s.invite(&globex, "shared@example.test").await;
    s.pool.set_password("shared@example.test").await;

    // acme asks for the same email (in another case): a 409 that says
    // nothing of globex, and globex's identity is as it was.
    let r = s
        .app
        .post(
            "/users",
            &acme,
            json!({"email": "Shared@Example.test", "name": "Mine"}),
        )
        .await;
    let body = assert_problem_type(&r, StatusCode::CONFLICT, "duplicate");
    assert_eq!(body["field"], "email");
    assert!(!r.text().contains("globex"), "{body}");
    let theirs = s.pool.identity("shared@example.test").await.expect("kept");
    assert_eq!(theirs.tenant(), Some("globex"));
    assert!(theirs.enabled);
    s.sign_in("shared@example.test").await;
    assert_eq!(emails(&s.app, &acme).await, Vec::<String>::new());

    // A row of acme with that email (written before the pool was kept)
    // is deleted without touching globex's identity.
    let id: uuid::Uuid = s
        .app
        .db
        .admin()
        .await
        .query_one(
            "INSERT INTO users (tenant_id, email, name) VALUES ('acme', 'shared@example.test', 'Old') RETURNING user_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let r = s.app.delete(&format!("/users/{id}"), &acme).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let theirs = s.pool.identity("shared@example.test").await.expect("kept");
    assert!(theirs.enabled && theirs.tenant() == Some("globex"));
    assert_eq!(emails(&s.app, &globex).await, vec!["shared@example.test"]);
}

#[tokio::test]
async fn a_member_is_refused_every_write_before_the_database_is_touched() {
    let app = TestApp::spawn().await;
    let id = app.create_user("acme", "ada@acme.test", "Ada").await;
    let member = app.member_token("acme");
    assert_eq!(app.get("/users", &member).await.status, StatusCode::OK);
    let before = app.app_activity().await;
    let path = format!("/users/{id}");
    for r in [
        app.post(
            "/users",
            &member,
            json!({"email": "b@acme.test", "name": "B"}),
        )
        .await,
        // Even a body the admin would be told is malformed: the role first.
        app.post("/users", &member, json!({"nope": 1})).await,
        app.patch(&path, &member, json!({"name": "X"})).await,
        app.delete(&path, &member).await,
    ] {
        assert_problem_type(&r, StatusCode::FORBIDDEN, "admin-required");
    }
    assert_eq!(app.app_activity().await, before, "no SQL ran");
    assert_eq!(app.all_rows().await.len(), 1);
}

#[tokio::test]
async fn a_groups_claim_that_is_not_an_array_of_strings_is_401() {
    let app = TestApp::spawn().await;
    for groups in [
        json!("tenant-admin"),
        json!([1]),
        json!(null),
        json!({"0": "tenant-admin"}),
    ] {
        let mut claims = member_claims_for("acme");
        claims["cognito:groups"] = groups.clone();
        let r = app.get("/users", &sign_hs256(&claims)).await;
        r.assert_problem(StatusCode::UNAUTHORIZED);
        assert!(
            r.text().contains("cognito:groups"),
            "{groups}: {}",
            r.text()
        );
    }
    // Other groups, or none, make a member; admin is exactly tenant-admin.
    for groups in [json!([]), json!(["readers"]), json!(["Tenant-Admin"])] {
        let mut claims = member_claims_for("acme");
        claims["cognito:groups"] = groups;
        let r = app
            .post(
                "/users",
                &sign_hs256(&claims),
                json!({"email": "c@acme.test", "name": "C"}),
            )
            .await;
        assert_problem_type(&r, StatusCode::FORBIDDEN, "admin-required");
    }
}

/// The library the control plane uses: onboarding's admin joins the group,
/// and offboarding removes every identity of one tenant (past ListUsers'
/// page of 60) and no other.
#[tokio::test]
async fn the_control_plane_creates_admins_and_removes_exactly_one_tenants_identities() {
    use tenant_users::identity::{Identities, IdentityError, Removal};
    use tenant_users::secret::config::AwsConfig;
    use tenant_users::tenant::TenantId;

    let moto = Moto::start().await;
    let pool = moto.user_pool().await;
    let sdk = tenant_users::secret::sdk_config(&AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.endpoint.clone()),
        access_key_id: Some(moto.function_key.0.clone()),
        secret_access_key: Some(moto.function_key.1.clone()),
        session_token: None,
    })
    .await;
    let identities = Identities::new(&sdk, pool.id.clone());
    let (acme, globex) = (
        TenantId::parse("acme").unwrap(),
        TenantId::parse("globex").unwrap(),
    );

    identities
        .create(&acme, "Boss@Acme.test", true)
        .await
        .unwrap();
    let boss = pool.identity("boss@acme.test").await.expect("created");
    assert_eq!(boss.groups, vec![tenant_users::tenant::ADMIN_GROUP]);
    assert_eq!(boss.tenant(), Some("acme"));
    assert!(matches!(
        identities.create(&globex, "boss@acme.TEST", false).await,
        Err(IdentityError::Exists)
    ));
    // Removing is for the identity's own tenant only, and idempotent.
    assert_eq!(
        identities.remove(&globex, "boss@acme.test").await.unwrap(),
        Removal::Absent
    );
    assert!(pool.identity("boss@acme.test").await.is_some());

    for i in 0..64 {
        identities
            .create(&acme, &format!("u{i}@acme.test"), false)
            .await
            .unwrap();
    }
    identities
        .create(&globex, "g@globex.test", false)
        .await
        .unwrap();
    assert_eq!(identities.remove_tenant(&acme).await.unwrap(), 65);
    assert_eq!(pool.usernames().await, vec!["g@globex.test"]);
    assert_eq!(identities.remove_tenant(&acme).await.unwrap(), 0);
    assert_eq!(
        identities.remove(&globex, "g@globex.test").await.unwrap(),
        Removal::Removed
    );
    assert_eq!(
        identities.remove(&globex, "g@globex.test").await.unwrap(),
        Removal::Absent
    );
}
