//! `make bench-lambda`: the service as Lambda runs it, against a
//! hello-world function measured in the same run.
//!
//! Each function (the release `api` and `examples/hello`) runs
//! under the Lambda runtime interface emulator that the SAM CLI ships,
//! inside a cgroup (v1) holding a Lambda memory size and its share of a CPU
//! (`cpu.cfs_quota_us = MB × 100000 / 1769`). Invocations go through the
//! emulator's HTTP endpoint as SAM-generated API Gateway v2 events for
//! GET /users?limit=50, with RS256 tokens from a JWKS served here on
//! loopback; the database is a throwaway one on the shared server, seeded
//! here and migrated by the `migrate` binary. The function's own CPU is
//! read from the per-thread schedstat (nanoseconds; per invocation over
//! hundreds of invocations) and, as a cross-check, from /proc/PID/stat
//! (10 ms ticks). Every figure is given as
//! min/median/max over `BENCH_RUNS` runs (default 3).
//!
//! At `BENCH_DB_FLOOR_SIZES` hello also runs with the database, twice: once
//! entering the tenant through the registry as the service's warm request
//! does, once through the scope as it was before the registry (a bench-only
//! function in this run's database), so the registry's CPU is priced
//! without a switch in the service. Each of those two and the service are
//! then run through a delaying relay to count their database round trips.
//!
//! Writes its section of BENCHMARKS.md (between markers, so `make bench`
//! keeps it), a CSV and a PNG chart (python3 + matplotlib) of p99 and cost
//! against memory size.
//!
//! Knobs: BENCH_SIZES (default 128,256,512,1024,1769), BENCH_RUNS (3),
//! BENCH_INVOCATIONS (back to back, 300), BENCH_PACED (at 20/s, 300),
//! BENCH_TLS (1: also the TLS + secret + JWKS init figure), BENCH_WRITE (1:
//! write BENCHMARKS.md and the chart; 0: print only), BENCH_SERVICE_BIN
//! (another build of the service to measure), BENCH_PERF (a directory:
//! `perf record` the function over the back-to-back invocations),
//! BENCH_PERF_INIT (N: instead of all the above, N cold starts per path
//! under `perf record`, summed by scripts/perf-init.py into the section's
//! perf block; `make bench-lambda-perf`).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::moto::{Moto, free_port, wait_for_port};
use common::pgbouncer::PgBouncer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.bench.test/";
const AUDIENCE: &str = "bench-client";
const KID: &str = "bench-rsa-1";
const TENANTS: u32 = 100;
const USERS_PER_TENANT: u32 = 60;
/// hello + the database reads this tenant: seeded like the others, but
/// registered in a tier with limits (the service's tenants are `unlimited`,
/// as in the tests), so its registry scope also takes the concurrency cap.
const HELLO_TENANT: u32 = 1000 + TENANTS;
const HELLO_TIER: &str = "premium";
/// The scope before the registry (migrations/V2's `app_set_tenant`: the
/// tenant and the statement timeout, transaction-locally, nothing else),
/// under a name of the benchmark's own, in the benchmark's database only:
/// hello's `HELLO_SCOPE=pre-registry` calls it, so the registry's cost is
/// measured without a switch in the service.
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
/// One-way delay of the relay that counts round trips.
const RELAY_DELAY: Duration = Duration::from_millis(10);
/// Lambda gives one full vCPU at 1,769 MB, proportionally less below.
const FULL_CPU_MB: u64 = 1769;
/// Paced invocations: 20 per second.
const PACE: Duration = Duration::from_millis(50);
/// Lambda on arm64, us-east-1, first pricing tier; see BENCHMARKS.md for
/// the source and the date it was read.
const PRICE_PER_GB_S: f64 = 0.000_013_333_4;
const PRICE_PER_MILLION_REQUESTS: f64 = 0.20;
const PRICE_SOURCE: &str = "https://aws.amazon.com/lambda/pricing/";
const PRICE_READ_ON: &str = "2026-11-27";
const MARK_START: &str = "<!-- bench-lambda:start -->";
const MARK_END: &str = "<!-- bench-lambda:end -->";

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    tenant_users::token::install_tls_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

// --- statistics -------------------------------------------------------------

/// min / median / max of a figure over runs.
#[derive(Clone, Copy)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(xs: &[f64]) -> Self {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() {
            return Spread {
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            };
        }
        Spread {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }

    fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// --- the machine --------------------------------------------------------------

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn commit() -> String {
    let hash = command_output("git", &["rev-parse", "--short=12", "HEAD"]);
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{hash} (with uncommitted changes)")
    } else {
        hash
    }
}

fn rie_path() -> PathBuf {
    let dir = command_output(
        "python3",
        &[
            "-c",
            "import samcli,os;print(os.path.dirname(samcli.__file__))",
        ],
    );
    let path = Path::new(&dir).join("local/rapid/aws-lambda-rie-x86_64");
    assert!(
        path.exists(),
        "the SAM CLI's runtime interface emulator is not at {} (pip install aws-sam-cli)",
        path.display()
    );
    path
}

/// The release binaries `make bench-lambda` builds first.
/// `BENCH_SERVICE_BIN` measures another build of the service (a lever
/// tried, or the previous commit's) against the same harness.
fn binaries() -> (PathBuf, PathBuf) {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_api"));
    let hello = built.parent().unwrap().join("examples/hello");
    let service = std::env::var_os("BENCH_SERVICE_BIN")
        .map(PathBuf::from)
        .unwrap_or(built);
    assert!(
        hello.exists(),
        "{} is missing: run `make bench-lambda` (it builds the example)",
        hello.display()
    );
    (service, hello)
}

// --- CPU of one process ------------------------------------------------------

/// utime + stime of the whole process in clock ticks (USER_HZ = 100).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat; the text after ')' starts at field 3.
    get(11) + get(12)
}

/// On-CPU time of the live threads, in nanoseconds (schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

const TICK_MS: f64 = 10.0;

/// CPU per invocation from two schedstat readings (ns) of the same threads.
fn per_invocation_us(before_ns: u64, after_ns: u64, invocations: usize) -> f64 {
    after_ns.saturating_sub(before_ns) as f64 / 1000.0 / invocations.max(1) as f64
}

/// `BENCH_PERF=DIR`: `perf record` on the function process over the
/// back-to-back invocations, one file per function and run, for a profile
/// of where a warm invocation's CPU goes (build with symbols:
/// `CARGO_PROFILE_RELEASE_STRIP=false`, then `BENCH_SERVICE_BIN`).
struct Profile(Option<Child>);

impl Profile {
    fn start(pid: u32) -> Self {
        let Ok(dir) = std::env::var("BENCH_PERF") else {
            return Self(None);
        };
        let _ = std::fs::create_dir_all(&dir);
        let out = Path::new(&dir).join(format!("perf-{pid}.data"));
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "20000",
                "-g",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("BENCH_PERF: cannot run perf: {e}"))
            .ok();
        std::thread::sleep(Duration::from_millis(300));
        eprintln!("BENCH_PERF: recording {} into {}", pid, out.display());
        Self(child)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SIGINT: perf writes its file and exits.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

// --- cgroup -------------------------------------------------------------------

/// A cgroup v1 pair (cpu, memory) sized like a Lambda function.
struct Cgroup {
    cpu: PathBuf,
    memory: PathBuf,
}

impl Cgroup {
    fn new(mb: u64) -> Self {
        let name = format!("tu-bench-{}-{mb}-{}", std::process::id(), uuid4());
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(&name);
        let memory = Path::new("/sys/fs/cgroup/memory").join(&name);
        std::fs::create_dir_all(&cpu).expect("cgroup v1 cpu controller (run as root)");
        std::fs::create_dir_all(&memory).expect("cgroup v1 memory controller (run as root)");
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(
            cpu.join("cpu.cfs_quota_us"),
            (mb * 100_000 / FULL_CPU_MB).to_string(),
        )
        .unwrap();
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            (mb * 1024 * 1024).to_string(),
        )
        .unwrap();
        Cgroup { cpu, memory }
    }

    fn throttled(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(self.cpu.join("cpu.stat")).unwrap_or_default();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
                .unwrap_or(0)
        };
        (get("nr_periods"), get("nr_throttled"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let a = std::fs::remove_dir(&self.cpu);
            let b = std::fs::remove_dir(&self.memory);
            if (a.is_ok() || !self.cpu.exists()) && (b.is_ok() || !self.memory.exists()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn uuid4() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

// --- the emulator -------------------------------------------------------------

/// One execution environment: the emulator (and, from the first
/// invocation on, the function it starts) inside a cgroup.
struct Environment {
    rie: Child,
    port: u16,
    binary: PathBuf,
    cgroup: Cgroup,
}

impl Environment {
    fn start(rie: &Path, binary: &Path, env: &[(String, String)], mb: u64, log: &Path) -> Self {
        let cgroup = Cgroup::new(mb);
        let port = free_port();
        let api_port = free_port();
        // The shell joins the cgroup, then becomes the emulator: everything
        // it starts is confined from its first instruction.
        let script = format!(
            "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
            cgroup.cpu.display(),
            cgroup.memory.display()
        );
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(rie)
            .arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg(binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", mb.to_string())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the runtime interface emulator");
        wait_for_port(port, Duration::from_secs(10));
        Environment {
            rie: child,
            port,
            binary: binary.to_owned(),
            cgroup,
        }
    }

    fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/2015-03-31/functions/function/invocations",
            self.port
        )
    }

    /// The function's process: the emulator's child running our binary.
    fn function_pid(&self) -> Option<u32> {
        self.child_running(&self.binary)
    }

    /// The emulator's child whose executable is `exe`.
    fn child_running(&self, exe: &Path) -> Option<u32> {
        children(self.rie.id())
            .into_iter()
            .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe))
    }
}

/// The child processes of `pid` (of any of its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Drop for Environment {
    fn drop(&mut self) {
        if let Some(pid) = self.function_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.rie.kill();
        let _ = self.rie.wait();
    }
}

// --- events and tokens ------------------------------------------------------------

/// `sam local generate-event apigateway http-api-proxy`, made a GET /users.
fn event_template() -> Value {
    let out = Command::new("sam")
        .args(["local", "generate-event", "apigateway", "http-api-proxy"])
        .env("SAM_CLI_TELEMETRY", "0")
        .output()
        .expect("sam (pip install aws-sam-cli)");
    let mut e: Value = serde_json::from_slice(&out.stdout).expect("sam generated an event");
    e["routeKey"] = json!("GET /users");
    e["rawPath"] = json!("/users");
    e["rawQueryString"] = json!("limit=50");
    e["queryStringParameters"] = json!({"limit": "50"});
    e["headers"] = json!({
        "accept": "application/json",
        "host": "id.execute-api.us-east-1.amazonaws.com",
        "user-agent": "bench-lambda/1.0",
        "x-forwarded-proto": "https",
    });
    e["requestContext"]["http"]["method"] = json!("GET");
    e["requestContext"]["http"]["path"] = json!("/users");
    e["requestContext"]["routeKey"] = json!("GET /users");
    for key in ["cookies", "pathParameters", "stageVariables", "body"] {
        e.as_object_mut().unwrap().remove(key);
    }
    if let Some(ctx) = e["requestContext"].as_object_mut() {
        ctx.remove("authentication");
        ctx.remove("authorizer");
    }
    e["isBase64Encoded"] = json!(false);
    e
}

/// The events a measurement sends: the template, with these tokens in turn.
#[derive(Clone, Copy)]
struct Events<'a> {
    template: &'a Value,
    tokens: &'a [String],
}

impl Events<'_> {
    fn nth(&self, n: usize) -> String {
        event(self.template, &self.tokens[n % self.tokens.len()], n)
    }
}

fn event(template: &Value, token: &str, n: usize) -> String {
    let mut e = template.clone();
    e["headers"]["authorization"] = json!(format!("Bearer {token}"));
    e["requestContext"]["requestId"] = json!(format!("bench-{n}"));
    e.to_string()
}

struct Signer {
    key: EncodingKey,
    jwks: Value,
}

impl Signer {
    fn new() -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let jwks = json!({"keys": [{
            "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        }]});
        Signer {
            key: EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
            jwks,
        }
    }

    /// A Cognito-shaped access token for `tenant`; `nonce` makes it unique.
    fn token(&self, tenant: u32, nonce: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "sub": format!("user@{tenant}"), "custom:tenant_id": tenant.to_string(),
            "iss": ISSUER, "client_id": AUDIENCE, "token_use": "access",
            "iat": now, "exp": now + 3600, "jti": nonce,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// Serves the JWKS on a loopback port, as an IdP would.
async fn serve_jwks(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let body = jwks.to_string();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The JWKS over HTTPS for the production path: `localhost` with a
/// certificate from `certs`' throwaway CA, a few lines of HTTP/1.1 (one
/// request per connection). The function trusts the CA through
/// `SSL_CERT_DIR`: a directory (in `dir`) holding the system's bundle with
/// the CA appended, so the JWKS client parses as many roots as with the
/// system's own file. Not `SSL_CERT_FILE`: OpenSSL's default paths load
/// that file eagerly into every context (the function's runtime is not
/// known to set either variable), a directory only per issuer, on demand.
async fn serve_jwks_https(
    jwks: &Value,
    certs: &common::pgbouncer::Certs,
    dir: &Path,
) -> (String, PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(certs.dir.join("server.crt")).unwrap(),
        &std::fs::read(certs.dir.join("server.key")).unwrap(),
    )
    .unwrap();
    let acceptor =
        tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/.well-known/jwks.json",
        listener.local_addr().unwrap().port()
    );
    let body = jwks.to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let system = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .expect("a system CA bundle");
    let mut bundle = system;
    bundle.extend_from_slice(b"\n");
    bundle.extend_from_slice(&std::fs::read(certs.ca_file()).unwrap());
    let certs_dir = dir.join("ssl-cert-dir");
    std::fs::create_dir_all(&certs_dir).unwrap();
    std::fs::write(certs_dir.join("ca-bundle-with-bench-ca.crt"), bundle).unwrap();
    (url, certs_dir)
}

// --- the database -----------------------------------------------------------------

/// A database and role of its own on the shared server, migrated by the
/// release binary's `migrate`, dropped at the end.
struct BenchDb {
    name: String,
    user: String,
    password: String,
}

impl BenchDb {
    async fn create() -> Self {
        let suffix = uuid4();
        let db = BenchDb {
            name: format!("tu_bench_{suffix}"),
            user: format!("tu_bench_app_{suffix}"),
            password: format!("pw-{suffix}"),
        };
        let admin = common::connect(&common::admin_base()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", db.name))
            .await
            .unwrap();
        let status = Command::new(common::workspace_bin("migrate"))
            .arg("migrate")
            .env("DATABASE_ADMIN_URL", db.admin_url())
            .env("APP_DB_USER", &db.user)
            .env("APP_DB_PASSWORD", &db.password)
            .env("RUST_LOG", "warn")
            .status()
            .unwrap();
        assert!(status.success(), "migrate migrate failed");
        let mut config = common::admin_base();
        config.dbname(&db.name);
        // Every tenant the benchmark sends is registered (an unknown one
        // gets 403); the registry's trigger gives each its bucket.
        common::connect(&config)
            .await
            .batch_execute(&format!(
                "INSERT INTO users (tenant_id, email, name)
                 SELECT (1000 + t)::text, 'u' || u || '@t' || t || '.test', 'User ' || u
                   FROM generate_series(0, {TENANTS}) t, generate_series(1, {USERS_PER_TENANT}) u;
                 ANALYZE users;
                 INSERT INTO tenants (tenant_id, tier)
                 SELECT (1000 + t)::text, 'unlimited' FROM generate_series(0, {}) t;
                 INSERT INTO tenants (tenant_id, tier) VALUES ('{HELLO_TENANT}', '{HELLO_TIER}');
                 {PRE_REGISTRY_SCOPE}
                 GRANT EXECUTE ON FUNCTION public.bench_pre_registry_scope(text, integer) TO {};",
                TENANTS - 1,
                db.user
            ))
            .await
            .unwrap();
        db
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    fn app_url(&self) -> String {
        self.app_url_via(5432)
    }

    /// The application role's URL through a relay listening on `port`.
    fn app_url_via(&self, port: u16) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{port}/{}",
            self.user, self.password, self.name
        )
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let (name, user) = (self.name.clone(), self.user.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = common::connect(&common::admin_base()).await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                let _ = admin
                    .batch_execute(&format!("DROP ROLE IF EXISTS {user}"))
                    .await;
            });
        })
        .join();
    }
}

// --- one environment's life ---------------------------------------------------

/// What one run of one function at one memory size measured.
#[derive(Default, Clone)]
struct RunFigures {
    cold_ms: f64,
    init_cpu_ms_ticks: f64,
    init_cpu_ms_sched: f64,
    /// Back to back, reused tokens.
    cpu_us: f64,
    cpu_us_ticks: f64,
    b2b_p50: f64,
    b2b_p99: f64,
    paced_p50: f64,
    paced_p99: f64,
    paced_cpu_us: f64,
    /// Back to back, every token new (the service only).
    first_cpu_us: f64,
    first_p50: f64,
    throttled_share: f64,
    /// The service's own account of its init (the `init phases` log line).
    phases: Option<InitPhases>,
}

/// What the function's `init phases` line says (src/coldstart.rs): each
/// phase's CPU (ms), and the process's CPU when init ended.
#[derive(Default, Clone, Debug)]
struct InitPhases {
    cpu_ms: Vec<(String, f64)>,
    process_ms: f64,
}

/// The `init phases` line of a function's log, once it has answered.
fn init_phases(log: &Path) -> Option<InitPhases> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter(|l| l.contains("init phases"))
            .find_map(|line| {
                let v: Value = serde_json::from_str(line.get(line.find('{')?..)?).ok()?;
                let fields = v.get("fields").unwrap_or(&v);
                let phases = fields.get("phases")?.as_str()?;
                let process_ms = fields.get("process_cpu_ms")?.as_str()?.parse().ok()?;
                // `name=cpu@start-end`, space-separated; names hold spaces.
                let mut cpu_ms = Vec::new();
                let mut name = String::new();
                for word in phases.split(' ') {
                    match word.split_once('=') {
                        Some((last, rest)) => {
                            name.push_str(last);
                            if let Some(cpu) = rest.split('@').next().and_then(|c| c.parse().ok()) {
                                cpu_ms.push((std::mem::take(&mut name), cpu));
                            }
                            name.clear();
                        }
                        None => {
                            name.push_str(word);
                            name.push(' ');
                        }
                    }
                }
                Some(InitPhases { cpu_ms, process_ms })
            });
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Phases in the order the table lists them: (name in the log, label).
/// Figures of nested phases are counted in their parents too.
const PHASES: &[(&str, &str)] = &[
    ("exec", "exec and loader, to `main`"),
    ("logs", "log subscriber"),
    ("tls provider", "rustls crypto provider"),
    ("runtime", "tokio runtime"),
    ("config", "configuration from the environment"),
    ("token keys", "token keys (the span: client, fetch, parse)"),
    (
        "jwks client",
        "· JWKS client (rustls roots, shared with the AWS SDK)",
    ),
    ("jwks fetch", "· JWKS fetch (TLS handshake, HTTP)"),
    ("jwks parse", "· · JWKS key parsing"),
    (
        "database",
        "database (the span: AWS clients, TLS connector, secret, connect, audit)",
    ),
    ("aws clients", "· AWS SDK config and clients"),
    ("db tls", "· database TLS connector (OpenSSL roots)"),
    ("secret", "· secret: STS + Secrets Manager"),
    ("sts", "· · STS AssumeRole"),
    ("connect", "· connect: TCP, TLS, SCRAM"),
    ("audit", "· isolation self-audit"),
];

struct Load<'a> {
    template: &'a Value,
    /// Tokens callers keep reusing (one per tenant).
    reused: &'a [String],
    /// Fresh tokens, each sent once; empty: skip the first-sight phase.
    fresh: Vec<String>,
    invocations: usize,
    paced: usize,
}

async fn invoke(client: &reqwest::Client, url: &str, body: String) -> Duration {
    let started = Instant::now();
    let response = client
        .post(url)
        .body(body)
        .send()
        .await
        .expect("the emulator answers");
    let text = response.text().await.unwrap_or_default();
    let elapsed = started.elapsed();
    assert!(
        text.contains("\"statusCode\":200"),
        "invocation did not return 200: {}",
        &text[..text.len().min(400)]
    );
    elapsed
}

/// Cold start, then warm invocations back to back and paced, in one
/// environment.
async fn one_run(
    rie: &Path,
    binary: &Path,
    env: &[(String, String)],
    mb: u64,
    load: &Load<'_>,
    log: &Path,
) -> RunFigures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let environment = Environment::start(rie, binary, env, mb, log);
    let url = environment.url();
    let mut f = RunFigures::default();
    let mut n = 0usize;
    let mut next = |token: &str| {
        n += 1;
        event(load.template, token, n)
    };

    f.cold_ms = ms(invoke(&client, &url, next(&load.reused[0])).await);
    let pid = environment
        .function_pid()
        .expect("the emulator started the function");
    f.init_cpu_ms_ticks = cpu_ticks(pid) as f64 * TICK_MS;
    f.init_cpu_ms_sched = cpu_ns(pid) as f64 / 1e6;
    f.phases = init_phases(log);

    // Every caller's token once (the service learns them), then a few more.
    for token in load.reused.iter().chain(load.reused.iter().take(20)) {
        invoke(&client, &url, next(token)).await;
    }

    let (periods0, throttled0) = environment.cgroup.throttled();
    let profile = Profile::start(pid);
    let (ticks, ns) = (cpu_ticks(pid), cpu_ns(pid));
    let mut xs = Vec::with_capacity(load.invocations);
    for i in 0..load.invocations {
        let body = next(&load.reused[i % load.reused.len()]);
        xs.push(ms(invoke(&client, &url, body).await));
    }
    f.cpu_us = per_invocation_us(ns, cpu_ns(pid), load.invocations);
    f.cpu_us_ticks = (cpu_ticks(pid) - ticks) as f64 * TICK_MS * 1000.0 / load.invocations as f64;
    drop(profile);
    f.b2b_p50 = percentile(&xs, 0.5);
    f.b2b_p99 = percentile(&xs, 0.99);
    let (periods1, throttled1) = environment.cgroup.throttled();
    f.throttled_share = (throttled1 - throttled0) as f64 / ((periods1 - periods0).max(1)) as f64;

    let ns = cpu_ns(pid);
    let mut xs = Vec::with_capacity(load.paced);
    let start = tokio::time::Instant::now();
    for i in 0..load.paced {
        tokio::time::sleep_until(start + PACE * i as u32).await;
        let body = next(&load.reused[(i * 7) % load.reused.len()]);
        xs.push(ms(invoke(&client, &url, body).await));
    }
    f.paced_cpu_us = per_invocation_us(ns, cpu_ns(pid), load.paced);
    f.paced_p50 = percentile(&xs, 0.5);
    f.paced_p99 = percentile(&xs, 0.99);

    if !load.fresh.is_empty() {
        let ns = cpu_ns(pid);
        let mut xs = Vec::with_capacity(load.fresh.len());
        for token in &load.fresh {
            let body = next(token);
            xs.push(ms(invoke(&client, &url, body).await));
        }
        f.first_cpu_us = per_invocation_us(ns, cpu_ns(pid), load.fresh.len());
        f.first_p50 = percentile(&xs, 0.5);
    }
    f
}

/// Cold starts only: init CPU and wall time to the first response.
async fn cold_only(
    rie: &Path,
    binary: &Path,
    env: &[(String, String)],
    mb: u64,
    template: &Value,
    token: &str,
    log: &Path,
) -> (f64, f64, f64, Option<InitPhases>) {
    let client = reqwest::Client::new();
    let environment = Environment::start(rie, binary, env, mb, log);
    let cold = ms(invoke(&client, &environment.url(), event(template, token, 1)).await);
    let pid = environment.function_pid().expect("function started");
    (
        cold,
        cpu_ticks(pid) as f64 * TICK_MS,
        cpu_ns(pid) as f64 / 1e6,
        init_phases(log),
    )
}

/// CPU per warm invocation (µs) of two functions measured together: both
/// environments up at `mb`, warmed, then `n` invocations each, alternating
/// (which goes first flips every pair), so both meet the same machine at
/// the same moments, which sequential runs on a shared machine do not.
async fn interleaved_cpu(
    rie: &Path,
    binary: &Path,
    envs: [&[(String, String)]; 2],
    mb: u64,
    events: Events<'_>,
    n: usize,
    log: &Path,
) -> (f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2)
        .build()
        .unwrap();
    let environments = envs.map(|env| {
        let log = log.with_extension(format!("{}.log", uuid4()));
        Environment::start(rie, binary, env, mb, &log)
    });
    let mut k = 0usize;
    let mut call = async |e: usize| {
        k += 1;
        invoke(&client, &environments[e].url(), events.nth(k)).await;
    };
    for _ in 0..120 {
        call(0).await;
        call(1).await;
    }
    let pids = environments
        .each_ref()
        .map(|e| e.function_pid().expect("the emulator started the function"));
    let before = pids.map(cpu_ns);
    for i in 0..n {
        let first = i % 2;
        call(first).await;
        call(1 - first).await;
    }
    let after = pids.map(cpu_ns);
    (
        per_invocation_us(before[0], after[0], n),
        per_invocation_us(before[1], after[1], n),
    )
}

/// A relay to PostgreSQL on loopback that delays each direction by a fixed
/// time (a delay line, as tests/common/delay.rs) and counts round trips
/// exactly: a chunk from the client that arrives after the server's last
/// answer was passed on is the start of a new one (the client waited for
/// the answer before it sent); a pipelined transaction is one.
async fn counting_relay(delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let trips = Arc::new(AtomicUsize::new(0));
    let count = trips.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", 5432)).await else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let answered = Arc::new(AtomicBool::new(true));
            tokio::spawn(relay_pipe(
                ri,
                wo,
                delay,
                Side::Client(answered.clone(), count.clone()),
            ));
            tokio::spawn(relay_pipe(ro, wi, delay, Side::Server(answered)));
        }
    });
    (port, trips)
}

enum Side {
    /// Client to server: counts a round trip when the last answer was passed on.
    Client(Arc<AtomicBool>, Arc<AtomicUsize>),
    /// Server to client: marks the answer passed on.
    Server(Arc<AtomicBool>),
}

async fn relay_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    side: Side,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answered = match &side {
        Side::Server(answered) => Some(answered.clone()),
        Side::Client(..) => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if let Side::Client(answered, trips) = &side
                && answered.swap(false, Ordering::SeqCst)
            {
                trips.fetch_add(1, Ordering::SeqCst);
            }
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    while let Some((arrived, chunk)) = rx.recv().await {
        tokio::time::sleep_until((arrived + delay).into()).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
        if let Some(answered) = &answered {
            answered.store(true, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown().await;
}

/// Database round trips per warm invocation: each function's connection
/// through [`counting_relay`], once without delay and once adding D each
/// way; counted by the relay over the timed invocations, and, as the
/// round-trip guard (tests/api/round_trips.rs) and `make bench` count
/// them, from latency: (p50 at D − p50 at 0) ÷ 2·D.
struct RoundTrips {
    name: &'static str,
    counted: Spread,
    by_latency: Spread,
    at_zero: Spread,
    at_delay: Spread,
}

/// A cold start and 20 warm-up invocations at full CPU, then 25 timed
/// ones: their median latency and the relay's round trips per invocation.
async fn timed_through(
    rie: &Path,
    binary: &Path,
    env: &[(String, String)],
    events: Events<'_>,
    trips: &AtomicUsize,
    log: &Path,
) -> (f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let environment = Environment::start(rie, binary, env, FULL_CPU_MB, log);
    let url = environment.url();
    let (mut xs, mut before) = (Vec::new(), 0);
    for n in 0..46 {
        if n == 21 {
            before = trips.load(Ordering::SeqCst);
        }
        let took = invoke(&client, &url, events.nth(n)).await;
        if n > 20 {
            xs.push(ms(took));
        }
    }
    let counted = (trips.load(Ordering::SeqCst) - before) as f64 / xs.len() as f64;
    (percentile(&xs, 0.5), counted)
}

/// A function whose round trips are counted: its name, its binary, and its
/// environment given the database URL to use.
type Subject<'a> = (
    &'static str,
    &'a Path,
    &'a dyn Fn(String) -> Vec<(String, String)>,
);

async fn round_trips(
    rie: &Path,
    functions: &[Subject<'_>],
    db: &BenchDb,
    events: Events<'_>,
    runs: usize,
    logs: &Path,
) -> Vec<RoundTrips> {
    let mut out = Vec::new();
    for &(name, binary, env) in functions {
        let (mut counted, mut by_latency, mut at_zero, mut at_delay) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let mut p50 = [0.0; 2];
            for (i, delay) in [Duration::ZERO, RELAY_DELAY].into_iter().enumerate() {
                let (relay, trips) = counting_relay(delay).await;
                let log = logs.join(format!("trips-{}-{i}-{run}.log", name.replace(' ', "-")));
                let env = env(db.app_url_via(relay));
                let (latency, n) = timed_through(rie, binary, &env, events, &trips, &log).await;
                p50[i] = latency;
                counted.push(n);
            }
            let n = (p50[1] - p50[0]) / (2.0 * ms(RELAY_DELAY));
            println!(
                "round trips, {name}, run {run}: counted {:.2} / {:.2}, by latency {n:.2} (p50 {:.2} ms at 0, {:.2} ms at {} ms each way)",
                counted[counted.len() - 2],
                counted[counted.len() - 1],
                p50[0],
                p50[1],
                RELAY_DELAY.as_millis()
            );
            by_latency.push(n);
            at_zero.push(p50[0]);
            at_delay.push(p50[1]);
        }
        out.push(RoundTrips {
            name,
            counted: Spread::of(&counted),
            by_latency: Spread::of(&by_latency),
            at_zero: Spread::of(&at_zero),
            at_delay: Spread::of(&at_delay),
        });
    }
    out
}

// --- the run ------------------------------------------------------------------------

struct SizeResult {
    mb: u64,
    hello: Vec<RunFigures>,
    /// hello + the database (`HELLO_DATABASE_URL`), where measured, with
    /// the registry's scope as the service enters a tenant on a warm
    /// request (`HELLO_SCOPE=registry`).
    hello_db: Vec<RunFigures>,
    /// The same without and with the registry, interleaved: CPU per warm
    /// invocation (µs), (off, on) per run.
    registry: Vec<(f64, f64)>,
    service: Vec<RunFigures>,
}

impl SizeResult {
    fn spread(runs: &[RunFigures], f: impl Fn(&RunFigures) -> f64) -> Spread {
        Spread::of(&runs.iter().map(f).collect::<Vec<_>>())
    }
    fn hello(&self, f: impl Fn(&RunFigures) -> f64) -> Spread {
        Self::spread(&self.hello, f)
    }
    fn service(&self, f: impl Fn(&RunFigures) -> f64) -> Spread {
        Self::spread(&self.service, f)
    }
    fn hello_db(&self, f: impl Fn(&RunFigures) -> f64) -> Spread {
        Self::spread(&self.hello_db, f)
    }
    /// Ratio service ÷ hello per run (paired: same run index).
    fn ratio(&self, f: impl Fn(&RunFigures) -> f64) -> Spread {
        Self::paired(&self.service, &self.hello, f)
    }
    /// Ratio service ÷ (hello + database) per run.
    fn ratio_db(&self, f: impl Fn(&RunFigures) -> f64) -> Spread {
        Self::paired(&self.service, &self.hello_db, f)
    }
    /// Ratio (hello + database) ÷ hello per run.
    fn db_floor_ratio(&self, f: impl Fn(&RunFigures) -> f64) -> Spread {
        Self::paired(&self.hello_db, &self.hello, f)
    }
    /// hello + database CPU per invocation, registry off and on
    /// (interleaved), and on ÷ off per run.
    fn registry(&self) -> (Spread, Spread, Spread) {
        let of = |f: fn(&(f64, f64)) -> f64| {
            Spread::of(&self.registry.iter().map(f).collect::<Vec<_>>())
        };
        (of(|x| x.0), of(|x| x.1), of(|x| x.1 / x.0))
    }
    fn paired(a: &[RunFigures], b: &[RunFigures], f: impl Fn(&RunFigures) -> f64) -> Spread {
        let xs: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
        Spread::of(&xs)
    }
}

async fn run() {
    assert!(common::is_root(), "bench-lambda needs root (cgroups)");
    let sizes: Vec<u64> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "128,256,512,1024,1769".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = env_or("BENCH_RUNS", 3);
    let invocations: usize = env_or("BENCH_INVOCATIONS", 300);
    let paced: usize = env_or("BENCH_PACED", 300);
    let with_tls: bool = env_or::<u8>("BENCH_TLS", 1) == 1;
    let db_floor_sizes: Vec<u64> = std::env::var("BENCH_DB_FLOOR_SIZES")
        .unwrap_or_else(|_| "128,1769".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let write: bool = env_or::<u8>("BENCH_WRITE", 1) == 1;
    let cores = command_output("nproc", &[]);
    let commit = commit();
    let rie = rie_path();
    let (service_bin, hello_bin) = binaries();
    let logs = std::env::temp_dir().join(format!("tu-bench-lambda-{}", uuid4()));
    std::fs::create_dir_all(&logs).unwrap();
    println!("cores: {cores}; commit: {commit}; logs: {}", logs.display());

    let template = event_template();
    let signer = Signer::new();
    let jwks_url = serve_jwks(signer.jwks.clone()).await;
    let db = BenchDb::create().await;
    let reused: Vec<String> = (0..TENANTS)
        .map(|t| signer.token(1000 + t, &format!("reused-{t}")))
        .collect();

    let lambda_env = |extra: Vec<(String, String)>| {
        let mut env: Vec<(String, String)> = [
            ("AWS_LAMBDA_FUNCTION_NAME", "tenant-users-bench"),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_REGION", "us-east-1"),
            ("JWT_ALGORITHMS", "RS256"),
            ("JWT_ISSUER", ISSUER),
            ("JWT_AUDIENCE", AUDIENCE),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(extra);
        env
    };
    let service_env = lambda_env(vec![
        ("DATABASE_URL".into(), db.app_url()),
        ("JWT_JWKS_URL".into(), jwks_url.clone()),
    ]);
    let hello_env = lambda_env(vec![]);
    let hello_db_env = |url: String, scope: &str| {
        lambda_env(vec![
            ("HELLO_DATABASE_URL".into(), url),
            ("HELLO_TENANT".into(), HELLO_TENANT.to_string()),
            ("HELLO_SCOPE".into(), scope.into()),
        ])
    };
    let hello_db_on_env = hello_db_env(db.app_url(), "registry");
    let hello_db_off_env = hello_db_env(db.app_url(), "pre-registry");
    let paired: usize = env_or("BENCH_PAIRED", 1000);

    if let Some(n) = std::env::var("BENCH_PERF_INIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let production = ProductionPath::start(&signer, &logs).await;
        let report = perf_init(
            &rie,
            &service_bin,
            &[("plain", &service_env), ("production", &production.env)],
            &template,
            &reused[0],
            n,
            &logs,
            &commit,
        )
        .await;
        println!("\n{report}");
        if write {
            write_perf_block(&report);
            println!("written to BENCHMARKS.md");
        }
        drop(production);
        drop(db);
        return;
    }

    let mut results = Vec::new();
    for &mb in &sizes {
        let mut result = SizeResult {
            mb,
            hello: Vec::new(),
            hello_db: Vec::new(),
            registry: Vec::new(),
            service: Vec::new(),
        };
        for run in 0..runs {
            let fresh: Vec<String> = (0..invocations)
                .map(|i| signer.token(1000 + (i as u32 % TENANTS), &uuid4()))
                .collect();
            let load = Load {
                template: &template,
                reused: &reused,
                fresh: Vec::new(),
                invocations,
                paced,
            };
            let h = one_run(
                &rie,
                &hello_bin,
                &hello_env,
                mb,
                &load,
                &logs.join(format!("hello-{mb}-{run}.log")),
            )
            .await;
            if db_floor_sizes.contains(&mb) {
                let d = one_run(
                    &rie,
                    &hello_bin,
                    &hello_db_on_env,
                    mb,
                    &load,
                    &logs.join(format!("hello-db-{mb}-{run}.log")),
                )
                .await;
                println!(
                    "{mb} MB run {run}: hello + database cold {:.1} ms init {:.1} ms cpu {:.0} µs p99 {:.2}/{:.2} ms",
                    d.cold_ms, d.init_cpu_ms_sched, d.cpu_us, d.b2b_p99, d.paced_p99
                );
                result.hello_db.push(d);
                let (off, on) = interleaved_cpu(
                    &rie,
                    &hello_bin,
                    [&hello_db_off_env, &hello_db_on_env],
                    mb,
                    Events {
                        template: &template,
                        tokens: &reused,
                    },
                    paired,
                    &logs.join(format!("registry-{mb}-{run}")),
                )
                .await;
                println!(
                    "{mb} MB run {run}: hello + database interleaved, registry off {off:.0} µs, on {on:.0} µs: {:.3}",
                    on / off
                );
                result.registry.push((off, on));
            }
            let load = Load { fresh, ..load };
            let s = one_run(
                &rie,
                &service_bin,
                &service_env,
                mb,
                &load,
                &logs.join(format!("service-{mb}-{run}.log")),
            )
            .await;
            println!(
                "{mb} MB run {run}: hello cold {:.1} ms init {:.1}/{:.1} ms cpu {:.0} µs p99 {:.2}/{:.2} ms | service cold {:.1} ms init {:.1}/{:.1} ms cpu {:.0} µs ({:.0} by ticks) first {:.0} µs p99 {:.2}/{:.2} ms (throttled {:.0} %)",
                h.cold_ms,
                h.init_cpu_ms_ticks,
                h.init_cpu_ms_sched,
                h.cpu_us,
                h.b2b_p99,
                h.paced_p99,
                s.cold_ms,
                s.init_cpu_ms_ticks,
                s.init_cpu_ms_sched,
                s.cpu_us,
                s.cpu_us_ticks,
                s.first_cpu_us,
                s.b2b_p99,
                s.paced_p99,
                s.throttled_share * 100.0
            );
            result.hello.push(h);
            result.service.push(s);
        }
        results.push(result);
    }

    let service_via = |url: String| {
        lambda_env(vec![
            ("DATABASE_URL".into(), url),
            ("JWT_JWKS_URL".into(), jwks_url.clone()),
        ])
    };
    let off_via = |url: String| hello_db_env(url, "pre-registry");
    let on_via = |url: String| hello_db_env(url, "registry");
    let trips = round_trips(
        &rie,
        &[
            ("hello + db, registry off", &hello_bin, &off_via),
            ("hello + db, registry on", &hello_bin, &on_via),
            ("service", &service_bin, &service_via),
        ],
        &db,
        Events {
            template: &template,
            tokens: &reused,
        },
        runs,
        &logs,
    )
    .await;

    let tls = if with_tls {
        Some(tls_init(&rie, &service_bin, &template, &signer, runs, &logs).await)
    } else {
        None
    };

    let report = render(
        &results,
        &trips,
        tls.as_ref(),
        &cores,
        &commit,
        Plan {
            runs,
            invocations,
            paced,
            paired,
        },
    );
    println!("\n{report}");
    if write {
        write_section(&report);
        chart(&results);
        println!("written to BENCHMARKS.md and benches/lambda-memory.png");
    }
    drop(db);
}

/// Init with everything a production cold start does: the secret from
/// Secrets Manager (moto, through an assumed role), a verify-full TLS
/// connection through PgBouncer with SCRAM, and the JWKS fetched over
/// HTTPS.
struct TlsInit {
    mb: u64,
    cold: Spread,
    ticks: Spread,
    sched: Spread,
    /// Each run's init phases and its init CPU to the first response.
    phases: Vec<(InitPhases, f64)>,
}

/// What the production path needs running beside the function: its own
/// database behind PgBouncer (TLS, SCRAM), moto holding the secret, the
/// JWKS over HTTPS; and the function's environment for it.
struct ProductionPath {
    env: Vec<(String, String)>,
    _bouncer: PgBouncer,
    _moto: Moto,
    _db: BenchDb,
}

impl ProductionPath {
    async fn start(signer: &Signer, logs: &Path) -> Self {
        let db = BenchDb::create().await;
        let bouncer = PgBouncer::start(&[(&db.user, &db.password)], 2);
        let (jwks_url, ca_bundle) = serve_jwks_https(&signer.jwks, &bouncer.certs, logs).await;
        let jwks_url = jwks_url.as_str();
        let moto = Moto::start().await;
        let secret = json!({
            "engine": "postgres", "host": "localhost", "port": bouncer.port,
            "username": db.user, "password": db.password, "dbname": db.name,
        })
        .to_string();
        let arn = moto.create_secret("bench/lambda-db", &secret).await;
        let mut env: Vec<(String, String)> = moto
            .function_env(&arn)
            .into_iter()
            .filter(|(k, _)| k != "JWT_ALLOW_HS256")
            .collect();
        env.extend(
            [
                ("AWS_LAMBDA_FUNCTION_NAME", "tenant-users-bench"),
                ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
                ("DB_SSLMODE", "verify-full"),
                ("JWT_ALGORITHMS", "RS256"),
                ("JWT_ISSUER", ISSUER),
                ("JWT_AUDIENCE", AUDIENCE),
                ("JWT_JWKS_URL", jwks_url),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        // As many roots as production parses: those of the shipped RDS bundle
        // that a secret's database in the function's region is trusted by
        // when DB_CA_FILE is unset (src/db/mod.rs, `rds_roots`), with the
        // bench's CA appended.
        let db_ca = logs.join("rds-roots-with-bench-ca.pem");
        let mut pem =
            tenant_users::db::rds_roots(tenant_users::db::RDS_CA_BUNDLE, Some("us-east-1"))
                .into_bytes();
        pem.extend_from_slice(b"\n");
        pem.extend_from_slice(&std::fs::read(bouncer.certs.ca_file()).unwrap());
        std::fs::write(&db_ca, pem).unwrap();
        env.push(("DB_CA_FILE".into(), db_ca.display().to_string()));
        env.push(("SSL_CERT_DIR".into(), ca_bundle.display().to_string()));
        ProductionPath {
            env,
            _bouncer: bouncer,
            _moto: moto,
            _db: db,
        }
    }
}

async fn tls_init(
    rie: &Path,
    service: &Path,
    template: &Value,
    signer: &Signer,
    runs: usize,
    logs: &Path,
) -> Vec<TlsInit> {
    let production = ProductionPath::start(signer, logs).await;
    let env = &production.env;
    let token = signer.token(1000, "tls");
    let mut out = Vec::new();
    for mb in [128u64, FULL_CPU_MB] {
        let (mut cold, mut ticks, mut sched) = (Vec::new(), Vec::new(), Vec::new());
        let mut phases = Vec::new();
        for run in 0..runs.max(3) {
            let (c, t, s, p) = cold_only(
                rie,
                service,
                env,
                mb,
                template,
                &token,
                &logs.join(format!("tls-{mb}-{run}.log")),
            )
            .await;
            println!(
                "TLS init {mb} MB run {run}: cold {c:.1} ms, init CPU {t:.0} ms (ticks) {s:.1} ms (schedstat)"
            );
            cold.push(c);
            ticks.push(t);
            sched.push(s);
            phases.extend(p.map(|p| (p, s)));
        }
        out.push(TlsInit {
            mb,
            cold: Spread::of(&cold),
            ticks: Spread::of(&ticks),
            sched: Spread::of(&sched),
            phases,
        });
    }
    drop(production);
    out
}

// --- where init CPU goes, by function (perf) ---------------------------------------

/// perf's sampling rate: one sample per 100 µs of CPU.
const PERF_HZ: u32 = 10_000;

/// `BENCH_PERF_INIT=N` (`make bench-lambda-perf`): N cold starts per path
/// at 1769 MB, each under `perf record` from the function's exec to its
/// first answer (the emulator starts a wrapper that execs perf, which
/// starts the service; perf is stopped once the answer is in, before the
/// process is torn down). Samples: the cpu-clock, stacks unwound from
/// .eh_frame (the service built with its symbols: `--profile perf`).
/// scripts/perf-init.py then sums them per component and per function.
#[allow(clippy::too_many_arguments)]
async fn perf_init(
    rie: &Path,
    service: &Path,
    paths: &[(&str, &Vec<(String, String)>)],
    template: &Value,
    token: &str,
    n: usize,
    logs: &Path,
    commit: &str,
) -> String {
    let perf = PathBuf::from(command_output("sh", &["-c", "command -v perf"]));
    assert!(
        perf.is_absolute(),
        "perf is not installed (Debian: apt-get install linux-perf)"
    );
    let client = reqwest::Client::new();
    let mut args: Vec<String> = vec!["--runs".into(), n.to_string()];
    let mut under_perf = Vec::new();
    for (label, env) in paths {
        let mut files = Vec::new();
        let mut sched = Vec::new();
        // One cold start unrecorded first: the binary in the page cache, as
        // in the runs of the section's other figures.
        cold_only(
            rie,
            service,
            env,
            FULL_CPU_MB,
            template,
            token,
            &logs.join(format!("perf-{label}-warm-up.log")),
        )
        .await;
        for run in 0..n {
            let data = logs.join(format!("perf-{label}-{run}.data"));
            let wrapper = logs.join(format!("perf-{label}-{run}.sh"));
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec {} record -q -F {PERF_HZ} --call-graph dwarf,16384 -o {} -- {}\n",
                    perf.display(),
                    data.display(),
                    service.display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
            let log = logs.join(format!("perf-{label}-{run}.log"));
            let environment = Environment::start(rie, &wrapper, env, FULL_CPU_MB, &log);
            invoke(&client, &environment.url(), event(template, token, 1)).await;
            let recorder = environment
                .child_running(&perf)
                .expect("the emulator started perf");
            if let Some(&pid) = children(recorder).first() {
                sched.push(cpu_ns(pid) as f64 / 1e6);
            }
            // SIGINT: perf stops sampling, ends the service, writes its file.
            let _ = Command::new("kill")
                .args(["-INT", &recorder.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let stat =
                    std::fs::read_to_string(format!("/proc/{recorder}/stat")).unwrap_or_default();
                let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
                if state.is_none_or(|r| r.starts_with('Z')) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(environment);
            println!(
                "perf {label} run {run}: init CPU to the first answer {:.1} ms (schedstat, under perf)",
                sched.last().copied().unwrap_or(f64::NAN)
            );
            files.push(data.display().to_string());
        }
        args.push(format!("{label}={}", files.join(",")));
        under_perf.push((label.to_string(), Spread::of(&sched)));
    }
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/perf-init.py"))
        .args(&args)
        .output()
        .expect("python3 runs scripts/perf-init.py");
    assert!(
        out.status.success(),
        "scripts/perf-init.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = String::from_utf8_lossy(&out.stdout);
    let now = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mut t = String::new();
    let _ = writeln!(t, "### Init CPU by function (perf)\n");
    let _ = writeln!(
        t,
        "Produced by `make bench-lambda-perf` (benches/lambda.rs with `BENCH_PERF_INIT={n}`, then scripts/perf-init.py) on commit {commit}, {now}. \
         The service built with `--profile perf` (release's settings, its symbols kept; no debuginfo), {n} cold starts per path at 1769 MB in this section's harness, \
         each under `perf record -F {PERF_HZ} --call-graph dwarf` (the cpu-clock: one sample per {} µs of the process's CPU, user and kernel) from exec to the first answer, \
         so the samples cover what the per-phase table calls *init CPU to the first response*. \
         That CPU under perf, schedstat: {} ms (plain), {} ms (production), median (min–max) of the runs, against the per-phase table's figures without it: perf's sampling and stack copies inflate it, about evenly, so read the shares (%); the ms are the samples' own CPU per cold start (mean of the runs). \
         *Self*: the function a sample was in; *in*: samples with the function anywhere on their stack (a caller's figure includes its callees).\n",
        1_000_000 / PERF_HZ,
        under_perf.first().map(|x| x.1.show(1)).unwrap_or_default(),
        under_perf.get(1).map(|x| x.1.show(1)).unwrap_or_default(),
    );
    t.push_str(&tables);
    t
}

const PERF_START: &str = "<!-- bench-lambda-perf:start -->";
const PERF_END: &str = "<!-- bench-lambda-perf:end -->";

/// Replaces the perf block inside this benchmark's section (or adds it at
/// the section's end); a full run of the section keeps it.
fn write_perf_block(report: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{PERF_START}\n{report}{PERF_END}\n");
    let new = match (old.find(PERF_START), old.find(PERF_END)) {
        (Some(a), Some(b)) if a < b => {
            let after = old[b + PERF_END.len()..].trim_start_matches('\n');
            format!("{}{block}{}", &old[..a], after)
        }
        _ => match old.find(MARK_END) {
            Some(end) => format!("{}{block}{}", &old[..end], &old[end..]),
            None => format!("{}\n{MARK_START}\n{block}{MARK_END}\n", old.trim_end()),
        },
    };
    std::fs::write(path, new).unwrap();
}

// --- the report -----------------------------------------------------------------------

/// Billed duration is rounded up to the millisecond; the paced median stands
/// for a warm invocation's duration (the emulator's own share included, so
/// this errs high).
fn cost_per_million(mb: u64, duration_ms: f64) -> f64 {
    let billed_s = duration_ms.ceil() / 1000.0;
    1e6 * (mb as f64 / 1024.0) * billed_s * PRICE_PER_GB_S + PRICE_PER_MILLION_REQUESTS
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// How much was measured: runs per figure, and invocations per run.
#[derive(Clone, Copy)]
struct Plan {
    runs: usize,
    /// Back to back.
    invocations: usize,
    /// At 20/s.
    paced: usize,
    /// Each of registry off and on, interleaved.
    paired: usize,
}

/// Issue 20's goals (the cold start at the floor) and where init CPU goes,
/// phase by phase, on both paths.
fn render_cold_goals(t: &mut String, results: &[SizeResult], tls: Option<&Vec<TlsInit>>) {
    let at = |mb: u64| results.iter().find(|r| r.mb == mb);
    let prod = |mb: u64| tls.and_then(|x| x.iter().find(|x| x.mb == mb));
    let _ = writeln!(t, "### Goals (issue 20): cold start at the floor\n");
    let _ = writeln!(
        t,
        "Plain path: `DATABASE_URL` (no TLS) and the JWKS URL, as above. Production path: the secret through STS + Secrets Manager (moto), \
         verify-full TLS + SCRAM through PgBouncer (`DB_CA_FILE`: the RDS roots the function would trust in its region, us-east-1, plus the bench's CA), \
         the JWKS fetched over HTTPS (the function's `SSL_CERT_DIR`: the system's CA bundle plus the bench's CA). Init CPU: schedstat, process start to the first answer. \
         hello + db: examples/hello with its one database connection opened at init (no TLS).\n"
    );
    let _ = writeln!(t, "| figure | now: median (min–max) | goal | |");
    let _ = writeln!(t, "| --- | --- | --- | --- |");
    for mb in [FULL_CPU_MB, 128] {
        let Some(r) = at(mb) else { continue };
        let init = r.service(|f| f.init_cpu_ms_sched);
        let goal = (mb == FULL_CPU_MB).then_some(7.0);
        let _ = writeln!(
            t,
            "| plain path: init CPU, {mb} MB, ms (hello: {}; hello + db: {}) | {} | {} | {} |",
            r.hello(|f| f.init_cpu_ms_sched).show(1),
            r.hello_db(|f| f.init_cpu_ms_sched).show(1),
            init.show(1),
            goal.map_or("(informative)".into(), |g| format!("≤ {g} ms")),
            goal.map_or("", |g| verdict(init.median <= g))
        );
        let cold = r.service(|f| f.cold_ms);
        let goal = (mb == 128).then_some(60.0);
        let _ = writeln!(
            t,
            "| plain path: cold start, {mb} MB, ms (hello: {}; hello + db: {}) | {} | {} | {} |",
            r.hello(|f| f.cold_ms).show(1),
            r.hello_db(|f| f.cold_ms).show(1),
            cold.show(1),
            goal.map_or("(informative)".into(), |g| format!("≤ {g} ms")),
            goal.map_or("", |g| verdict(cold.median <= g))
        );
    }
    for mb in [FULL_CPU_MB, 128] {
        let Some(x) = prod(mb) else { continue };
        let goal = (mb == FULL_CPU_MB).then_some(15.0);
        let _ = writeln!(
            t,
            "| production path: init CPU, {mb} MB, ms | {} | {} | {} |",
            x.sched.show(1),
            goal.map_or("(informative)".into(), |g| format!("≤ {g} ms")),
            goal.map_or("", |g| verdict(x.sched.median <= g))
        );
        let goal = (mb == 128).then_some(250.0);
        let _ = writeln!(
            t,
            "| production path: cold start, {mb} MB, ms | {} | {} | {} |",
            x.cold.show(1),
            goal.map_or("(informative)".into(), |g| format!("≤ {g} ms")),
            goal.map_or("", |g| verdict(x.cold.median <= g))
        );
    }
    for r in results.iter().filter(|r| !r.hello_db.is_empty()) {
        let ratio = r.ratio_db(|f| f.cpu_us);
        let _ = writeln!(
            t,
            "| CPU per warm invocation, service ÷ hello + db ({} MB; µs: {} vs {}) | {} | ≤ 1.10× | {} |",
            r.mb,
            r.service(|f| f.cpu_us).show(0),
            r.hello_db(|f| f.cpu_us).show(0),
            ratio.show(2),
            verdict(ratio.median <= 1.10)
        );
    }

    // Per phase.
    let mut columns: Vec<(String, Vec<(InitPhases, f64)>)> = Vec::new();
    for mb in [FULL_CPU_MB, 128] {
        if let Some(r) = at(mb) {
            let runs = r
                .service
                .iter()
                .filter_map(|f| f.phases.clone().map(|p| (p, f.init_cpu_ms_sched)))
                .collect();
            columns.push((format!("plain, {mb} MB"), runs));
        }
    }
    for mb in [FULL_CPU_MB, 128] {
        if let Some(x) = prod(mb) {
            columns.push((format!("production, {mb} MB"), x.phases.clone()));
        }
    }
    if columns.iter().all(|(_, runs)| runs.is_empty()) {
        return;
    }
    let _ = writeln!(t, "\n### Init CPU per phase\n");
    let _ = writeln!(
        t,
        "From the service's own `init phases` log line (src/coldstart.rs), one per cold start above: each phase's CPU on the thread that ran it \
         (an async phase: its polls only, so phases running concurrently on the one runtime thread are told apart; a nested phase, marked ·, \
         is counted in its parent too; work on other threads, such as DNS look-ups, only in the process total). \
         The first response: the runtime API's first event, the first request and its answer (schedstat at the answer − the process's CPU at the end of init). \
         ms, median (min–max) of the runs; – where a path has no such phase.\n"
    );
    let header: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    let _ = writeln!(t, "| phase | {} |", header.join(" | "));
    let _ = writeln!(t, "| --- |{}", " --- |".repeat(columns.len()));
    let cell = |runs: &[(InitPhases, f64)], f: &dyn Fn(&(InitPhases, f64)) -> Option<f64>| {
        let xs: Vec<f64> = runs.iter().filter_map(f).collect();
        if xs.is_empty() {
            "–".to_string()
        } else {
            Spread::of(&xs).show(2)
        }
    };
    for (key, label) in PHASES {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, runs)| {
                cell(runs, &|(p, _)| {
                    let xs: Vec<f64> = p
                        .cpu_ms
                        .iter()
                        .filter(|(n, _)| n == key)
                        .map(|(_, v)| *v)
                        .collect();
                    (!xs.is_empty()).then(|| xs.iter().sum())
                })
            })
            .collect();
        let _ = writeln!(t, "| {label} | {} |", cells.join(" | "));
    }
    type Figure<'a> = &'a dyn Fn(&(InitPhases, f64)) -> Option<f64>;
    let phase = |p: &InitPhases, key: &str| {
        p.cpu_ms
            .iter()
            .filter(|(n, _)| n == key)
            .map(|(_, v)| *v)
            .reduce(|a, b| a + b)
    };
    let rows: [(&str, Figure); 4] = [
        (
            "· · Secrets Manager GetSecretValue (secret − STS)",
            &|(p, _)| Some(phase(p, "secret")? - phase(p, "sts")?),
        ),
        (
            "init, all threads (process CPU at the end of init)",
            &|(p, _)| Some(p.process_ms),
        ),
        ("first response (to the answer)", &|(p, s)| {
            Some(s - p.process_ms)
        }),
        (
            "**init CPU to the first response (schedstat)**",
            &|(_, s)| Some(*s),
        ),
    ];
    for (label, f) in rows {
        let cells: Vec<String> = columns.iter().map(|(_, runs)| cell(runs, f)).collect();
        let _ = writeln!(t, "| {label} | {} |", cells.join(" | "));
    }
    let _ = writeln!(t);
}

fn render(
    results: &[SizeResult],
    trips: &[RoundTrips],
    tls: Option<&Vec<TlsInit>>,
    cores: &str,
    commit: &str,
    plan: Plan,
) -> String {
    let Plan {
        runs,
        invocations,
        paced,
        paired,
    } = plan;
    let mut t = String::new();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let _ = writeln!(
        t,
        "## Lambda's shape: runtime API, CPU share, cold starts\n"
    );
    let _ = writeln!(
        t,
        "Produced by `make bench-lambda` (benches/lambda.rs) on commit {commit}, {date}; `nproc` = {cores} (shared machine). \
         Each function runs under the SAM CLI's Lambda runtime interface emulator in a cgroup v1 with the memory size as its memory limit and \
         `cpu.cfs_quota_us = MB × 100000 / 1769` (period 100 ms). Events: `sam local generate-event apigateway http-api-proxy` made a GET /users?limit=50, \
         RS256 access tokens (2048-bit key, JWKS served on loopback), 100 tenants of 60 users each, a plain `DATABASE_URL` (no TLS) on the local PostgreSQL, \
         JSON logs and EMF on. The floor is examples/hello (lambda_http + axum, current-thread runtime, the same 50-row JSON without a database), \
         measured in the same run; ratios pair the service's and hello's figures from the same run. \
         CPU is the function process's own: per invocation, the on-CPU time of its threads from schedstat (ns) over {invocations} back-to-back invocations \
         (utime + stime from /proc/PID/stat, 10 ms ticks, is printed alongside in the run's log as a cross-check); init from both (schedstat, and [ticks]). Cold start: emulator up, then the first invocation sent until its answer. \
         Every figure: median (min–max) of {runs} runs; p50/p99 over {invocations} invocations back to back and {paced} paced at 20/s.\n"
    );

    // Goals.
    let at = |mb: u64| results.iter().find(|r| r.mb == mb);
    let _ = writeln!(t, "### Goals (issue 11)\n");
    let _ = writeln!(t, "| figure | now: median (min–max) | goal | |");
    let _ = writeln!(t, "| --- | --- | --- | --- |");
    let full = at(FULL_CPU_MB).or(results.last());
    if let Some(r) = full {
        let init = r.service(|f| f.init_cpu_ms_sched);
        let _ = writeln!(
            t,
            "| init CPU, start → first response (URL, no TLS), {} MB, schedstat ms [ticks ms] | {} [{}] (hello: {} [{}]) | ≤ 25 ms | {} |",
            r.mb,
            init.show(1),
            r.service(|f| f.init_cpu_ms_ticks).show(0),
            r.hello(|f| f.init_cpu_ms_sched).show(1),
            r.hello(|f| f.init_cpu_ms_ticks).show(0),
            verdict(init.median <= 25.0)
        );
    }
    if let Some(tls) = tls
        && let Some(x) = tls.iter().find(|x| x.mb == FULL_CPU_MB)
    {
        let _ = writeln!(
            t,
            "| init CPU with verify-full TLS via PgBouncer + SCRAM + secret via moto + JWKS fetch, {} MB, schedstat ms [ticks ms] | {} [{}] | ≤ 40 ms | {} |",
            x.mb,
            x.sched.show(1),
            x.ticks.show(0),
            verdict(x.sched.median <= 40.0)
        );
    }
    if let Some(r) = full {
        let ratio = r.ratio(|f| f.cpu_us);
        let _ = writeln!(
            t,
            "| CPU per warm invocation, RS256 tokens reused, ÷ hello's ({} MB; µs: {} vs {}) | {} | ≤ 1.25× | {} |",
            r.mb,
            r.service(|f| f.cpu_us).show(0),
            r.hello(|f| f.cpu_us).show(0),
            ratio.show(2),
            verdict(ratio.median <= 1.25)
        );
        let xs: Vec<f64> = r
            .service
            .iter()
            .zip(&r.hello)
            .map(|(s, h)| s.first_cpu_us / h.cpu_us)
            .collect();
        let ratio = Spread::of(&xs);
        let _ = writeln!(
            t,
            "| the same, every token seen for the first time (µs: {}) | {} | ≤ 1.5× | {} |",
            r.service(|f| f.first_cpu_us).show(0),
            ratio.show(2),
            verdict(ratio.median <= 1.5)
        );
    }
    if let Some(r) = at(128) {
        let cold = r.service(|f| f.cold_ms);
        let _ = writeln!(
            t,
            "| emulated 128 MB: cold start, ms (hello: {}) | {} | ≤ 400 ms | {} |",
            r.hello(|f| f.cold_ms).show(0),
            cold.show(0),
            verdict(cold.median <= 400.0)
        );
        let ratio = r.ratio(|f| f.paced_p99);
        let _ = writeln!(
            t,
            "| emulated 128 MB: warm p99 paced at 20/s, ÷ hello's (ms: {} vs {}) | {} | ≤ 1.5× | {} |",
            r.service(|f| f.paced_p99).show(2),
            r.hello(|f| f.paced_p99).show(2),
            ratio.show(2),
            verdict(ratio.median <= 1.5)
        );
    }
    for r in results.iter().filter(|r| !r.registry.is_empty()) {
        let (off, on, ratio) = r.registry();
        let _ = writeln!(
            t,
            "| the tenant registry and limits: CPU per warm invocation, hello + db entering the tenant through the registry ÷ through the pre-registry scope, interleaved ({} MB; µs: {} vs {}) | {} | ≤ 1.10× | {} |",
            r.mb,
            on.show(0),
            off.show(0),
            ratio.show(3),
            verdict(ratio.median <= 1.10)
        );
    }
    if !trips.is_empty() {
        let _ = writeln!(
            t,
            "| database round trips per warm invocation, counted at a relay: {} ({} MB) | {} | 1 each: the registry adds none | {} |",
            trips.iter().map(|x| x.name).collect::<Vec<_>>().join(" / "),
            FULL_CPU_MB,
            trips
                .iter()
                .map(|x| x.counted.show(2))
                .collect::<Vec<_>>()
                .join(" / "),
            verdict(trips.iter().all(|x| x.counted.max <= 1.0))
        );
    }
    let _ = writeln!(
        t,
        "\nThe remaining goals (RS256 verify, local HTTP against pgbench, arm64 bootstrap size) are measured by `make bench` and listed with these in the goals summary below.\n"
    );
    render_cold_goals(&mut t, results, tls);

    // Per size.
    let floors: Vec<&SizeResult> = results.iter().filter(|r| !r.hello_db.is_empty()).collect();
    if !floors.is_empty() {
        let _ = writeln!(t, "### The second floor: hello + the database\n");
        let _ = writeln!(
            t,
            "examples/hello with `HELLO_DATABASE_URL`: one connection opened at init, and per invocation the service's own GET /users \
             transaction (BEGIN, tenant scope, the same SELECT with LIMIT 51, COMMIT; pipelined, one round trip), rows read into the service's \
             `User` and serialised; no token, logs, metrics, pool or guards. Its excess over hello is what one database round trip costs in \
             this harness; the service's excess over it is what the service's own code adds.\n\n\
             It enters the tenant as the service does on a warm request (`HELLO_SCOPE=registry`): `app_enter_tenant(tenant, 5000, 0)`, \
             the registry row read under RLS, the tier's statement timeout and work_mem set, one of the tier's concurrency slots taken \
             (tenant {HELLO_TENANT}, `{HELLO_TIER}` tier), no tokens asked for (as while the environment's lease lasts), its result read. \
             To price the registry, it also runs *off* (`HELLO_SCOPE=pre-registry`): the scope as it was before the registry \
             (migrations/V2's body: the tenant and the statement timeout set transaction-locally, nothing else), a function created under \
             a bench-only name in this run's database only; the service has no such switch. Off and on run in two environments at once, \
             warmed, then {paired} invocations each, alternating, so both meet the same machine; on ÷ off pairs them per run.\n"
        );
        let _ = writeln!(
            t,
            "| MB | hello CPU (µs) | hello + db CPU (µs) | service CPU (µs) | hello + db ÷ hello | service ÷ hello + db | service ÷ hello | paced p99 (ms): hello / hello + db / service | interleaved: registry off / on CPU (µs) | registry on ÷ off |"
        );
        let _ = writeln!(
            t,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in floors {
            let (off, on, ratio) = r.registry();
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} / {} | {} |",
                r.mb,
                r.hello(|f| f.cpu_us).show(0),
                r.hello_db(|f| f.cpu_us).show(0),
                r.service(|f| f.cpu_us).show(0),
                r.db_floor_ratio(|f| f.cpu_us).show(2),
                r.ratio_db(|f| f.cpu_us).show(2),
                r.ratio(|f| f.cpu_us).show(2),
                r.hello(|f| f.paced_p99).show(2),
                r.hello_db(|f| f.paced_p99).show(2),
                r.service(|f| f.paced_p99).show(2),
                off.show(0),
                on.show(0),
                ratio.show(3),
            );
        }
        let _ = writeln!(t);
    }

    if !trips.is_empty() {
        let _ = writeln!(
            t,
            "### Database round trips per warm invocation
"
        );
        let _ = writeln!(
            t,
            "Each function's database connection goes through a relay on loopback, once passing bytes on at once and once delaying \
             each direction by D = {} ms; {} MB, a fresh environment per function and delay, 25 warm invocations timed after 20. \
             *Counted*: the relay counts a round trip each time the client sends after the server's last answer was passed on \
             (the client waited); a pipelined BEGIN, scope, statement, COMMIT is one; per timed invocation, over both delays. \
             *By latency*: (p50 at D − p50 at 0) ÷ 2·D, as the round-trip guard (tests/api/round_trips.rs) and `make bench` count them \
             (noisy on a loaded machine). Median (min–max) of {} runs.\n",
            RELAY_DELAY.as_millis(),
            FULL_CPU_MB,
            runs
        );
        let _ = writeln!(
            t,
            "| function | round trips, counted | p50 at D = 0 (ms) | p50 at D (ms) | round trips, by latency |"
        );
        let _ = writeln!(t, "| --- | --- | --- | --- | --- |");
        for x in trips {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                x.name,
                x.counted.show(2),
                x.at_zero.show(2),
                x.at_delay.show(2),
                x.by_latency.show(2)
            );
        }
        let _ = writeln!(t);
    }

    let _ = writeln!(t, "### Cold start and init per memory size\n");
    let _ = writeln!(
        t,
        "| MB | CPU quota | hello cold (ms) | service cold (ms) | hello init CPU (ms, schedstat) | service init CPU (ms, schedstat) | service init CPU (ms, ticks) |"
    );
    let _ = writeln!(t, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        let _ = writeln!(
            t,
            "| {} | {:.1} % | {} | {} | {} | {} | {} |",
            r.mb,
            r.mb as f64 * 100.0 / FULL_CPU_MB as f64,
            r.hello(|f| f.cold_ms).show(1),
            r.service(|f| f.cold_ms).show(1),
            r.hello(|f| f.init_cpu_ms_sched).show(1),
            r.service(|f| f.init_cpu_ms_sched).show(1),
            r.service(|f| f.init_cpu_ms_ticks).show(0),
        );
    }
    if let Some(tls) = tls {
        let _ = writeln!(
            t,
            "\nWith the production path at cold start (secret from moto through an assumed role, verify-full TLS + SCRAM through PgBouncer, JWKS fetched over HTTPS):\n"
        );
        let _ = writeln!(
            t,
            "| MB | cold (ms) | init CPU (ms, schedstat) | init CPU (ms, ticks) |"
        );
        let _ = writeln!(t, "| --- | --- | --- | --- |");
        for x in tls {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                x.mb,
                x.cold.show(1),
                x.sched.show(1),
                x.ticks.show(0)
            );
        }
    }

    let _ = writeln!(t, "\n### Warm invocations per memory size\n");
    let _ = writeln!(
        t,
        "| MB | hello CPU/inv (µs) | service CPU/inv, reused (µs) | ratio | service CPU/inv, first sight (µs) | back-to-back p99 hello / service (ms) | paced p50 hello / service (ms) | paced p99 hello / service (ms) | paced p99 ratio | service throttled periods, back to back |"
    );
    let _ = writeln!(
        t,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in results {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} | {:.0} % |",
            r.mb,
            r.hello(|f| f.cpu_us).show(0),
            r.service(|f| f.cpu_us).show(0),
            r.ratio(|f| f.cpu_us).show(2),
            r.service(|f| f.first_cpu_us).show(0),
            r.hello(|f| f.b2b_p99).show(2),
            r.service(|f| f.b2b_p99).show(2),
            r.hello(|f| f.paced_p50).show(2),
            r.service(|f| f.paced_p50).show(2),
            r.hello(|f| f.paced_p99).show(2),
            r.service(|f| f.paced_p99).show(2),
            r.ratio(|f| f.paced_p99).show(2),
            r.service(|f| f.throttled_share).median * 100.0,
        );
    }

    let _ = writeln!(t, "\n### Memory size and cost\n");
    let _ = writeln!(
        t,
        "Price: Lambda on arm64, us-east-1, first tier: ${PRICE_PER_GB_S} per GB-s and ${PRICE_PER_MILLION_REQUESTS:.2} per million requests \
         ({PRICE_SOURCE}, read {PRICE_READ_ON}). Duration per warm request: the service's paced p50 rounded up to the next millisecond \
         (as Lambda bills); it includes the emulator's hand-off, so it errs high. Cold starts are not in the cost (one per environment).\n"
    );
    let _ = writeln!(
        t,
        "| MB | paced p50 (ms) | paced p99 (ms) | billed ms | cost per million requests (USD) |"
    );
    let _ = writeln!(t, "| --- | --- | --- | --- | --- |");
    for r in results {
        let p50 = r.service(|f| f.paced_p50);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.3} |",
            r.mb,
            p50.show(2),
            r.service(|f| f.paced_p99).show(2),
            p50.median.ceil(),
            cost_per_million(r.mb, p50.median)
        );
    }
    let _ = writeln!(
        t,
        "\n![p99 and cost against memory](benches/lambda-memory.png)\n"
    );
    t
}

/// Replaces this benchmark's section of BENCHMARKS.md (or appends it).
fn write_section(report: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    // The perf block (`make bench-lambda-perf`) stays, at the section's end.
    let perf = match (old.find(PERF_START), old.find(PERF_END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}\n", old[a..b + PERF_END.len()].trim_end())
        }
        _ => String::new(),
    };
    let block = format!("{MARK_START}\n{report}{perf}{MARK_END}");
    let new = match (old.find(MARK_START), old.find(MARK_END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{block}{}", &old[..a], &old[b + MARK_END.len()..])
        }
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new).unwrap();
}

/// A CSV of the per-size figures and its chart (scripts/bench-lambda-chart.py).
fn chart(results: &[SizeResult]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches");
    let mut csv =
        String::from("mb,hello_p99_ms,service_p99_ms,service_p50_ms,cost_per_million_usd\n");
    for r in results {
        let p50 = r.service(|f| f.paced_p50).median;
        let _ = writeln!(
            csv,
            "{},{:.3},{:.3},{:.3},{:.4}",
            r.mb,
            r.hello(|f| f.paced_p99).median,
            r.service(|f| f.paced_p99).median,
            p50,
            cost_per_million(r.mb, p50)
        );
    }
    let csv_path = format!("{dir}/lambda-memory.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let status = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench-lambda-chart.py"
        ))
        .arg(&csv_path)
        .arg(format!("{dir}/lambda-memory.png"))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        println!("chart not drawn: pip install -r scripts/bench-requirements.txt");
    }
}
