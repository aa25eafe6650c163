//! Hostile input at the HTTP edge, property-tested: random methods, paths,
//! query strings, headers and bodies (invalid UTF-8, deep JSON, huge
//! numbers, wrong types). The answer is always a 2xx or a 4xx problem+json:
//! never a 5xx, never a panic.

use axum::body::Body;
use axum::http::{Method, Request, header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::common::TestApp;

const CASES: u32 = 1000;

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("users".to_owned()),
        Just("6f1c2a3e-8d4b-4c5a-9e7f-0a1b2c3d4e5f".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2e%2fetc".to_owned()),
        Just("'%20OR%201=1".to_owned()),
        "[a-zA-Z0-9._~!$&'()*+,;=:@%-]{0,16}",
    ];
    let random = proptest::collection::vec(segment, 0..4)
        .prop_map(|segments| format!("/{}", segments.join("/")));
    // Half the cases aim at the real routes, so bodies and queries reach
    // the handlers rather than the 404 fallback.
    prop_oneof![
        Just("/users".to_owned()),
        Just("/users/6f1c2a3e-8d4b-4c5a-9e7f-0a1b2c3d4e5f".to_owned()),
        random,
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("?limit=1".to_owned()),
        Just("?limit=-1&cursor=".to_owned()),
        Just("?limit=99999999999999999999999999".to_owned()),
        Just("?cursor=%FF".to_owned()),
        Just("?limit=1&limit=2".to_owned()),
        "\\?[a-zA-Z0-9=&%+._-]{0,40}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..300),
        Just(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
        Just(br#"{"email": 1e999999, "name": 18446744073709551616}"#.to_vec()),
        Just(br#"{"email": ["a@b.co"], "name": {"x": 1}}"#.to_vec()),
        Just(br#"{"email": "a@b.co", "name": "\u0000"}"#.to_vec()),
        Just(br#"{"email": "a@b.co", "name": "A", "name": "B"}"#.to_vec()),
        Just(br#"{"email": "a@b.co", "name": "A", "tenant_id": "other"}"#.to_vec()),
        Just(br#"{"email": "x@fuzz.test", "name": "Fuzz"}"#.to_vec()),
        Just(b"\xff\xfe{\"email\"}".to_vec()),
        "\\PC{0,100}".prop_map(String::into_bytes),
    ]
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Valid,
    Raw(String),
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        1 => Just(Auth::None),
        4 => Just(Auth::Valid),
        1 => "[ -~]{0,60}".prop_map(Auth::Raw),
        1 => "[A-Za-z0-9._-]{0,80}".prop_map(|t| Auth::Raw(format!("Bearer {t}"))),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("application/problem+json".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
    ]
}

#[test]
fn hostile_requests_get_a_4xx_problem_never_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(TestApp::spawn());
    let method = prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::PUT),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
    ];
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    runner
        .run(
            &(method, path(), query(), auth(), content_type(), body()),
            |(method, path, query, auth, content_type, body)| {
                let Ok(uri) = format!("{path}{query}").parse::<axum::http::Uri>() else {
                    return Ok(()); // not a request any client could send
                };
                let mut request = Request::builder().method(method.clone()).uri(uri);
                match &auth {
                    Auth::None => {}
                    Auth::Valid => {
                        request = request.header(
                            header::AUTHORIZATION,
                            format!("Bearer {}", app.token("fuzz")),
                        )
                    }
                    Auth::Raw(value) => {
                        request = request.header(header::AUTHORIZATION, value.as_str())
                    }
                }
                if let Some(ct) = &content_type {
                    request = request.header(header::CONTENT_TYPE, ct.as_str());
                }
                let Ok(request) = request.body(Body::from(body.clone())) else {
                    return Ok(()); // header value no client could send
                };
                let response = rt.block_on(app.send(request));
                let status = response.status.as_u16();
                *seen.lock().unwrap().entry(status).or_insert(0) += 1;
                let what = format!(
                    "{method} {path}{query} auth={auth:?} ct={content_type:?}: {status} {}",
                    response.text()
                );
                if status >= 500 {
                    return Err(TestCaseError::fail(what));
                }
                if status >= 400
                    && method != Method::HEAD
                    && response.header("content-type") != Some("application/problem+json")
                {
                    return Err(TestCaseError::fail(format!("not problem+json: {what}")));
                }
                Ok(())
            },
        )
        .unwrap();
    // The cases reached the handlers, not only the fallback.
    let seen = seen.into_inner().unwrap();
    println!("hostile input: statuses {seen:?}");
    for status in [200, 400, 401, 404, 405] {
        assert!(
            seen.get(&status).copied().unwrap_or(0) > 0,
            "no {status} among {seen:?}"
        );
    }
    // The fuzzer's writes stayed in its own tenant.
    let rows = rt.block_on(app.all_rows());
    assert!(
        rows.iter().all(|(tenant, _, _)| tenant == "fuzz"),
        "{rows:?}"
    );
}
