//! `make bench-fleet`: Lambda's way of scaling, simulated on one machine.
//!
//! Lambda scales out by execution environments, each with its one database
//! connection; RDS Proxy multiplexes them onto a few server connections at
//! transaction boundaries. Here 200 environments (each its own `App` and
//! `Database` with one connection, built exactly as at cold start) serve
//! many tenants through PgBouncer in transaction mode with a pool of 20,
//! against 8 environments connected straight to PostgreSQL. Each
//! environment serves requests back to back for a fixed time, for tenants
//! in turn; every list response is checked for other tenants' rows, and
//! after the run every tenant's rows are checked against what it created.
//! Three runs of each; figures with min/median/max. The section is written
//! into BENCHMARKS.md between its markers.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::pgbouncer::PgBouncer;
use common::{TestApp, TestDb};
use serde_json::json;

const FLEET: usize = 200;
const POOL: u32 = 20;
const DIRECT: usize = 8;
const TENANTS: usize = 50;
const RUN: Duration = Duration::from_secs(8);
const RUNS: usize = 3;
const BEGIN: &str = "<!-- fleet:begin -->";
const END: &str = "<!-- fleet:end -->";

#[derive(Default)]
struct Outcome {
    requests: usize,
    latencies: Vec<Duration>,
    errors: Vec<String>,
    leaks: Vec<String>,
    created: HashMap<String, usize>,
}

fn tenant(i: usize) -> String {
    format!("fleet-{i:03}")
}

/// One environment: requests back to back until `until`, a create for
/// every four lists, tenants in turn.
async fn serve(app: Arc<TestApp>, env: usize, until: Instant) -> Outcome {
    let mut out = Outcome::default();
    let mut step = 0;
    while Instant::now() < until {
        let t = tenant((env * 7 + step) % TENANTS);
        let token = app.token(&t);
        let started = Instant::now();
        if step % 5 == 4 {
            let email = format!("e{env}-{step}-{}@{t}.test", uuid::Uuid::new_v4().simple());
            let r = app
                .post("/users", &token, json!({"email": email, "name": "Fleet"}))
                .await;
            out.latencies.push(started.elapsed());
            match r.status {
                StatusCode::CREATED => *out.created.entry(t.clone()).or_default() += 1,
                s => out.errors.push(format!("POST {s}: {}", r.text())),
            }
        } else {
            let r = app.get("/users?limit=50", &token).await;
            out.latencies.push(started.elapsed());
            if r.status != StatusCode::OK {
                out.errors.push(format!("GET {}: {}", r.status, r.text()));
            } else {
                for user in r.json()["users"].as_array().into_iter().flatten() {
                    let email = user["email"].as_str().unwrap_or_default();
                    if !email.ends_with(&format!("@{t}.test")) {
                        out.leaks.push(format!("{t} saw {email}"));
                    }
                }
            }
        }
        out.requests += 1;
        step += 1;
    }
    out
}

struct RunFigures {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

async fn run(apps: &[Arc<TestApp>], created: &mut HashMap<String, usize>) -> RunFigures {
    let until = Instant::now() + RUN;
    let started = Instant::now();
    let tasks: Vec<_> = apps
        .iter()
        .enumerate()
        .map(|(i, app)| tokio::spawn(serve(app.clone(), i, until)))
        .collect();
    let (mut requests, mut latencies, mut errors) = (0, Vec::new(), Vec::new());
    for task in tasks {
        let out = task.await.expect("environment task");
        assert!(out.leaks.is_empty(), "ISOLATION BROKEN: {:?}", out.leaks);
        requests += out.requests;
        latencies.extend(out.latencies);
        errors.extend(out.errors);
        for (t, n) in out.created {
            *created.entry(t).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    if !errors.is_empty() {
        eprintln!("{} errors, first: {}", errors.len(), errors[0]);
    }
    RunFigures {
        throughput: requests as f64 / elapsed,
        p50_ms: at(0.50).as_secs_f64() * 1000.0,
        p99_ms: at(0.99).as_secs_f64() * 1000.0,
        errors: errors.len(),
    }
}

/// Builds `n` environments (cold starts), a few at a time.
async fn environments(db: &Arc<TestDb>, env: &[(String, String)], n: usize) -> Vec<Arc<TestApp>> {
    let mut apps = Vec::new();
    while apps.len() < n {
        let batch: Vec<_> = (0..(n - apps.len()).min(20))
            .map(|_| TestApp::from_env_shared(db.clone(), env.to_vec()))
            .collect();
        for app in futures_util::future::join_all(batch).await {
            apps.push(Arc::new(app));
        }
    }
    apps
}

/// min / median / max of the runs, with `digits` decimals.
fn spread(xs: &[f64], digits: usize) -> String {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{:.d$} / {:.d$} / {:.d$}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1],
        d = digits
    )
}

#[tokio::main]
async fn main() {
    let db = Arc::new(TestDb::create().await);
    // An unknown tenant gets 403: the fleet's tenants are registered, in
    // the tier without rate limits (this measures the pooler, not them).
    for i in 0..TENANTS {
        db.register(&tenant(i), "unlimited").await;
    }
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw")], POOL);
    let pooled = bouncer.app_env(&db.app_user, "pw", &db.name);
    let direct_env = vec![("DATABASE_URL".to_owned(), db.app_url())];

    let cold = Instant::now();
    let fleet = environments(&db, &pooled, FLEET).await;
    let fleet_cold = cold.elapsed();
    let direct = environments(&db, &direct_env, DIRECT).await;

    let mut created = HashMap::new();
    let mut figures: Vec<(&str, Vec<RunFigures>)> = vec![("fleet", vec![]), ("direct", vec![])];
    for _ in 0..RUNS {
        figures[0].1.push(run(&fleet, &mut created).await);
        figures[1].1.push(run(&direct, &mut created).await);
    }

    // After the runs, through one more environment: each tenant holds
    // exactly what was created for it.
    let check = TestApp::from_env_shared(db.clone(), pooled.clone()).await;
    let admin = db.admin().await;
    let mut mismatches = Vec::new();
    for i in 0..TENANTS {
        let t = tenant(i);
        let rows: i64 = admin
            .query_one("SELECT count(*) FROM users WHERE tenant_id = $1", &[&t])
            .await
            .unwrap()
            .get(0);
        let foreign: i64 = admin
            .query_one(
                "SELECT count(*) FROM users WHERE tenant_id = $1 AND email NOT LIKE '%@' || $1 || '.test'",
                &[&t],
            )
            .await
            .unwrap()
            .get(0);
        let expected = created.get(&t).copied().unwrap_or(0) as i64;
        if rows != expected || foreign != 0 {
            mismatches.push(format!(
                "{t}: {rows} rows, {expected} created, {foreign} foreign"
            ));
        }
        let r = check.get("/users?limit=1", &check.token(&t)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(text, "{BEGIN}\n## A fleet through the pooler\n");
    let _ = writeln!(
        text,
        "`make bench-fleet` (benches/fleet.rs), commit {commit}, {cores} cores, bench profile (optimised). \
         {FLEET} environments (each its own `App` with one connection, TLS verify-full, self-audit at connect) \
         through PgBouncer (transaction mode, pool {POOL}) vs {DIRECT} environments straight to PostgreSQL (no TLS); \
         {TENANTS} tenants in turn, 4 lists (GET /users?limit=50) to 1 create, back to back for {}s per run, \
         {RUNS} runs each, min / median / max. The {FLEET} cold starts took {:.1}s in all.\n",
        RUN.as_secs(),
        fleet_cold.as_secs_f64()
    );
    let _ = writeln!(
        text,
        "| configuration | requests/s | p50 (ms) | p99 (ms) | errors |"
    );
    let _ = writeln!(text, "| --- | --- | --- | --- | --- |");
    for (name, runs) in &figures {
        let label = if *name == "fleet" {
            format!("{FLEET} environments via PgBouncer (pool {POOL})")
        } else {
            format!("{DIRECT} direct connections")
        };
        let _ = writeln!(
            text,
            "| {label} | {} | {} | {} | {} |",
            spread(&runs.iter().map(|r| r.throughput).collect::<Vec<_>>(), 0),
            spread(&runs.iter().map(|r| r.p50_ms).collect::<Vec<_>>(), 1),
            spread(&runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>(), 1),
            runs.iter().map(|r| r.errors).sum::<usize>(),
        );
    }
    let fleet_tp: Vec<f64> = figures[0].1.iter().map(|r| r.throughput).collect();
    let direct_tp: Vec<f64> = figures[1].1.iter().map(|r| r.throughput).collect();
    let ratio: Vec<f64> = fleet_tp
        .iter()
        .zip(&direct_tp)
        .map(|(f, d)| f / d * 100.0)
        .collect();
    let _ = writeln!(
        text,
        "\nFleet throughput ÷ direct, per run (%): {}. Isolation: every list response of every run held only \
         its tenant's rows, and afterwards each of the {TENANTS} tenants held exactly the rows created for it \
         (checked as the owner, RLS bypassed). The same check, smaller, runs in `make test` \
         (`proxy::many_environments_through_a_small_pool_never_cross_tenants`).\n{END}",
        spread(&ratio, 0)
    );
    println!("{text}");

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let updated = match (current.find(BEGIN), current.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &current[..b],
            text.trim_end(),
            &current[e + END.len()..]
        ),
        _ => format!("{}\n{}\n", current.trim_end(), text.trim_end()),
    };
    std::fs::write(path, updated).expect("write BENCHMARKS.md");
}
