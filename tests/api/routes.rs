//! Each route's contract for a single tenant, and bad input at the edge.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;

use crate::common::TestApp;

#[tokio::test]
async fn create_then_get_returns_the_user() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let created = app
        .post(
            "/users",
            &token,
            json!({"email": "ada@acme.test", "name": "Ada"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let user = created.json();
    let id = user["user_id"].as_str().unwrap();
    assert_eq!(
        created.header("location"),
        Some(format!("/users/{id}").as_str())
    );
    assert_eq!(user["email"], "ada@acme.test");
    assert_eq!(user["name"], "Ada");
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(user.get("tenant_id").is_none());

    let fetched = app.get(&format!("/users/{id}"), &token).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json(), user);
}

#[tokio::test]
async fn list_pages_through_every_user_once_in_order() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            app.create_user("acme", &format!("u{i}@acme.test"), &format!("U{i}"))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut path = "/users?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let r = app.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let body = r.json();
        let users = body["users"].as_array().unwrap();
        assert!(users.len() <= 3);
        seen.extend(
            users
                .iter()
                .map(|u| u["user_id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/users?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "created order, each once");
    let all = app.get("/users", &token).await.json();
    assert_eq!(all["users"].as_array().unwrap().len(), 7);
    assert!(all["next_cursor"].is_null());
}

#[tokio::test]
async fn patch_updates_only_the_given_fields() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let id = app.create_user("acme", "ada@acme.test", "Ada").await;
    let r = app
        .patch(
            &format!("/users/{id}"),
            &token,
            json!({"name": "Ada Lovelace"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let user = r.json();
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["email"], "ada@acme.test");
    assert!(user["updated_at"].as_str() >= user["created_at"].as_str());
    let r = app
        .patch(
            &format!("/users/{id}"),
            &token,
            json!({"email": "ada@lovelace.test"}),
        )
        .await;
    assert_eq!(r.json()["email"], "ada@lovelace.test");
    assert_eq!(r.json()["name"], "Ada Lovelace");
}

#[tokio::test]
async fn delete_removes_the_user_and_a_second_delete_is_404() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let id = app.create_user("acme", "ada@acme.test", "Ada").await;
    let r = app.delete(&format!("/users/{id}"), &token).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    app.delete(&format!("/users/{id}"), &token)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    app.get(&format!("/users/{id}"), &token)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    assert!(app.all_rows().await.is_empty());
}

#[tokio::test]
async fn duplicate_email_in_the_same_tenant_is_409_whatever_the_case() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    app.create_user("acme", "ada@acme.test", "Ada").await;
    let r = app
        .post(
            "/users",
            &token,
            json!({"email": "ADA@acme.test", "name": "Other"}),
        )
        .await;
    let detail = r.assert_problem(StatusCode::CONFLICT);
    assert!(detail.contains("already exists"), "{detail}");
    // Renaming another user onto a taken address is a conflict too.
    let id = app.create_user("acme", "bob@acme.test", "Bob").await;
    app.patch(
        &format!("/users/{id}"),
        &token,
        json!({"email": "Ada@Acme.test"}),
    )
    .await
    .assert_problem(StatusCode::CONFLICT);
    assert_eq!(app.all_rows().await.len(), 2, "nothing half-written");
}

#[tokio::test]
async fn invalid_bodies_are_4xx_problems_and_write_nothing() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let cases = [
        (json!({"email": "not-an-email", "name": "A"}), "email"),
        (json!({"name": "A"}), "email is required"),
        (json!({"email": "a@acme.test"}), "name is required"),
        (
            json!({"email": "a@acme.test", "name": "A", "role": "admin"}),
            "unknown field",
        ),
        (
            json!({"email": "a@acme.test", "name": "A", "tenant_id": "globex"}),
            "tenant comes from your token",
        ),
        (json!({"email": 42, "name": "A"}), "must be a string"),
        (json!({"email": "a@acme.test", "name": ""}), "name"),
        (json!(["a@acme.test"]), "JSON object"),
    ];
    for (body, expected) in cases {
        let detail = app
            .post("/users", &token, body.clone())
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(detail.contains(expected), "{body}: {detail}");
    }
    assert!(app.all_rows().await.is_empty());
}

#[tokio::test]
async fn malformed_json_is_400_and_wrong_content_type_is_415() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    for raw in ["{", "", "{\"email\": }", "\u{0}", &"[".repeat(10_000)] {
        let request = Request::post("/users")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(raw.to_owned()))
            .unwrap();
        app.send(request)
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    let invalid_utf8 = Request::post("/users")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(vec![b'{', 0xff, 0xfe, b'}']))
        .unwrap();
    app.send(invalid_utf8)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    let form = Request::post("/users")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("email=a@b.co&name=A"))
        .unwrap();
    app.send(form)
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(app.all_rows().await.is_empty());
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let big = json!({"email": "a@acme.test", "name": "x".repeat(70 * 1024)});
    app.post("/users", &token, big)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    // Without a Content-Length the limit still holds while streaming.
    let stream = futures_body(vec![b'x'; 65 * 1024]);
    let request = Request::post("/users")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(stream)
        .unwrap();
    app.send(request)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.all_rows().await.is_empty());
}

/// A body sent as a stream of chunks, so no Content-Length announces its size.
fn futures_body(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = bytes
        .chunks(4096)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_as_problems() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    for path in ["/", "/nope", "/users/1/extra", "/Users"] {
        app.get(path, &token)
            .await
            .assert_problem(StatusCode::NOT_FOUND);
    }
    let r = app.request(Method::PUT, "/users", Some(&token), None).await;
    r.assert_problem(StatusCode::METHOD_NOT_ALLOWED);
    let r = app
        .request(
            Method::POST,
            "/users/00000000-0000-0000-0000-000000000000",
            Some(&token),
            None,
        )
        .await;
    r.assert_problem(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bad_ids_limits_and_cursors_are_400() {
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    for path in [
        "/users/not-a-uuid",
        "/users/%FF",
        "/users?limit=0",
        "/users?limit=101",
        "/users?limit=abc",
        "/users?limit=99999999999999999999999",
        "/users?cursor=garbage",
        "/users?cursor=MTIzOnh5eg",
        "/users?limt=5",
        "/users?limit=1&limit=2",
    ] {
        app.get(path, &token)
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
}
