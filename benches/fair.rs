//! `make bench-fair`: does one tenant's flood cost another tenant anything?
//!
//! Through PgBouncer in transaction mode (pool 20, the RDS Proxy stand-in),
//! a *victim* tenant sends a steady, modest load from 8 environments (open
//! loop: 10 requests a second each on a fixed schedule, 4 lists of
//! GET /users?limit=50 to 1 create) while an *aggressor* tenant sends the
//! same mix from 64 environments as fast as they can (closed loop; a 429's
//! Retry-After is ignored). Every environment is its own `App` with one
//! connection, built as at cold start, as in fleet.rs. The scenarios:
//!
//! 1. the victim alone;
//! 2. with the aggressor, limits off (its tier switched to `unlimited`);
//! 3. with the aggressor in a tier of 100 requests/s (burst 100, 4 at
//!    once), rate leases as shipped (`TENANT_LEASE_MAX` default);
//! 4. the same with `TENANT_LEASE_MAX=1` in every environment: one bucket
//!    write per admitted request, the obvious design, for comparison;
//! 5. a reference: the aggressor's tenant at exactly its limit, politely
//!    (8 environments, open loop, 12.5 requests/s each), which is what any
//!    neighbour at that rate costs the victim, flood or no flood.
//!
//! Each run lasts [`RUN`]; the scenarios take turns, [`RUNS`] rounds, and
//! every figure is the median (min–max) of the runs. Counted from outside:
//! the victim's latency from each request's *scheduled* time (a late answer
//! delays the next send, and that wait counts); the aggressor's admitted
//! requests (2xx) answered after [`WARMUP`], once its full bucket's burst
//! is spent; which requests reached the database (the EMF record a request
//! leaves says `DatabaseTime` 0 when it was answered without a round
//! trip); and bucket writes, per tenant, by a counting trigger this bench
//! adds to `tenant_rate` in its own database.
//!
//! The aggressor's environments run on a runtime of their own whose threads
//! sit in a cgroup of their own with `cpu.idle` set: they run only on CPU
//! time nothing else wants. In Lambda each environment brings its own CPU;
//! here the 64 of them, answering 429s locally as fast as a loop can, would
//! otherwise take the two cores from PostgreSQL, PgBouncer and the victim,
//! and the figures would measure this machine rather than the design. (Nice
//! values would not do: with autogroups, a process's nice only ranks it
//! against its own session's.) Needs root, as `make bench-lambda` does.
//!
//! The section is written into BENCHMARKS.md between its markers.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pgbouncer::PgBouncer;
use common::{Buffer, TestApp, TestDb, TestResponse};
use serde_json::json;
use tenant_users::db::lease::LEASE_LIFETIME;
use tokio::runtime::Handle;
use tokio_postgres::Client;

const POOL: u32 = 20;
const RUN: Duration = Duration::from_secs(10);
const RUNS: usize = 3;
/// The aggressor's admitted rate is counted from here on: its bucket starts
/// full (the burst), which the first fraction of a second spends.
const WARMUP: Duration = Duration::from_secs(2);

/// 8 environments at 10 requests/s each (80/s in all).
const VICTIM: Steady = Steady {
    tenant: "victim",
    envs: 8,
    per_second: 10.0,
};
/// A shipped tier, 200 requests/s: the victim's 80/s are never over it.
const VICTIM_TIER: &str = "premium";

const AGGRESSOR: &str = "aggressor";
const AGGRESSOR_ENVS: usize = 64;
const AGGRESSOR_TIER: &str = "bench-aggressor";
/// The aggressor tier's sustained rate (requests/s), as in [`SETUP`].
const LIMIT: f64 = 100.0;
/// The aggressor's tenant at its limit, politely: 8 × 12.5 = 100/s.
const POLITE: Steady = Steady {
    tenant: AGGRESSOR,
    envs: 8,
    per_second: LIMIT / 8.0,
};

/// Users each tenant holds before the runs: every list returns a full page.
const SEED_USERS: usize = 50;

/// The aggressor's tier, and a count of each tenant's bucket writes: a
/// trigger bumps a sequence per tenant (sequences are not transactional,
/// so counting takes no lock). It runs as its owner, the superuser, and the
/// application role may not call it itself, so the role's self-audit still
/// passes.
const SETUP: &str = "
INSERT INTO tenant_tiers VALUES ('bench-aggressor', 100, 100, 4, 5000, 8192);
CREATE SEQUENCE public.bench_bucket_writes_victim;
CREATE SEQUENCE public.bench_bucket_writes_aggressor;
CREATE FUNCTION public.bench_count_bucket_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    counter regclass := to_regclass('public.bench_bucket_writes_' || NEW.tenant_id);
BEGIN
    IF counter IS NOT NULL THEN
        PERFORM nextval(counter);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.bench_count_bucket_write() FROM PUBLIC;
CREATE TRIGGER bench_count_bucket_write AFTER UPDATE ON public.tenant_rate
    FOR EACH ROW EXECUTE FUNCTION public.bench_count_bucket_write();
";

const BEGIN: &str = "<!-- fair:begin -->";
const END: &str = "<!-- fair:end -->";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Alone,
    LimitsOff,
    Leases,
    WritePerRequest,
    Polite,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Alone,
        Scenario::LimitsOff,
        Scenario::Leases,
        Scenario::WritePerRequest,
        Scenario::Polite,
    ];

    fn label(self) -> &'static str {
        match self {
            Scenario::Alone => "1. victim alone",
            Scenario::LimitsOff => "2. + aggressor, limits off (`unlimited`)",
            Scenario::Leases => "3. + aggressor, limits on, leases (`TENANT_LEASE_MAX` 16)",
            Scenario::WritePerRequest => "4. + aggressor, limits on, `TENANT_LEASE_MAX=1`",
            Scenario::Polite => "5. reference: + the aggressor's tenant at its limit, politely",
        }
    }

    /// The aggressor's tier in this scenario; `None`: it sends nothing.
    fn aggressor_tier(self) -> Option<&'static str> {
        match self {
            Scenario::Alone => None,
            Scenario::LimitsOff => Some("unlimited"),
            Scenario::Leases | Scenario::WritePerRequest | Scenario::Polite => Some(AGGRESSOR_TIER),
        }
    }
}

/// A steady, open-loop load: `envs` environments, each sending
/// `per_second` requests a second on a fixed schedule, out of phase.
#[derive(Clone, Copy)]
struct Steady {
    tenant: &'static str,
    envs: usize,
    per_second: f64,
}

/// One deployment's environments: every one of them built with the same
/// settings, as Lambda builds every environment of a function.
struct Deployment {
    victims: Vec<Arc<TestApp>>,
    aggressors: Vec<Arc<TestApp>>,
}

/// What one environment saw. Latencies are kept for the steady senders
/// only (the flood sends millions of requests).
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    admitted: usize,
    admitted_after_warmup: usize,
    over_rate: usize,
    over_concurrency: usize,
    /// Answers other than 2xx and 429.
    errors: Vec<String>,
    at_database: usize,
    answered_locally: usize,
}

impl Tally {
    /// Counts one answer; `local`: it was given without a round trip.
    fn record(&mut self, r: &TestResponse, local: bool, after_warmup: bool) {
        if local {
            self.answered_locally += 1;
        } else {
            self.at_database += 1;
        }
        match r.status.as_u16() {
            200..=299 => {
                self.admitted += 1;
                self.admitted_after_warmup += usize::from(after_warmup);
            }
            429 if r.text().contains("rate-limited") => self.over_rate += 1,
            429 => self.over_concurrency += 1,
            _ => self.errors.push(format!("{}: {}", r.status, r.text())),
        }
    }

    /// Every answer but 2xx.
    fn refused(&self) -> usize {
        self.over_rate + self.over_concurrency + self.errors.len()
    }

    fn add(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.admitted += other.admitted;
        self.admitted_after_warmup += other.admitted_after_warmup;
        self.over_rate += other.over_rate;
        self.over_concurrency += other.over_concurrency;
        self.errors.extend(other.errors);
        self.at_database += other.at_database;
        self.answered_locally += other.answered_locally;
    }
}

/// One request of the mix: a create for every four lists.
async fn send(app: &TestApp, token: &str, tenant: &str, env: usize, step: usize) -> TestResponse {
    if step % 5 == 4 {
        let email = format!(
            "e{env}-{step}-{}@{tenant}.test",
            uuid::Uuid::new_v4().simple()
        );
        app.post("/users", token, json!({"email": email, "name": "Fair"}))
            .await
    } else {
        app.get("/users?limit=50", token).await
    }
}

/// Takes the EMF record the last request left and says whether that request
/// was answered without a database round trip (`DatabaseTime` 0: the
/// service only records database time once a transaction was sent).
fn answered_locally(emf: &Buffer) -> bool {
    const NO_DATABASE: &[u8] = b"\"DatabaseTime\":0,";
    let Ok(mut records) = emf.0.lock() else {
        return false;
    };
    let local = records.windows(NO_DATABASE.len()).any(|w| w == NO_DATABASE);
    records.clear();
    local
}

/// One environment of a steady load: its share of the schedule, latency
/// counted from each request's scheduled time.
async fn steady(
    app: Arc<TestApp>,
    load: Steady,
    env: usize,
    start: Instant,
    until: Instant,
) -> Tally {
    let period = Duration::from_secs_f64(1.0 / load.per_second);
    let phase = period.mul_f64(env as f64 / load.envs as f64);
    let token = app.token(load.tenant);
    let mut out = Tally::default();
    for step in 0.. {
        let scheduled = start + phase + period * step;
        if scheduled >= until {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let r = send(&app, &token, load.tenant, env, step as usize).await;
        out.latencies.push(scheduled.elapsed());
        let local = answered_locally(&app.emf);
        out.record(&r, local, start.elapsed() >= WARMUP);
    }
    out
}

/// One aggressor environment: requests back to back until `until`, 429s
/// and all, yielding between requests so that answers made without the
/// database do not starve the other environments on the same thread.
async fn flood(app: Arc<TestApp>, env: usize, start: Instant, until: Instant) -> Tally {
    let token = app.token(AGGRESSOR);
    let mut out = Tally::default();
    let mut step = 0;
    while Instant::now() < until {
        let r = send(&app, &token, AGGRESSOR, env, step).await;
        let local = answered_locally(&app.emf);
        out.record(&r, local, start.elapsed() >= WARMUP);
        step += 1;
        tokio::task::yield_now().await;
    }
    out
}

struct RunFigures {
    victim_p50_ms: f64,
    victim_p99_ms: f64,
    victim_errors: usize,
    victim_bucket_writes_per_s: f64,
    aggressor: Option<AggressorFigures>,
}

struct AggressorFigures {
    /// 2xx a second after [`WARMUP`], across every environment.
    admitted_per_s: f64,
    over_rate: usize,
    over_concurrency: usize,
    errors: usize,
    at_database_per_s: f64,
    locally_per_s: f64,
    bucket_writes_per_s: f64,
}

/// Each tenant's bucket writes so far (victim, aggressor).
async fn bucket_writes(admin: &Client) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT coalesce(pg_sequence_last_value('public.bench_bucket_writes_victim'), 0), \
                    coalesce(pg_sequence_last_value('public.bench_bucket_writes_aggressor'), 0)",
            &[],
        )
        .await
        .expect("read the bucket-write counters");
    (row.get(0), row.get(1))
}

/// Puts the aggressor in the scenario's tier and starts both buckets full,
/// once every lease of the previous run has lapsed. The users the last runs
/// created are counted into the planner's statistics first: a fresh
/// database's say the table is nearly empty, and a list then reads and
/// sorts every row of the tenant instead of the first page of its index
/// (measured: 15 ms instead of 0.07 ms at 2,500 rows). Autovacuum would
/// get there, but not on a benchmark's schedule.
async fn prepare(db: &TestDb, admin: &Client, scenario: Scenario) {
    admin
        .batch_execute("ANALYZE users")
        .await
        .expect("analyze users");
    if let Some(tier) = scenario.aggressor_tier() {
        db.register(AGGRESSOR, tier).await;
    }
    tokio::time::sleep(LEASE_LIFETIME + Duration::from_millis(200)).await;
    admin
        .batch_execute(
            "UPDATE public.tenant_rate r SET tokens = coalesce(t.burst, 0), refilled_at = clock_timestamp() \
               FROM public.tenants n JOIN public.tenant_tiers t ON t.tier = n.tier \
              WHERE r.tenant_id = n.tenant_id AND n.tenant_id IN ('victim', 'aggressor')",
        )
        .await
        .expect("refill the buckets");
}

async fn run(
    db: &TestDb,
    admin: &Client,
    deployment: &Deployment,
    scenario: Scenario,
    aggressors: &Handle,
) -> RunFigures {
    prepare(db, admin, scenario).await;
    let writes_before = bucket_writes(admin).await;
    let start = Instant::now();
    let until = start + RUN;
    let victims: Vec<_> = deployment
        .victims
        .iter()
        .enumerate()
        .map(|(i, app)| tokio::spawn(steady(app.clone(), VICTIM, i, start, until)))
        .collect();
    let envs = deployment.aggressors.iter().enumerate();
    let neighbours: Vec<_> = match scenario {
        Scenario::Alone => Vec::new(),
        Scenario::Polite => envs
            .take(POLITE.envs)
            .map(|(i, app)| aggressors.spawn(steady(app.clone(), POLITE, i, start, until)))
            .collect(),
        _ => envs
            .map(|(i, app)| aggressors.spawn(flood(app.clone(), i, start, until)))
            .collect(),
    };

    let mut victim = Tally::default();
    for task in victims {
        victim.add(task.await.expect("victim task"));
    }
    let mut neighbour = Tally::default();
    for task in neighbours {
        neighbour.add(task.await.expect("aggressor task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let writes_after = bucket_writes(admin).await;

    for (who, tally) in [("victim", &victim), ("aggressor", &neighbour)] {
        if let Some(first) = tally.errors.first() {
            eprintln!(
                "{}: {who}: {} other answers, first: {first}",
                scenario.label(),
                tally.errors.len()
            );
        }
    }
    let mut latencies = victim.latencies.clone();
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    let figures = RunFigures {
        victim_p50_ms: at(0.50),
        victim_p99_ms: at(0.99),
        victim_errors: victim.refused(),
        victim_bucket_writes_per_s: (writes_after.0 - writes_before.0) as f64 / elapsed,
        aggressor: (scenario != Scenario::Alone).then(|| AggressorFigures {
            admitted_per_s: neighbour.admitted_after_warmup as f64 / (RUN - WARMUP).as_secs_f64(),
            over_rate: neighbour.over_rate,
            over_concurrency: neighbour.over_concurrency,
            errors: neighbour.errors.len(),
            at_database_per_s: neighbour.at_database as f64 / elapsed,
            locally_per_s: neighbour.answered_locally as f64 / elapsed,
            bucket_writes_per_s: (writes_after.1 - writes_before.1) as f64 / elapsed,
        }),
    };
    eprintln!(
        "{}: victim p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} refused ({} over rate), \
         {:.1} bucket writes/s; aggressor {}",
        scenario.label(),
        figures.victim_p50_ms,
        at(0.90),
        figures.victim_p99_ms,
        at(1.0),
        figures.victim_errors,
        victim.over_rate,
        figures.victim_bucket_writes_per_s,
        figures
            .aggressor
            .as_ref()
            .map_or("-".to_owned(), |a| format!(
                "{:.0} admitted/s, {} + {} 429s, {:.0}/s at the database, {:.0}/s locally, \
             {:.1} bucket writes/s, {} admitted in all",
                a.admitted_per_s,
                a.over_rate,
                a.over_concurrency,
                a.at_database_per_s,
                a.locally_per_s,
                a.bucket_writes_per_s,
                neighbour.admitted,
            ))
    );
    figures
}

/// Builds `n` environments (cold starts), a few at a time.
async fn environments(db: Arc<TestDb>, env: Vec<(String, String)>, n: usize) -> Vec<Arc<TestApp>> {
    let mut apps = Vec::new();
    while apps.len() < n {
        let batch: Vec<_> = (0..(n - apps.len()).min(16))
            .map(|_| TestApp::from_env_shared(db.clone(), env.clone()))
            .collect();
        for app in futures_util::future::join_all(batch).await {
            apps.push(Arc::new(app));
        }
    }
    apps
}

/// A deployment: victims here, aggressors on the aggressors' runtime (so
/// their connections are driven there too).
async fn deploy(db: &Arc<TestDb>, env: Vec<(String, String)>, aggressors: &Handle) -> Deployment {
    let victims = environments(db.clone(), env.clone(), VICTIM.envs).await;
    let aggressors = aggressors
        .spawn(environments(db.clone(), env, AGGRESSOR_ENVS))
        .await
        .expect("aggressor environments");
    Deployment {
        victims,
        aggressors,
    }
}

/// Fills each tenant with [`SEED_USERS`] users through the API.
async fn seed(app: &TestApp) {
    for tenant in [VICTIM.tenant, AGGRESSOR] {
        for i in 0..SEED_USERS {
            app.create_user(tenant, &format!("seed{i}@{tenant}.test"), "Seed")
                .await;
        }
    }
}

/// A cgroup (v1, cpu controller) whose threads get only CPU time that
/// nothing outside it wants (`cpu.idle`); removed when dropped, once its
/// threads have ended.
struct IdleCgroup {
    path: PathBuf,
}

impl IdleCgroup {
    fn new() -> Self {
        assert!(common::is_root(), "bench-fair needs root (a cgroup)");
        let name = format!(
            "tu-fair-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let path = Path::new("/sys/fs/cgroup/cpu").join(name);
        std::fs::create_dir(&path).expect("a cgroup v1 cpu controller at /sys/fs/cgroup/cpu");
        let cgroup = IdleCgroup { path };
        std::fs::write(cgroup.path.join("cpu.idle"), "1").expect("cpu.idle (Linux 5.15 or later)");
        cgroup
    }

    /// Moves the calling thread into the cgroup (v1 takes thread ids).
    fn join(tasks: &Path) {
        let joined = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|t| t.to_string_lossy().into_owned()))
            .is_some_and(|tid| std::fs::write(tasks, tid).is_ok());
        assert!(joined, "could not move an aggressor thread into its cgroup");
    }
}

impl Drop for IdleCgroup {
    fn drop(&mut self) {
        for _ in 0..250 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cgroup {} left behind", self.path.display());
    }
}

fn main() {
    let cgroup = IdleCgroup::new();
    let tasks = cgroup.path.join("tasks");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let aggressors = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("aggressor")
        .on_thread_start(move || IdleCgroup::join(&tasks))
        .enable_all()
        .build()
        .expect("the aggressors' runtime");
    let text = runtime.block_on(bench(aggressors.handle().clone()));
    println!("{text}");
    write_section(&text);
    // Its threads end before the cgroup goes.
    drop(aggressors);
    drop(cgroup);
}

/// Sets up, runs every scenario [`RUNS`] times in turn, and returns the
/// section.
async fn bench(aggressors: Handle) -> String {
    let db = Arc::new(TestDb::create().await);
    let admin = db.admin().await;
    admin.batch_execute(SETUP).await.expect("bench set-up");
    db.register(VICTIM.tenant, VICTIM_TIER).await;
    db.register(AGGRESSOR, "unlimited").await;
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw")], POOL);
    let pooled = bouncer.app_env(&db.app_user, "pw", &db.name);
    let mut write_per_request = pooled.clone();
    write_per_request.push(("TENANT_LEASE_MAX".to_owned(), "1".to_owned()));

    let leased = deploy(&db, pooled, &aggressors).await;
    let obvious = deploy(&db, write_per_request, &aggressors).await;
    seed(&leased.victims[0]).await;

    let mut figures: Vec<(Scenario, Vec<RunFigures>)> =
        Scenario::ALL.iter().map(|s| (*s, Vec::new())).collect();
    for _ in 0..RUNS {
        for (scenario, runs) in &mut figures {
            let deployment = match scenario {
                Scenario::WritePerRequest => &obvious,
                _ => &leased,
            };
            runs.push(run(&db, &admin, deployment, *scenario, &aggressors).await);
        }
    }
    let text = section(&figures);
    drop(bouncer);
    text
}

/// median (min–max) of `xs`, with `digits` decimals.
fn spread(xs: &[f64], digits: usize) -> String {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        d = digits
    )
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The figures of every run of `scenario`.
fn runs_of(figures: &[(Scenario, Vec<RunFigures>)], scenario: Scenario) -> &[RunFigures] {
    figures
        .iter()
        .find(|(s, _)| *s == scenario)
        .map(|(_, runs)| runs.as_slice())
        .unwrap_or_default()
}

/// Per run, the victim's p99 in `scenario` ÷ its p99 alone in the same round.
fn p99_ratios(figures: &[(Scenario, Vec<RunFigures>)], scenario: Scenario) -> Vec<f64> {
    runs_of(figures, scenario)
        .iter()
        .zip(runs_of(figures, Scenario::Alone))
        .map(|(with, alone)| with.victim_p99_ms / alone.victim_p99_ms)
        .collect()
}

/// Per run, the aggressor's admitted rate ÷ its tier's limit.
fn admitted_ratios(figures: &[(Scenario, Vec<RunFigures>)], scenario: Scenario) -> Vec<f64> {
    runs_of(figures, scenario)
        .iter()
        .filter_map(|r| r.aggressor.as_ref())
        .map(|a| a.admitted_per_s / LIMIT)
        .collect()
}

fn section(figures: &[(Scenario, Vec<RunFigures>)]) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{BEGIN}\n## Fair share: one tenant's flood beside another's steady load\n"
    );
    let _ = writeln!(
        text,
        "`make bench-fair` (benches/fair.rs), commit {commit}, {cores} cores, bench profile (optimised). \
         Through PgBouncer (transaction mode, pool {POOL}), every environment its own `App` with one \
         connection (TLS verify-full), as in `make bench-fleet`. The victim: {} environments, \
         open loop, {} requests/s each on a fixed schedule, 4 lists (GET /users?limit=50) to \
         1 create, tier `{VICTIM_TIER}` (200/s); its latency counts from each request's scheduled time, and \
         any answer but 2xx is an error. The aggressor: {AGGRESSOR_ENVS} environments, the same mix back \
         to back, 429s and all (Retry-After ignored), tier `{AGGRESSOR_TIER}`: {LIMIT:.0} requests/s, \
         burst 100, 4 at once (`unlimited` in scenario 2). Its environments' threads run in a cgroup with \
         `cpu.idle` (in Lambda their CPU is their own; here it would be taken from PostgreSQL and the \
         victim). Planner statistics are refreshed before each run (`ANALYZE users`). Scenarios in turn, \
         {RUNS} rounds of {}s runs; median (min–max) of the runs.\n",
        VICTIM.envs,
        VICTIM.per_second,
        RUN.as_secs(),
    );
    let _ = writeln!(
        text,
        "| scenario | victim p50 (ms) | victim p99 (ms) | p99 ÷ alone (same round) | victim errors (all runs) | victim bucket writes /s |"
    );
    let _ = writeln!(text, "|{}", " --- |".repeat(6));
    for (scenario, runs) in figures {
        let of = |f: fn(&RunFigures) -> f64, digits| {
            spread(&runs.iter().map(f).collect::<Vec<_>>(), digits)
        };
        let ratio = match scenario {
            Scenario::Alone => "–".to_owned(),
            _ => spread(&p99_ratios(figures, *scenario), 2),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {ratio} | {} | {} |",
            scenario.label(),
            of(|r| r.victim_p50_ms, 1),
            of(|r| r.victim_p99_ms, 1),
            runs.iter().map(|r| r.victim_errors).sum::<usize>(),
            of(|r| r.victim_bucket_writes_per_s, 1),
        );
    }

    let _ = writeln!(
        text,
        "\nThe aggressor. Admitted: its 2xx from {}s into each run to the end, once the full bucket's burst \
         is spent, across all {AGGRESSOR_ENVS} environments. At the database: its requests whose EMF record \
         has database time; the rest were answered 429 by their environment without a round trip. Bucket \
         writes: updates of its `tenant_rate` row, counted by a trigger the bench adds.\n",
        WARMUP.as_secs(),
    );
    let _ = writeln!(
        text,
        "| scenario | admitted /s | ÷ limit | 429s per run: over rate / over concurrency | at the database /s | answered locally /s | bucket writes /s | other answers (all runs) |"
    );
    let _ = writeln!(text, "|{}", " --- |".repeat(8));
    for (scenario, runs) in figures {
        let flood: Vec<&AggressorFigures> =
            runs.iter().filter_map(|r| r.aggressor.as_ref()).collect();
        if flood.is_empty() {
            continue;
        }
        let of = |f: fn(&AggressorFigures) -> f64, digits| {
            spread(&flood.iter().map(|a| f(a)).collect::<Vec<_>>(), digits)
        };
        let ratio = match scenario {
            Scenario::LimitsOff => "(no limit)".to_owned(),
            _ => spread(&admitted_ratios(figures, *scenario), 2),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {ratio} | {} / {} | {} | {} | {} | {} |",
            scenario.label(),
            of(|a| a.admitted_per_s, 0),
            of(|a| a.over_rate as f64, 0),
            of(|a| a.over_concurrency as f64, 0),
            of(|a| a.at_database_per_s, 0),
            of(|a| a.locally_per_s, 0),
            of(|a| a.bucket_writes_per_s, 1),
            flood.iter().map(|a| a.errors).sum::<usize>(),
        );
    }

    let p99 = p99_ratios(figures, Scenario::Leases);
    let admitted = admitted_ratios(figures, Scenario::Leases);
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    let _ = writeln!(text, "\n### Goals (fair share)\n");
    let _ = writeln!(text, "| figure | now: median (min–max) | goal | |");
    let _ = writeln!(text, "| --- | --- | --- | --- |");
    let _ = writeln!(
        text,
        "| victim p99 beside the aggressor, limits on (leases), ÷ victim p99 alone | {} | ≤ 1.5× | {} |",
        spread(&p99, 2),
        verdict(median(&p99) <= 1.5)
    );
    let _ = writeln!(
        text,
        "| aggressor admitted rate, limits on (leases), after the burst, ÷ its limit ({LIMIT:.0}/s) | {} | 1 ± 0.15 | {} |",
        spread(&admitted, 2),
        verdict((median(&admitted) - 1.0).abs() <= 0.15)
    );
    let _ = writeln!(
        text,
        "| CPU per warm invocation | measured by `make bench-lambda` (\"Lambda's shape\" above, and the summary) | | |\n{END}"
    );
    text
}

/// Writes `text` into BENCHMARKS.md between its markers (appended if they
/// are missing).
fn write_section(text: &str) {
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
