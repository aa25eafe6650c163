//! `openapi.yaml` and the router describe the same API: every operation in
//! one is in the other (a route added without a spec entry fails here), and
//! every documented operation answers as documented for its basic cases.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::TestApp;

fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_norway::from_str(&text).expect("openapi.yaml is YAML")
}

fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn the_spec_and_the_router_list_the_same_operations() {
    let spec = spec();
    assert_eq!(
        spec["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    let router: BTreeSet<(String, String)> = tenant_users::http::route_table()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path.to_owned()))
        .collect();
    assert_eq!(spec_operations(&spec), router);
}

#[test]
fn every_operation_documents_auth_and_problem_errors() {
    let spec = spec();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(spec["security"][0]["bearerAuth"], json!([]));
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "parameters")
        {
            let responses = op["responses"].as_object().unwrap();
            for status in ["401", "403", "429", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} documents {status}"
                );
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let name = response["$ref"]
                        .as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap();
                    let content = &spec["components"]["responses"][name]["content"];
                    assert!(
                        content.get("application/problem+json").is_some(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

/// Every write the router serves documents the admin role's 403, and a
/// member gets exactly that; reads document only the tenant's refusal.
#[tokio::test]
async fn every_write_documents_and_answers_the_admin_role() {
    let spec = spec();
    let app = TestApp::spawn().await;
    let id = app.create_user("acme", "ada@acme.test", "Ada").await;
    let member = app.member_token("acme");
    for (method, template) in tenant_users::http::route_table() {
        let op = &spec["paths"][template][method.as_str().to_lowercase()];
        let forbidden = op["responses"]["403"]["$ref"].as_str().unwrap();
        let name = forbidden.rsplit('/').next().unwrap();
        let described = spec["components"]["responses"][name]["description"]
            .as_str()
            .unwrap();
        let path = template.replace("{user_id}", &id);
        let body = (method != Method::DELETE && method != Method::GET)
            .then(|| json!({"email": "b@acme.test", "name": "B"}));
        let r = app
            .request(method.clone(), &path, Some(&member), body)
            .await;
        if method == Method::GET {
            assert!(!described.contains("admin-required"), "{method} {template}");
            assert_eq!(r.status, StatusCode::OK, "{method} {path}");
        } else {
            assert!(
                described.contains("/problems/admin-required"),
                "{method} {template} documents the admin role in its 403"
            );
            r.assert_problem(StatusCode::FORBIDDEN);
            assert_eq!(
                r.json()["type"],
                "/problems/admin-required",
                "{method} {path}"
            );
        }
    }
}

/// The basic cases of each operation give a documented status.
#[tokio::test]
async fn responses_use_documented_statuses() {
    let spec = spec();
    let app = TestApp::spawn().await;
    let token = app.token("acme");
    let id = app.create_user("acme", "ada@acme.test", "Ada").await;
    let documented = |method: &str, path: &str| -> BTreeSet<u16> {
        spec["paths"][path][method.to_lowercase()]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect()
    };
    let user = format!("/users/{id}");
    let cases: Vec<(Method, &str, String, Option<Value>)> = vec![
        (Method::GET, "/users", "/users?limit=1".into(), None),
        (Method::GET, "/users", "/users?limit=0".into(), None),
        (
            Method::POST,
            "/users",
            "/users".into(),
            Some(json!({"email": "b@acme.test", "name": "B"})),
        ),
        (
            Method::POST,
            "/users",
            "/users".into(),
            Some(json!({"email": "b@acme.test", "name": "B"})),
        ),
        (
            Method::POST,
            "/users",
            "/users".into(),
            Some(json!({"email": "nope"})),
        ),
        (Method::GET, "/users/{user_id}", user.clone(), None),
        (
            Method::GET,
            "/users/{user_id}",
            "/users/not-a-uuid".into(),
            None,
        ),
        (
            Method::PATCH,
            "/users/{user_id}",
            user.clone(),
            Some(json!({"name": "C"})),
        ),
        (Method::DELETE, "/users/{user_id}", user.clone(), None),
        (Method::DELETE, "/users/{user_id}", user.clone(), None),
    ];
    for (method, template, path, body) in cases {
        let r = app.request(method.clone(), &path, Some(&token), body).await;
        assert!(
            documented(method.as_str(), template).contains(&r.status.as_u16()),
            "{method} {path}: {} is not documented",
            r.status
        );
        let r = app.request(method.clone(), &path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

/// The (method, path) pairs `template.yaml` routes to the API function
/// through API Gateway (its `HttpApi` events).
fn template_routes() -> BTreeSet<(String, String)> {
    function_routes("TenantUsersFunction")
}

/// The (method, path) pairs `template.yaml` routes to `function`.
fn function_routes(function: &str) -> BTreeSet<(String, String)> {
    use serde_norway::Value as Yaml;
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml")).unwrap();
    let template: Yaml = serde_norway::from_str(&text).expect("template.yaml is YAML");
    let mut routes = BTreeSet::new();
    let resource = &template["Resources"][function];
    assert!(resource.is_mapping(), "template.yaml has no {function}");
    {
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            return routes;
        };
        for (_, event) in events {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let properties = &event["Properties"];
            let method = properties["Method"]
                .as_str()
                .expect("an HttpApi event's Method");
            let path = properties["Path"]
                .as_str()
                .expect("an HttpApi event's Path");
            routes.insert((method.to_uppercase(), path.to_owned()));
        }
    }
    routes
}

fn router_routes() -> BTreeSet<(String, String)> {
    tenant_users::http::route_table()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path.to_owned()))
        .collect()
}

/// Routes in one list and not the other, in words.
fn route_differences(
    template: &BTreeSet<(String, String)>,
    router: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut out: Vec<String> = router
        .difference(template)
        .map(|(m, p)| format!("{m} {p} is served by the router but API Gateway would answer 404: add an HttpApi event to template.yaml"))
        .collect();
    out.extend(template.difference(router).map(|(m, p)| {
        format!("{m} {p} is routed by template.yaml but the router serves no such operation")
    }));
    out
}

#[test]
fn the_template_routes_exactly_the_routers_operations() {
    // A route added to a resource module but not to template.yaml passes
    // every local test and is a 404 from API Gateway in AWS: not here.
    let differences = route_differences(&template_routes(), &router_routes());
    assert!(differences.is_empty(), "{differences:#?}");
}

#[test]
fn a_route_the_template_lacks_is_named() {
    let template = template_routes();
    let mut router = router_routes();
    router.insert(("GET".into(), "/projects".into()));
    assert_eq!(
        route_differences(&template, &router),
        [
            "GET /projects is served by the router but API Gateway would answer 404: add an HttpApi event to template.yaml"
        ]
    );
}

#[test]
fn the_template_routes_exactly_the_control_planes_operations() {
    let control: BTreeSet<(String, String)> = tenant_users_control::routes::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(function_routes("ControlFunction"), control);
    let spec: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/control-openapi.yaml"))
            .unwrap(),
    )
    .unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().expect("paths") {
        for (method, _) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if ["get", "post", "patch", "put", "delete"].contains(&method) {
                documented.insert((method.to_uppercase(), path.as_str().unwrap().to_owned()));
            }
        }
    }
    assert_eq!(
        documented, control,
        "control-openapi.yaml documents every route"
    );
}
