//! The one-round-trip guard: every route runs BEGIN, the tenant scope, its
//! statement and COMMIT pipelined, so a request costs the database one
//! round trip. Through a relay that adds D each way, each route's latency
//! grows by about 2·D; a change that goes back to one statement at a time
//! (four round trips) grows it by 8·D and fails here. The margin is wide
//! (passing needs under 1.6 round trips) because the machine is shared;
//! `make bench` reports the precise figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::json;

use crate::common::delay::delay_proxy;
use crate::common::{TestApp, TestDb};

/// One way; a round trip is twice this.
const DELAY: Duration = Duration::from_millis(40);
const SAMPLES: usize = 7;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// What one sample of a route sends: method, path and body, given a fresh
/// user id of the caller's tenant.
type Route = (
    &'static str,
    Method,
    fn(&str) -> (String, Option<serde_json::Value>),
);

const ROUTES: &[Route] = &[
    ("GET /users", Method::GET, |_| ("/users".into(), None)),
    ("GET /users/{id}", Method::GET, |id| {
        (format!("/users/{id}"), None)
    }),
    ("POST /users", Method::POST, |_| {
        let email = format!("{}@acme.test", uuid::Uuid::new_v4().simple());
        ("/users".into(), Some(json!({"email": email, "name": "R"})))
    }),
    ("PATCH /users/{id}", Method::PATCH, |id| {
        (format!("/users/{id}"), Some(json!({"name": "Renamed"})))
    }),
    ("DELETE /users/{id}", Method::DELETE, |id| {
        (format!("/users/{id}"), None)
    }),
];

async fn median_latency(app: &TestApp, seeder: &TestApp, route: &Route) -> Duration {
    let token = app.token("acme");
    let mut samples = Vec::new();
    for i in 0..SAMPLES {
        let id = seeder
            .create_user(
                "acme",
                &format!("rt{i}-{}@acme.test", uuid::Uuid::new_v4().simple()),
                "R",
            )
            .await;
        let (path, body) = (route.2)(&id);
        let started = Instant::now();
        let r = app
            .request(route.1.clone(), &path, Some(&token), body)
            .await;
        samples.push(started.elapsed());
        assert!(
            r.status.is_success(),
            "{}: {} {}",
            route.0,
            r.status,
            r.text()
        );
    }
    median(samples)
}

#[tokio::test]
async fn every_route_costs_one_database_round_trip() {
    measure(Vec::new()).await;
}

/// With the user pool kept (moto's), the writes also call the pool, but
/// the database part stays one round trip: the identity's calls come
/// before or after it, never between its statements.
#[tokio::test]
async fn every_route_costs_one_database_round_trip_with_the_user_pool_kept() {
    let moto = crate::common::moto::Moto::start().await;
    let pool = moto.user_pool().await;
    let env = vec![
        ("USER_POOL_ID".into(), pool.id.clone()),
        ("AWS_ENDPOINT_URL".into(), moto.endpoint.clone()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), moto.function_key.0.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), moto.function_key.1.clone()),
    ];
    measure(env).await;
    assert!(
        pool.usernames().await.len() >= SAMPLES,
        "the writes kept identities"
    );
}

/// Each route's median latency directly and through the delaying relay,
/// for apps configured with `env` besides their database.
async fn measure(env: Vec<(String, String)>) {
    let db = Arc::new(TestDb::create().await);
    let port = db.base.get_ports().first().copied().unwrap_or(5432);
    let relay = delay_proxy(port, DELAY).await;
    let direct_url = db.app_url();
    let delayed_url = direct_url.replace(&format!(":{port}/"), &format!(":{relay}/"));
    assert_ne!(direct_url, delayed_url);
    let with = |url: String| {
        let mut vars = env.clone();
        vars.push(("DATABASE_URL".into(), url));
        vars
    };
    let direct = TestApp::from_env_shared(db.clone(), with(direct_url)).await;
    let delayed = TestApp::from_env_shared(db.clone(), with(delayed_url)).await;

    let round_trip = DELAY * 2;
    let mut report = Vec::new();
    for route in ROUTES {
        let base = median_latency(&direct, &direct, route).await;
        let slow = median_latency(&delayed, &direct, route).await;
        let trips = slow.saturating_sub(base).as_secs_f64() / round_trip.as_secs_f64();
        report.push(format!(
            "{}: {trips:.2} round trips ({base:?} -> {slow:?})",
            route.0
        ));
        assert!(
            (0.5..1.6).contains(&trips),
            "{} costs {trips:.2} database round trips, not 1: {report:#?}",
            route.0
        );
    }
    eprintln!("{report:#?}");
}
