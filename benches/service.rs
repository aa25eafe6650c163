//! `make bench`: the service against its floor, in one run, on this machine.
//!
//! Prints a markdown report and writes it to BENCHMARKS.md:
//! round trips per request (a delay proxy between service and PostgreSQL),
//! the pgbench floor (same transaction, unnamed statements, plain and
//! pipelined), the tenant registry's cost at the database (pgbench with the
//! pre-registry scope against the registry's), the service over HTTP (wrk) and in-process through the
//! Lambda adapter, cold start with Secrets Manager (moto) and TLS through
//! PgBouncer, peak RSS, the bootstrap's size, and GET /users at 10^5 and
//! 10^7 rows. Figures are medians; the machine is shared and noisy, so
//! ratios against the floor measured in the same run matter more than
//! absolute values.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::delay::delay_proxy;
use common::moto::{Moto, free_port};
use common::pgbouncer::PgBouncer;
use common::{SECRET, TestApp, TestDb};
use lambda_http::lambda_runtime::{Context, LambdaEvent, Service};
use lambda_http::request::LambdaRequest;
use serde_json::{Value, json};

/// Tenants "1000".."1099" (numeric, so pgbench can pick one with \set).
const TENANTS: u32 = 100;
const USERS_PER_TENANT: u32 = 60;
const DELAY: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Report {
    text: String,
}

impl Report {
    fn section(&mut self, title: &str) {
        let _ = writeln!(self.text, "\n## {title}\n");
        println!("\n## {title}\n");
    }

    fn line(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "{}", line.as_ref());
        println!("{}", line.as_ref());
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if xs.is_empty() {
        f64::NAN
    } else {
        xs[xs.len() / 2]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tenant(i: u32) -> String {
    (1000 + i % TENANTS).to_string()
}

/// Seeds users of tenants "1000".., each registered (an unknown tenant
/// gets 403) in the `unlimited` tier, as the tests' tenants are: the
/// benchmarks measure throughput, not the rate limits.
async fn seed(db: &TestDb, tenants: u32, per_tenant: u32, first: u32) {
    db.admin()
        .await
        .batch_execute(&format!(
            "INSERT INTO tenants (tenant_id, tier)
             SELECT (1000 + t)::text, 'unlimited' FROM generate_series(0, {0}) t
             ON CONFLICT (tenant_id) DO NOTHING;
             INSERT INTO users (tenant_id, email, name)
             SELECT (1000 + t)::text, 'u' || u || '@t' || t || '.test', 'User ' || u
               FROM generate_series(0, {0}) t, generate_series({first}, {1}) u;
             ANALYZE users;",
            tenants - 1,
            first + per_tenant - 1
        ))
        .await
        .expect("seed");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(run());
    let sh = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let mut out = format!(
        "# Benchmarks\n\nProduced by `make bench` (benches/service.rs, benches/tokens.rs) on commit {} \
         with `nproc` = {} (a shared machine). Medians unless said otherwise; ratios compare \
         figures measured in the same run. The Lambda-shaped figures further down come from \
         `make bench-lambda`.\n",
        sh("git", &["rev-parse", "--short=12", "HEAD"]),
        sh("nproc", &[]),
    );
    // Keep the sections this run does not own: the goals summary (made by
    // scripts/bench-summary.py from the sections, which `make bench` runs
    // after this) first, then `make bench-lambda`'s and `make bench-fleet`'s,
    // and the notes written by hand.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let kept = |name: &str, opening: &str| {
        let (start, end) = (
            format!("<!-- {name}:{opening} -->"),
            format!("<!-- {name}:end -->"),
        );
        match (old.find(&start), old.find(&end)) {
            (Some(a), Some(b)) if a < b => format!("\n{}\n", &old[a..b + end.len()]),
            _ => String::new(),
        }
    };
    out.push_str(&kept("summary", "start"));
    out.push_str(&report.text);
    out.push_str(&kept("bench-lambda", "start"));
    out.push_str(&kept("fleet", "begin"));
    out.push_str(&kept("notes", "start"));
    std::fs::write(path, out).unwrap();
    println!("\nwritten to BENCHMARKS.md");
}

async fn run() -> Report {
    let mut report = Report::default();
    let db = Arc::new(TestDb::create().await);
    seed(&db, TENANTS, USERS_PER_TENANT, 1).await;

    round_trips(&mut report, &db).await;
    let floor = pgbench_floor(&mut report, &db);
    registry_at_the_database(&mut report, &db).await;
    let service = service_over_http(&mut report, &db).await;
    let in_process = in_process_handler(&mut report, &db).await;
    ratios(&mut report, &floor, &service, &in_process);
    token_costs(&mut report);
    cold_start(&mut report).await;
    bootstrap_size(&mut report);
    scale(&mut report).await;
    report
}

// --- round trips -------------------------------------------------------

fn db_port(db: &TestDb) -> u16 {
    db.base.get_ports().first().copied().unwrap_or(5432)
}

async fn app_through(db: &Arc<TestDb>, port: u16, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![(
        "DATABASE_URL".to_owned(),
        format!(
            "postgres://{}:{}@127.0.0.1:{port}/{}",
            db.app_user, db.app_password, db.name
        ),
    )];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TestApp::from_env_shared(db.clone(), env).await
}

async fn round_trips(report: &mut Report, db: &Arc<TestDb>) {
    report.section("Database round trips per request");
    report.line(format!(
        "A relay between the service and PostgreSQL delays each direction by D = {} ms. Round trips = (latency at D − latency at 0) / (2·D), median of 25 requests each. Goal: at most 1.2 for every route.\n",
        DELAY.as_millis()
    ));
    report.line("| route | p50 at D=0 (ms) | p50 at D (ms) | round trips |");
    report.line("| --- | --- | --- | --- |");
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    for delay in [Duration::ZERO, DELAY] {
        let proxy = delay_proxy(db_port(db), delay).await;
        let app = app_through(db, proxy, &[]).await;
        let t = "1042";
        let token = app.token(t);
        // Warm the connection; make users to read, rename and delete.
        app.get("/users", &token).await;
        let mut ids = Vec::new();
        for i in 0..25 {
            ids.push(
                app.create_user(t, &format!("rt{}-{i}@{}.test", delay.as_millis(), t), "R")
                    .await,
            );
        }
        let mut timed: Vec<(String, Vec<f64>)> = Vec::new();
        let mut measure = |route: &str, xs: Vec<f64>| timed.push((route.to_owned(), xs));
        let mut xs = Vec::new();
        for _ in 0..25 {
            let started = Instant::now();
            assert_eq!(
                app.get("/users?limit=50", &token).await.status,
                StatusCode::OK
            );
            xs.push(ms(started.elapsed()));
        }
        measure("GET /users", xs);
        let mut xs = Vec::new();
        for id in &ids {
            let started = Instant::now();
            assert_eq!(
                app.get(&format!("/users/{id}"), &token).await.status,
                StatusCode::OK
            );
            xs.push(ms(started.elapsed()));
        }
        measure("GET /users/{id}", xs);
        let mut xs = Vec::new();
        for i in 0..25 {
            let started = Instant::now();
            let r = app
                .post(
                    "/users",
                    &token,
                    json!({"email": format!("new{}-{i}@x.test", delay.as_millis()), "name": "N"}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED);
            xs.push(ms(started.elapsed()));
        }
        measure("POST /users", xs);
        let mut xs = Vec::new();
        for id in &ids {
            let started = Instant::now();
            assert_eq!(
                app.patch(&format!("/users/{id}"), &token, json!({"name": "S"}))
                    .await
                    .status,
                StatusCode::OK
            );
            xs.push(ms(started.elapsed()));
        }
        measure("PATCH /users/{id}", xs);
        let mut xs = Vec::new();
        for id in &ids {
            let started = Instant::now();
            assert_eq!(
                app.delete(&format!("/users/{id}"), &token).await.status,
                StatusCode::NO_CONTENT
            );
            xs.push(ms(started.elapsed()));
        }
        measure("DELETE /users/{id}", xs);
        for (route, xs) in timed {
            match results.iter_mut().find(|(r, _)| *r == route) {
                Some((_, medians)) => medians.push(median(xs)),
                None => results.push((route, vec![median(xs)])),
            }
        }
    }
    for (route, medians) in results {
        let trips = (medians[1] - medians[0]) / (2.0 * ms(DELAY));
        report.line(format!(
            "| {route} | {:.2} | {:.2} | {trips:.2} |",
            medians[0], medians[1]
        ));
    }
}

// --- the floor: pgbench -----------------------------------------------

/// Medians over runs; `per_sec_runs` keeps every run for the spread.
struct Throughput {
    /// Mean latency (pgbench without `-l` reports only the mean).
    mean_ms: f64,
    per_sec: f64,
    per_sec_runs: Vec<f64>,
}

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// median (min–max)
fn spread(xs: &[f64], digits: usize) -> String {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => {
            format!("{:.d$} ({lo:.d$}–{hi:.d$})", median(v.clone()), d = digits)
        }
        _ => "n/a".into(),
    }
}

/// The service's list statement with literals for pgbench: pgbench takes
/// every `:word` for a variable, even inside string literals, so the
/// format's colons are spelled chr(58) (folded to the same constant).
fn list_sql(tenant: &str) -> String {
    tenant_users::users::LIST_FIRST
        .replace("HH24:MI:SS", "HH24' || chr(58) || 'MI' || chr(58) || 'SS")
        .replace("$1", tenant)
        .replace("$2", "51")
}

fn pgbench_floor(report: &mut Report, db: &TestDb) -> Vec<(String, u32, Throughput)> {
    report.section("Floor: pgbench, the same transaction");
    report.line(
        "`pgbench -M extended` (unnamed statements, as behind a proxy) as the application role, a random tenant per transaction: BEGIN; `app_enter_tenant(tenant, 5000, 0)`, the tenant scope as the service enters it on a warm request (registry read, tier settings; no tokens asked for while the environment's lease lasts); the GET /users query (LIMIT 51); COMMIT. The tenants are registered in the `unlimited` tier, as the service's are here. `sslmode=disable` like the service's plain DATABASE_URL; no `-l` (per-transaction logging would slow the floor); 8 s per run; transactions/s as median (min–max) of the runs.\n",
    );
    report.line("| form | clients | mean latency (ms) | transactions/s |");
    report.line("| --- | --- | --- | --- |");
    let dir = std::env::temp_dir().join(format!("tu-pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = transaction("SELECT public.app_enter_tenant(:t, 5000, 0)");
    std::fs::write(dir.join("plain.sql"), format!("{}{body}", pick_tenant())).unwrap();
    std::fs::write(dir.join("pipeline.sql"), pipelined(&body)).unwrap();
    let url = pgbench_url(db);
    let mut out = Vec::new();
    for form in ["pipeline", "plain"] {
        for clients in [1u32, 8] {
            let (mut tps_runs, mut lat_runs) = (Vec::new(), Vec::new());
            for _ in 0..runs() {
                let (tps, latency) = pgbench(&dir, &format!("{form}.sql"), clients, &url);
                tps_runs.push(tps);
                lat_runs.push(latency);
            }
            let t = Throughput {
                mean_ms: median(lat_runs),
                per_sec: median(tps_runs.clone()),
                per_sec_runs: tps_runs,
            };
            report.line(format!(
                "| {form} | {clients} | {:.3} | {} |",
                t.mean_ms,
                spread(&t.per_sec_runs, 0)
            ));
            out.push((form.to_owned(), clients, t));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The floor's transaction with `scope` as its tenant scope.
fn transaction(scope: &str) -> String {
    format!("BEGIN;\n{scope};\n{};\nCOMMIT;\n", list_sql(":t"))
}

fn pick_tenant() -> String {
    format!("\\set t random(1000, {})\n", 1000 + TENANTS - 1)
}

fn pipelined(body: &str) -> String {
    format!("{}\\startpipeline\n{body}\\endpipeline\n", pick_tenant())
}

/// The service connects without TLS (a plain DATABASE_URL): so does the
/// floor (libpq would otherwise negotiate TLS by default).
fn pgbench_url(db: &TestDb) -> String {
    format!("{}?sslmode=disable", db.app_url())
}

/// One 8 s pgbench run of `script` (in `dir`): transactions/s and the mean
/// latency (ms).
fn pgbench(dir: &std::path::Path, script: &str, clients: u32, url: &str) -> (f64, f64) {
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "extended",
            "-T",
            "8",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .arg("-f")
        .arg(dir.join(script))
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("pgbench (apt-get install postgresql)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str, nth: usize| -> f64 {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(nth))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (field("tps =", 2), field("latency average =", 3))
}

/// The scope as it was before the registry (migrations/V2's
/// `app_set_tenant`: the tenant and the statement timeout set
/// transaction-locally, nothing else) under a name of the benchmark's own,
/// in the benchmark's database only: the registry's cost is measured
/// without a switch in the service.
const PRE_REGISTRY_SCOPE: &str = "
CREATE FUNCTION public.bench_pre_registry_scope(tenant text, timeout_ms integer)
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    IF tenant IS NULL OR tenant !~ '^[A-Za-z0-9._-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid tenant id' USING ERRCODE = '22023';
    END IF;
    IF timeout_ms IS NULL OR timeout_ms < 0 THEN
        RAISE EXCEPTION 'invalid statement timeout' USING ERRCODE = '22023';
    END IF;
    PERFORM pg_catalog.set_config('app.current_tenant', tenant, true);
    PERFORM pg_catalog.set_config('statement_timeout', timeout_ms::text, true);
END
$$;
REVOKE ALL ON FUNCTION public.bench_pre_registry_scope(text, integer) FROM PUBLIC;
";

/// The registry's cost at the database: the pipelined floor at 8 clients
/// (the server saturated: transactions/s is CPU per transaction) with the
/// pre-registry scope, with the registry's scope for `unlimited` tenants,
/// and with the tenants moved to a tier with limits (the concurrency cap's
/// advisory lock taken too). The three in turn within each run, starting
/// with a different one each run; ratios pair the runs.
async fn registry_at_the_database(report: &mut Report, db: &TestDb) {
    report.section("The tenant registry at the database (pgbench)");
    let admin = db.admin().await;
    admin
        .batch_execute(&format!(
            "{PRE_REGISTRY_SCOPE}
             GRANT EXECUTE ON FUNCTION public.bench_pre_registry_scope(text, integer) TO {};",
            db.app_user
        ))
        .await
        .expect("the bench-only pre-registry scope");
    let dir = std::env::temp_dir().join(format!("tu-pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("off.sql"),
        pipelined(&transaction(
            "SELECT public.bench_pre_registry_scope(:t, 5000)",
        )),
    )
    .unwrap();
    std::fs::write(
        dir.join("on.sql"),
        pipelined(&transaction("SELECT public.app_enter_tenant(:t, 5000, 0)")),
    )
    .unwrap();
    let url = pgbench_url(db);
    // (label, script, tier of the tenants)
    let variants = [
        (
            "pre-registry scope (migrations/V2's body)",
            "off.sql",
            "unlimited",
        ),
        (
            "`app_enter_tenant(t, 5000, 0)`, `unlimited` tier",
            "on.sql",
            "unlimited",
        ),
        (
            "`app_enter_tenant(t, 5000, 0)`, `premium` tier (+ a concurrency slot)",
            "on.sql",
            "premium",
        ),
    ];
    let mut tps: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for run in 0..runs() {
        for k in 0..variants.len() {
            let v = (run + k) % variants.len();
            let (_, script, t) = variants[v];
            move_tenants(&admin, t).await;
            tps[v].push(pgbench(&dir, script, 8, &url).0);
        }
    }
    move_tenants(&admin, "unlimited").await;
    let _ = std::fs::remove_dir_all(&dir);
    report.line(format!(
        "The pipelined floor above, 8 clients, with three tenant scopes: the scope as it was before the registry (a bench-only function with migrations/V2's body, created in this benchmark's database only: the service has no such switch), and `app_enter_tenant(t, 5000, 0)` as the service's warm request sends it, for the tenants in the `unlimited` tier (registry row read under RLS, tier settings) and moved to the `premium` tier (the same, plus one of the tier's concurrency slots: an advisory transaction lock). With pgbench and PostgreSQL saturating the {} cores, transactions/s follows the CPU per transaction. The three in turn in each of {} runs (8 s each), each run starting with another; ratios pair the runs; median (min–max).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        runs()
    ));
    report.line("| tenant scope | transactions/s | ÷ pre-registry |");
    report.line("| --- | --- | --- |");
    for (v, (label, _, _)) in variants.iter().enumerate() {
        let ratios: Vec<f64> = tps[v].iter().zip(&tps[0]).map(|(a, b)| a / b).collect();
        report.line(format!(
            "| {label} | {} | {} |",
            spread(&tps[v], 0),
            spread(&ratios, 3)
        ));
    }
}

/// Moves the benchmark's tenants ("1000".."1099") to `tier`.
async fn move_tenants(admin: &tokio_postgres::Client, tier: &str) {
    admin
        .execute(
            "UPDATE tenants SET tier = $1 WHERE tenant_id BETWEEN '1000' AND '1099'",
            &[&tier],
        )
        .await
        .expect("move the benchmark's tenants");
}

// --- the service ---------------------------------------------------------

fn tokens() -> Vec<String> {
    (0..TENANTS)
        .map(|i| common::sign_hs256(&common::claims_for(&tenant(i))))
        .collect()
}

/// Peak resident set of a process, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn service_over_http(report: &mut Report, db: &TestDb) -> Vec<(u32, Throughput)> {
    report.section("Service over HTTP (local server, wrk)");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tu-wrk-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let logs = std::fs::File::create(dir.join("service.log")).unwrap();
    let mut server = Command::new(common::workspace_bin("tenant-users"))
        .arg("serve")
        .env("DATABASE_URL", db.app_url())
        .env("JWT_HS256_SECRET", SECRET)
        .env("PORT", port.to_string())
        .env("DB_POOL_SIZE", "8")
        // As in Lambda: a JSON log line and an EMF record per request, to
        // stdout (a file here, a pipe there).
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("METRICS", "emf")
        .stdout(logs.try_clone().unwrap())
        .stderr(logs)
        .spawn()
        .unwrap();
    common::moto::wait_for_port(port, Duration::from_secs(20));
    let lua = format!(
        "local tokens = {{ {} }}\nrequest = function()\n  return wrk.format(\"GET\", \"/users?limit=50\", {{ [\"Authorization\"] = \"Bearer \" .. tokens[math.random(#tokens)] }})\nend\n",
        tokens()
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(dir.join("list.lua"), lua).unwrap();
    report.line(
        "Same transaction (GET /users?limit=50, random tenant), the release build, `DB_POOL_SIZE=8` (one connection per caller), JSON logs and EMF on (`AWS_LAMBDA_LOG_FORMAT=JSON`, `METRICS=emf`, INFO) written to a file, 8 s per run; requests/s as median (min–max) of the runs.\n",
    );
    report.line("| callers | mean latency (ms) | requests/s |");
    report.line("| --- | --- | --- |");
    let mut out = Vec::new();
    for callers in [1u32, 8] {
        let (mut rps_runs, mut lat_runs) = (Vec::new(), Vec::new());
        for _ in 0..runs() {
            let output = Command::new("wrk")
                .args([
                    "-t",
                    &callers.min(2).to_string(),
                    "-c",
                    &callers.to_string(),
                    "-d",
                    "8s",
                    "--latency",
                    "-s",
                ])
                .arg(dir.join("list.lua"))
                .arg(format!("http://127.0.0.1:{port}"))
                .output()
                .expect("wrk (apt-get install wrk)");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let mean = text
                .lines()
                .find(|l| l.trim_start().starts_with("Latency"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(wrk_ms)
                .unwrap_or(f64::NAN);
            let rps = text
                .lines()
                .find(|l| l.starts_with("Requests/sec:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            assert!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
            rps_runs.push(rps);
            lat_runs.push(mean);
        }
        let t = Throughput {
            mean_ms: median(lat_runs),
            per_sec: median(rps_runs.clone()),
            per_sec_runs: rps_runs,
        };
        report.line(format!(
            "| {callers} | {:.3} | {} |",
            t.mean_ms,
            spread(&t.per_sec_runs, 0)
        ));
        out.push((callers, t));
    }
    let rss = peak_rss_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    report.section("Memory");
    report.line(format!(
        "Peak RSS of the local server after the runs above (VmHWM): {} (goal: under 32 MiB).",
        rss.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "unknown".into())
    ));
    out
}

fn wrk_ms(value: &str) -> f64 {
    let (number, factor) = if let Some(v) = value.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (value, 1.0)
    };
    number
        .parse::<f64>()
        .map(|n| n * factor)
        .unwrap_or(f64::NAN)
}

async fn in_process_handler(report: &mut Report, db: &Arc<TestDb>) -> Vec<(u32, Throughput)> {
    report.section("Service in-process, through the Lambda adapter");
    report.line("API Gateway v2 events (events/list-users.json with a random tenant's token) into lambda_http's adapter and the router; 2000 requests per run.\n");
    report.line("| callers | mean latency (ms) | requests/s |");
    report.line("| --- | --- | --- |");
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/events/list-users.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let tokens = Arc::new(tokens());
    let event = move |i: usize, tokens: &[String]| -> LambdaEvent<LambdaRequest> {
        let mut e = template.clone();
        e["headers"]["authorization"] = json!(format!("Bearer {}", tokens[i % tokens.len()]));
        e["rawQueryString"] = json!("limit=50");
        LambdaEvent::new(serde_json::from_value(e).unwrap(), Context::default())
    };
    let event = Arc::new(event);
    let mut out = Vec::new();
    for callers in [1usize, 8] {
        let app = app_through(db, db_port(db), &[("DB_POOL_SIZE", &callers.to_string())]).await;
        let router = app.router.clone();
        // Warm every connection.
        for i in 0..callers * 2 {
            let mut adapter = lambda_http::Adapter::from(router.clone());
            adapter.call(event(i, &tokens)).await.unwrap();
        }
        let per_caller = 2000 / callers;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..callers {
            let (router, event, tokens) = (router.clone(), event.clone(), tokens.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                for i in 0..per_caller {
                    let e = event(c * per_caller + i, &tokens);
                    let t = Instant::now();
                    let call = lambda_http::Adapter::from(router.clone()).call(e);
                    let response = call.await.unwrap();
                    latencies.push(ms(t.elapsed()));
                    assert_eq!(serde_json::to_value(&response).unwrap()["statusCode"], 200);
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
        let per_sec = (per_caller * callers) as f64 / elapsed;
        let t = Throughput {
            mean_ms: mean,
            per_sec,
            per_sec_runs: vec![per_sec],
        };
        report.line(format!(
            "| {callers} | {:.3} | {:.0} |",
            t.mean_ms, t.per_sec
        ));
        out.push((callers as u32, t));
    }
    out
}

fn ratios(
    report: &mut Report,
    floor: &[(String, u32, Throughput)],
    http: &[(u32, Throughput)],
    in_process: &[(u32, Throughput)],
) {
    report.section("Ratios against the floor");
    let pick = |form: &str, c: u32| {
        floor
            .iter()
            .find(|(f, n, _)| f == form && *n == c)
            .map(|(_, _, t)| t)
    };
    fn get(xs: &[(u32, Throughput)], c: u32) -> Option<&Throughput> {
        xs.iter().find(|(n, _)| *n == c).map(|(_, t)| t)
    }
    let (Some(pipe1), Some(pipe8), Some(plain8)) =
        (pick("pipeline", 1), pick("pipeline", 8), pick("plain", 8))
    else {
        return;
    };
    report.line("| comparison | ratio | goal |");
    report.line("| --- | --- | --- |");
    if let Some(t) = get(in_process, 1) {
        report.line(format!(
            "| in-process mean latency, 1 caller / pipelined pgbench, 1 client | {:.2} | ≤ 1.25 |",
            t.mean_ms / pipe1.mean_ms
        ));
    }
    if let Some(t) = get(http, 1) {
        report.line(format!(
            "| HTTP mean latency, 1 caller / pipelined pgbench, 1 client | {:.2} | (informative) |",
            t.mean_ms / pipe1.mean_ms
        ));
    }
    if let Some(t) = get(http, 8) {
        // Paired by run: the service's run i against the floor's run i.
        let ratios: Vec<f64> = t
            .per_sec_runs
            .iter()
            .zip(&pipe8.per_sec_runs)
            .map(|(s, f)| s / f)
            .collect();
        report.line(format!(
            "| HTTP throughput, 8 callers / pipelined pgbench, 8 clients (median (min–max) of runs) | {} | ≥ 0.8: {} |",
            spread(&ratios, 2),
            if median(ratios.clone()) >= 0.8 { "met" } else { "**missed**" }
        ));
        report.line(format!(
            "| HTTP throughput, 8 callers / plain pgbench, 8 clients | {:.2} | (informative) |",
            t.per_sec / plain8.per_sec
        ));
    }
    if let Some(t) = get(in_process, 8) {
        report.line(format!(
            "| in-process throughput, 8 callers / pipelined pgbench, 8 clients | {:.2} | ≥ 0.7 |",
            t.per_sec / pipe8.per_sec
        ));
    }
}

/// Criterion's medians from `cargo bench --bench tokens` (run first).
fn token_costs(report: &mut Report) {
    report.section("Token verification and non-database work (Criterion)");
    report.line("| benchmark | median (µs) | goal |");
    report.line("| --- | --- | --- |");
    for (name, goal) in [
        ("rs256_first_sight", "≤ 50"),
        ("verify_rs256_cached", ""),
        ("verify_hs256", ""),
        ("verify_es256_cached", ""),
        ("handler_without_database", ""),
    ] {
        let path = format!(
            "{}/target/criterion/{name}/new/estimates.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let median_us = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["median"]["point_estimate"].as_f64())
            .map(|ns| format!("{:.1}", ns / 1000.0))
            .unwrap_or_else(|| "not run".into());
        report.line(format!("| {name} | {median_us} | {goal} |"));
    }
}

// --- cold start ------------------------------------------------------------

async fn cold_start(report: &mut Report) {
    report.section("Cold start");
    let db = TestDb::create().await;
    db.register("1000", "unlimited").await;
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw-cold")], 2);
    let moto = Moto::start().await;
    let secret = json!({
        "engine": "postgres", "host": "localhost", "port": bouncer.port,
        "username": db.app_user, "password": "pw-cold", "dbname": db.name,
    })
    .to_string();
    let arn = moto.create_secret("bench/db", &secret).await;
    let mut env = moto.function_env(&arn);
    env.push((
        "DB_CA_FILE".into(),
        bouncer.certs.ca_file().display().to_string(),
    ));
    env.push(("JWT_HS256_SECRET".into(), SECRET.into()));
    env.push(("METRICS".into(), "off".into()));
    let token = common::sign_hs256(&common::claims_for("1000"));
    tenant_users::token::install_tls_provider();
    let client = reqwest::Client::new();

    let mut starts = Vec::new();
    for _ in 0..7 {
        let port = free_port();
        let started = Instant::now();
        let mut child = Command::new(common::workspace_bin("tenant-users"))
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/users");
        loop {
            if let Ok(r) = client.get(&url).bearer_auth(&token).send().await
                && r.status() == reqwest::StatusCode::OK
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no 200 within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        starts.push(ms(started.elapsed()));
        let _ = child.kill();
        let _ = child.wait();
    }

    // What the stand-ins themselves take: AssumeRole + GetSecretValue, and
    // a TLS connection through the proxy (with the audit query).
    let config = tenant_users::app::Config::from_lookup(|k| {
        env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    let tenant_users::db::config::DbSource::Secret(secret_config) = config.db.source.clone() else {
        unreachable!()
    };
    let mut fetches = Vec::new();
    let mut connects = Vec::new();
    for _ in 0..7 {
        let source = tenant_users::secret::SecretSource::new(secret_config.clone()).await;
        let t = Instant::now();
        source.fetch().await.unwrap();
        fetches.push(ms(t.elapsed()));
        let db = tenant_users::db::Database::new(config.db.clone()).await;
        db.audit_report().await.unwrap(); // includes a fetch; subtract it
        let t = Instant::now();
        let db = tenant_users::db::Database::new(config.db.clone()).await;
        db.audit_report().await.unwrap();
        connects.push(ms(t.elapsed()));
    }
    let (start, fetch, connect) = (median(starts), median(fetches), median(connects));
    let stand_ins = connect; // secret fetch + TLS connect + audit, as the service does them
    report.line("Process start to the first 200 from GET /users, with the secret from moto (assume role, get secret) and a verify-full TLS connection through PgBouncer; median of 7.\n");
    report.line("| part | ms |");
    report.line("| --- | --- |");
    report.line(format!("| process start → first 200 | {start:.1} |"));
    report.line(format!(
        "| of which moto: AssumeRole + GetSecretValue | {fetch:.1} |"
    ));
    report.line(format!(
        "| of which secret + TLS connect through PgBouncer + audit query | {stand_ins:.1} |"
    ));
    report.line(format!(
        "| beyond what moto and PostgreSQL take (goal < 100) | {:.1} |",
        start - stand_ins
    ));
}

/// Each function's arm64 bootstrap size, only when it was built from this
/// commit: a file older than HEAD's commit time (or than an uncommitted
/// change to the sources) is an older build, and its size is not reported
/// as ours. The API's is the one with a goal (≤ 12 MiB).
fn bootstrap_size(report: &mut Report) {
    report.section("Bootstrap");
    for function in ["api", "migrate"] {
        let rel = format!("target/lambda/{function}/bootstrap");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel);
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(_) => {
                report.line(format!("No {rel} found: run `make lambda` first."));
                continue;
            }
        };
        if let Some(stale) = bootstrap_is_stale(&meta) {
            report.line(format!(
                "Not measured: {rel} {stale}; run `make lambda`, then `make bench`."
            ));
            continue;
        }
        report.line(format!(
            "`{function}` function: `cargo lambda build --release --arm64` bootstrap: {:.1} MiB ({} bytes, stripped), built after HEAD's commit.",
            meta.len() as f64 / (1024.0 * 1024.0),
            meta.len()
        ));
    }
}

/// Why the bootstrap is not HEAD's build, if it is not: built before HEAD
/// was committed, or before a source file was last changed.
fn bootstrap_is_stale(meta: &std::fs::Metadata) -> Option<String> {
    let built = meta.modified().ok()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = std::process::Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s));
    if let Some(committed) = committed
        && built < committed
    {
        return Some("was built before HEAD was committed".into());
    }
    let mut newest = None;
    let mut stack = vec![
        root.join("src"),
        root.join("crates"),
        root.join("migrations"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    while let Some(p) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&p) {
            stack.extend(entries.flatten().map(|e| e.path()));
        } else if let Ok(m) = std::fs::metadata(&p).and_then(|m| m.modified())
            && newest.is_none_or(|n| m > n)
        {
            newest = Some(m);
        }
    }
    match newest {
        Some(changed) if changed > built => Some(
            "is older than the newest change under src/, crates/, migrations/ or Cargo.*".into(),
        ),
        _ => None,
    }
}

// --- scale ---------------------------------------------------------------

async fn scale(report: &mut Report) {
    report.section("Scale: GET /users for one tenant as the table grows");
    let big: u32 = std::env::var("BENCH_ROWS_PER_TENANT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let tenants = 10_000;
    let db = Arc::new(TestDb::create().await);
    report.line(format!("{tenants} tenants; 10 rows each, then {big} rows each; 300 requests of GET /users?limit=50 for tenant 1042 in-process.\n"));
    report.line("| rows in table | p50 (ms) |");
    report.line("| --- | --- |");
    let mut p50s = Vec::new();
    for (per, first) in [(10u32, 1u32), (big - 10, 11)] {
        let started = Instant::now();
        seed(&db, tenants, per, first).await;
        println!("(seeded in {:.0} s)", started.elapsed().as_secs_f64());
        let admin = db.admin().await;
        let rows: i64 = admin
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        let app = app_through(&db, db_port(&db), &[]).await;
        let token = app.token("1042");
        for _ in 0..20 {
            app.get("/users?limit=50", &token).await;
        }
        let mut xs = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            assert_eq!(
                app.get("/users?limit=50", &token).await.status,
                StatusCode::OK
            );
            xs.push(ms(t.elapsed()));
        }
        let p50 = median(xs);
        report.line(format!("| {rows} | {p50:.3} |"));
        p50s.push(p50);
    }
    report.line(format!(
        "\nRatio large / small: {:.2} (goal ≤ 1.5).\n",
        p50s[1] / p50s[0]
    ));

    // The plan, as the application role under its policy.
    let client = db.app_client().await;
    client
        .batch_execute("BEGIN; SELECT public.app_enter_tenant('1042', 5000, 0)")
        .await
        .unwrap();
    let plan = client
        .query(
            &format!(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
                list_sql("'1042'")
            ),
            &[],
        )
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    report.line("EXPLAIN ANALYZE of the list query as the application role, RLS applied:\n");
    report.line("```");
    for row in plan {
        report.line(row.get::<_, String>(0));
    }
    report.line("```");
}
