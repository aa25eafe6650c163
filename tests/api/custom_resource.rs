//! The migrate function as CloudFormation calls it: Create/Update/Delete
//! events fed to the handler in-process, real PostgreSQL with an RDS-shaped
//! master and password logins, moto holding both secrets, and a local HTTPS
//! server standing in for the pre-signed ResponseURL (the handler's client
//! resolves CloudFormation's response bucket to it and trusts a test CA);
//! fake PostgreSQL servers for what a hostile endpoint would ask.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tenant_users::db::Database;
use tenant_users::db::config::DbConfig;
use tenant_users_migrate::custom_resource::{ANSWER_RESERVE, CustomResource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use crate::common::cluster::Cluster;
use crate::common::connect;
use crate::common::moto::Moto;
use crate::common::pgbouncer::Certs;

const DB: &str = "appdb";
const MASTER_PW: &str = "master-pw-4b1d";
const PHYSICAL_ID: &str = "tenant-users-schema-appdb";

/// One request the ResponseURL received.
struct Recorded {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// CloudFormation's response bucket in us-east-1 (moto's region).
const BUCKET_HOST: &str = "cloudformation-custom-resource-response-useast1.s3.amazonaws.com";

/// The response bucket, played on loopback: HTTPS with a certificate for
/// [`BUCKET_HOST`] from a throwaway CA, a few lines of HTTP/1.1 (one
/// request per connection, recorded, answered 200 as S3 does). Returns the
/// URL, what it received, and a client that reaches it by that name.
async fn response_url() -> (String, mpsc::UnboundedReceiver<Recorded>, reqwest::Client) {
    let dir = std::env::temp_dir().join(format!("tu-cfn-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = Certs::make_for(&dir, BUCKET_HOST, &format!("DNS:{BUCKET_HOST}"));
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(dir.join("server.crt")).unwrap(),
        &std::fs::read(dir.join("server.key")).unwrap(),
    )
    .unwrap();
    let acceptor =
        tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tenant_users::token::install_tls_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .resolve(BUCKET_HOST, addr)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(certs.ca_file()).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("https://{BUCKET_HOST}/cfn-response/Schema?X-Amz-Signature=0123abcd");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed mid-request");
                data.extend_from_slice(&buf[..n]);
            };
            let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap().to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            while data.len() < head_end + length {
                let n = stream.read(&mut buf).await.unwrap();
                data.extend_from_slice(&buf[..n]);
            }
            let body = serde_json::from_slice(&data[head_end..head_end + length]).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let _ = tx.send(Recorded {
                request_line,
                headers,
                body,
            });
        }
    });
    (url, rx, client)
}

struct Deployment {
    cluster: Cluster,
    moto: Moto,
    master_arn: String,
    app_arn: String,
    /// The function's environment, as the template sets it.
    env: Vec<(String, String)>,
    handler: CustomResource,
    client: reqwest::Client,
    url: String,
    answers: mpsc::UnboundedReceiver<Recorded>,
}

impl Deployment {
    async fn new() -> Self {
        let cluster = Cluster::start();
        cluster.require_passwords().await;
        cluster.rds_master("rds_master", MASTER_PW, DB).await;
        let moto = Moto::start().await;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        // As RDS manages it: username and password only.
        let master_arn = moto
            .create_secret(
                &format!("rds-master-{suffix}"),
                &json!({"username": "rds_master", "password": MASTER_PW}).to_string(),
            )
            .await;
        let app_arn = moto
            .create_secret(
                &format!("app-{suffix}"),
                &json!({"engine": "postgres", "username": "tenant_app", "password": "app-pw-1"})
                    .to_string(),
            )
            .await;
        let mut env = moto.own_role_env();
        // The cluster speaks no TLS; verify-full is tested against fake
        // servers below.
        for (k, v) in [
            ("DB_SSLMODE", "disable".to_owned()),
            ("DB_HOST", "127.0.0.1".to_owned()),
            ("DB_PORT", cluster.port.to_string()),
            ("DB_NAME", DB.to_owned()),
            ("DB_MASTER_SECRET_ARN", master_arn.clone()),
            ("DB_APP_SECRET_ARN", app_arn.clone()),
        ] {
            env.push((k.into(), v));
        }
        let (url, answers, client) = response_url().await;
        let handler = handler_for(&env, client.clone());
        Deployment {
            cluster,
            moto,
            master_arn,
            app_arn,
            env,
            handler,
            client,
            url,
            answers,
        }
    }

    /// The function with its environment changed (`None` removes a key).
    fn redeploy(&mut self, changes: &[(&str, Option<&str>)]) {
        for (key, value) in changes {
            self.env.retain(|(k, _)| k != key);
            if let Some(v) = value {
                self.env.push(((*key).into(), (*v).into()));
            }
        }
        self.handler = handler_for(&self.env, self.client.clone());
    }

    fn properties(&self, schema_version: &str) -> Value {
        json!({
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:migrate",
            "MasterSecretArn": self.master_arn,
            "AppSecretArn": self.app_arn,
            "DbHost": "127.0.0.1",
            "DbPort": self.cluster.port.to_string(),
            "DbName": DB,
            "SchemaVersion": schema_version,
        })
    }

    /// [`properties`](Self::properties) with a `Tenants` list, as the
    /// template passes its parameter.
    fn with_tenants(&self, schema_version: &str, tenants: &str) -> Value {
        let mut properties = self.properties(schema_version);
        properties["Tenants"] = json!(tenants);
        properties
    }

    fn event(&self, request_type: &str, physical_id: Option<&str>, properties: Value) -> Value {
        let mut event = json!({
            "RequestType": request_type,
            "ResponseURL": self.url,
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/users/6a1e",
            "RequestId": uuid::Uuid::new_v4().to_string(),
            "ResourceType": "Custom::Schema",
            "LogicalResourceId": "Schema",
            "ResourceProperties": properties,
        });
        if let Some(id) = physical_id {
            event["PhysicalResourceId"] = json!(id);
        }
        event
    }

    /// Sends `event` to the handler with `deadline`, and returns what the
    /// ResponseURL received, checked against the event and the handler's
    /// own account of it.
    async fn send_until(&mut self, event: Value, deadline: SystemTime) -> Value {
        let returned = self
            .handler
            .handle(event.clone(), deadline)
            .await
            .expect("answered");
        let got = tokio::time::timeout(Duration::from_secs(5), self.answers.recv())
            .await
            .expect("the ResponseURL was called")
            .unwrap();
        assert!(
            got.request_line
                .starts_with("PUT /cfn-response/Schema?X-Amz-Signature=0123abcd "),
            "{}",
            got.request_line
        );
        // S3 pre-signed URLs are signed for an empty Content-Type.
        assert_eq!(got.header("content-type"), Some(""), "{:?}", got.headers);
        assert_eq!(got.body, returned);
        for key in ["StackId", "RequestId", "LogicalResourceId"] {
            assert_eq!(got.body[key], event[key], "{key}");
        }
        assert_eq!(got.body["Data"], json!({}));
        assert!(
            got.body["Reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{}",
            got.body
        );
        assert!(self.answers.try_recv().is_err(), "exactly one answer");
        got.body
    }

    async fn send(&mut self, event: Value) -> Value {
        self.send_until(event, SystemTime::now() + Duration::from_secs(60))
            .await
    }

    fn login(&self, user: &str, password: &str) -> tokio_postgres::Config {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{DB}",
            self.cluster.port
        )
        .parse()
        .unwrap()
    }

    fn superuser(&self) -> tokio_postgres::Config {
        let mut c = self.cluster.admin();
        c.dbname(DB);
        c
    }
}

fn handler_for(env: &[(String, String)], client: reqwest::Client) -> CustomResource {
    let env = env.to_vec();
    CustomResource::with_http_client(
        move |key| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
        client,
    )
}

async fn can_log_in(config: &tokio_postgres::Config) -> bool {
    config.connect(NoTls).await.is_ok()
}

async fn assert_audit_passes(config: tokio_postgres::Config) {
    let failed: Vec<String> = Database::new(DbConfig::plain(config))
        .await
        .audit_report()
        .await
        .expect("audit runs")
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.finding())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn create_update_delete_answer_success_with_one_physical_id_and_keep_the_data() {
    let mut d = Deployment::new().await;

    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);
    assert!(can_log_in(&d.login("tenant_app", "app-pw-1")).await);
    assert_audit_passes(d.login("tenant_app", "app-pw-1")).await;

    // CloudFormation may send Create again (a retried invocation).
    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);

    let su = connect(&d.superuser()).await;
    su.batch_execute(
        "INSERT INTO users (tenant_id, email, name) VALUES ('acme', 'ada@acme.test', 'Ada')",
    )
    .await
    .unwrap();

    // A later deploy: new schema version, and the app password changed.
    d.moto
        .put_secret(
            &d.app_arn,
            &json!({"username": "tenant_app", "password": "app-pw-2"}).to_string(),
        )
        .await;
    let answer = d
        .send(d.event("Update", Some(PHYSICAL_ID), d.properties("2")))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);
    assert!(!can_log_in(&d.login("tenant_app", "app-pw-1")).await);
    assert!(can_log_in(&d.login("tenant_app", "app-pw-2")).await);
    assert_audit_passes(d.login("tenant_app", "app-pw-2")).await;

    let answer = d
        .send(d.event("Delete", Some(PHYSICAL_ID), d.properties("2")))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);
    let rows: i64 = su
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "Delete keeps the data");
    assert!(can_log_in(&d.login("tenant_app", "app-pw-2")).await);
}

#[tokio::test]
async fn failures_answer_failed_naming_the_step_and_never_a_secret() {
    let mut d = Deployment::new().await;
    let wrong_master = "wrong-master-pw-9c2e";
    d.moto
        .put_secret(
            &d.master_arn,
            &json!({"username": "rds_master", "password": wrong_master}).to_string(),
        )
        .await;
    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);
    let reason = answer["Reason"].as_str().unwrap();
    assert!(reason.starts_with("connect failed: "), "{reason}");
    assert!(reason.contains("SQLSTATE 28P01"), "{reason}");
    let text = answer.to_string();
    for secret in [wrong_master, MASTER_PW, "app-pw-1"] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(!can_log_in(&d.login("tenant_app", "app-pw-1")).await);

    // Each other step, broken alone.
    d.moto
        .put_secret(
            &d.master_arn,
            &json!({"username": "rds_master", "password": MASTER_PW}).to_string(),
        )
        .await;
    let missing = Moto::arn_of("no-such-secret");
    d.redeploy(&[("DB_MASTER_SECRET_ARN", Some(&missing))]);
    let mut props = d.properties("1");
    props["MasterSecretArn"] = json!(missing);
    let answer = d.send(d.event("Create", None, props)).await;
    let master_arn = d.master_arn.clone();
    d.redeploy(&[("DB_MASTER_SECRET_ARN", Some(&master_arn))]);
    let reason = answer["Reason"].as_str().unwrap();
    assert_eq!(answer["Status"], "FAILED");
    assert!(
        reason.starts_with("read master secret failed: ")
            && reason.contains("ResourceNotFoundException"),
        "{reason}"
    );

    d.moto
        .put_secret(&d.app_arn, &json!({"username": "tenant_app"}).to_string())
        .await;
    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("read app secret failed: ") && reason.contains("password is missing"),
        "{reason}"
    );

    // The app secret names the master itself: refused, not granted.
    d.moto
        .put_secret(
            &d.app_arn,
            &json!({"username": "rds_master", "password": "app-pw-1"}).to_string(),
        )
        .await;
    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    let reason = answer["Reason"].as_str().unwrap();
    assert!(reason.starts_with("app role failed: "), "{reason}");
    assert!(!answer.to_string().contains("app-pw-1"));

    // A function without its target says so on every event.
    d.redeploy(&[("DB_HOST", None)]);
    let answer = d
        .send(d.event("Update", Some(PHYSICAL_ID), d.properties("1")))
        .await;
    assert_eq!(answer["Status"], "FAILED");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("read configuration failed: configuration: DB_HOST is required"),
        "{reason}"
    );
    d.redeploy(&[("DB_HOST", Some("127.0.0.1"))]);

    // The rollback of a failed Create deletes nothing, and says so.
    let answer = d
        .send(d.event("Delete", Some(PHYSICAL_ID), d.properties("1")))
        .await;
    assert_eq!(answer["Status"], "SUCCESS");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);

    let answer = d.send(d.event("Replace", None, d.properties("1"))).await;
    assert_eq!(answer["Status"], "FAILED");
}

#[tokio::test]
async fn a_schema_that_fails_the_audit_answers_failed_naming_the_finding() {
    // The migration "succeeded", but the app role could not be served:
    // CloudFormation hears it now, not every user as a 503 later.
    let mut d = Deployment::new().await;
    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    connect(&d.login("rds_master", MASTER_PW))
        .await
        .batch_execute("ALTER TABLE users NO FORCE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let answer = d
        .send(d.event("Update", Some(PHYSICAL_ID), d.properties("2")))
        .await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("audit failed: ")
            && reason.contains("[table-rls-forced] table public.users"),
        "{reason}"
    );
    assert!(!answer.to_string().contains("app-pw-1"));
}

#[tokio::test]
async fn a_database_that_never_answers_gets_failed_before_the_deadline() {
    let mut d = Deployment::new().await;
    // Accepts connections and says nothing, like a security group that
    // lets SYN through to a stuck server.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = blackhole.accept().await {
            held.push(stream);
        }
    });
    d.redeploy(&[("DB_PORT", Some(&port.to_string()))]);
    let mut props = d.properties("1");
    props["DbPort"] = json!(port.to_string());
    let started = Instant::now();
    let deadline = SystemTime::now() + ANSWER_RESERVE + Duration::from_secs(2);
    let answer = d.send_until(d.event("Create", None, props), deadline).await;
    let elapsed = started.elapsed();
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(reason.starts_with("connect failed: timed out"), "{reason}");
    assert!(
        elapsed < ANSWER_RESERVE + Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn tls_is_verified_by_default() {
    // No DB_SSLMODE: verify-full, which the plain-text cluster cannot meet;
    // the connection is refused rather than downgraded.
    let mut d = Deployment::new().await;
    d.redeploy(&[("DB_SSLMODE", None)]);
    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(reason.starts_with("connect failed: "), "{reason}");
    assert!(!can_log_in(&d.login("tenant_app", "app-pw-1")).await);
}

/// What a hostile endpoint saw: the connections made to it, and every byte
/// each one sent after the server's authentication request.
#[derive(Default, Debug)]
struct Seen {
    connections: usize,
    after_request: Vec<Vec<u8>>,
}

/// A fake PostgreSQL server on loopback that asks every client for a
/// password with authentication request `code` (3 cleartext, 5 MD5), over
/// TLS for `certs` (its server certificate) or in plain text, and records
/// what comes back until the client hangs up.
async fn password_phisher(
    code: u32,
    certs: Option<&std::path::Path>,
) -> (u16, std::sync::Arc<std::sync::Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = certs.map(|dir| {
        let identity = native_tls::Identity::from_pkcs8(
            &std::fs::read(dir.join("server.crt")).unwrap(),
            &std::fs::read(dir.join("server.key")).unwrap(),
        )
        .unwrap();
        tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap())
    });
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            record.lock().unwrap().connections += 1;
            let record = record.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut stream: Box<dyn Rw> = match acceptor {
                    Some(acceptor) => {
                        // SSLRequest: length 8, code 80877103; answer 'S'.
                        let mut request = [0u8; 8];
                        tcp.read_exact(&mut request).await.unwrap();
                        assert_eq!(&request[4..], &80877103u32.to_be_bytes());
                        tcp.write_all(b"S").await.unwrap();
                        match acceptor.accept(tcp).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return,
                        }
                    }
                    None => Box::new(tcp),
                };
                let mut len = [0u8; 4];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                stream.read_exact(&mut startup).await.unwrap();
                let mut request = vec![b'R'];
                let salt: &[u8] = if code == 5 { b"salt" } else { b"" };
                request.extend_from_slice(&(8 + salt.len() as u32).to_be_bytes());
                request.extend_from_slice(&code.to_be_bytes());
                request.extend_from_slice(salt);
                stream.write_all(&request).await.unwrap();
                let mut got = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
                    .await;
                record.lock().unwrap().after_request.push(got);
            });
        }
    });
    (port, seen)
}

trait Rw: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Rw for T {}

#[tokio::test]
async fn an_event_naming_another_database_is_refused_before_any_connection() {
    let mut d = Deployment::new().await;
    let (port, seen) = password_phisher(3, None).await;
    for (key, value) in [
        ("DbPort", json!(port.to_string())),
        ("DbHost", json!("db.attacker.example")),
        ("DbName", json!("postgres")),
        ("MasterSecretArn", json!(Moto::arn_of("someone-elses"))),
        ("AppSecretArn", json!(Moto::arn_of("someone-elses"))),
    ] {
        let mut props = d.properties("1");
        props[key] = value.clone();
        let answer = d.send(d.event("Create", None, props)).await;
        assert_eq!(answer["Status"], "FAILED", "{answer}");
        let reason = answer["Reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("read properties failed: property {key} is ")),
            "{reason}"
        );
        assert!(reason.contains(value.as_str().unwrap()), "{reason}");
        assert!(!answer.to_string().contains(MASTER_PW));
    }
    assert_eq!(seen.lock().unwrap().connections, 0, "nothing contacted");
    assert!(!can_log_in(&d.login("tenant_app", "app-pw-1")).await);
}

#[tokio::test]
async fn a_server_asking_for_a_cleartext_or_md5_password_gets_nothing() {
    let mut d = Deployment::new().await;
    let dir = std::env::temp_dir().join(format!("tu-phish-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = Certs::make(&dir);
    for (code, tls) in [(3, false), (5, false), (3, true), (5, true)] {
        let (port, seen) = password_phisher(code, tls.then_some(dir.as_path())).await;
        let port = port.to_string();
        let ca = certs.ca_file().display().to_string();
        if tls {
            // verify-full against the test CA, which vouches for localhost.
            d.redeploy(&[
                ("DB_PORT", Some(&port)),
                ("DB_HOST", Some("localhost")),
                ("DB_SSLMODE", Some("verify-full")),
                ("DB_CA_FILE", Some(&ca)),
            ]);
        } else {
            d.redeploy(&[("DB_PORT", Some(&port)), ("DB_HOST", Some("127.0.0.1"))]);
        }
        let mut props = d.properties("1");
        props["DbPort"] = json!(port);
        props["DbHost"] = json!(if tls { "localhost" } else { "127.0.0.1" });
        let answer = d.send(d.event("Create", None, props)).await;
        assert_eq!(answer["Status"], "FAILED", "{answer}");
        let reason = answer["Reason"].as_str().unwrap();
        let method = if code == 3 { "cleartext" } else { "MD5" };
        assert!(
            reason.starts_with("connect failed: ")
                && reason.contains(&format!(
                    "asked for a{} {method} password",
                    if code == 3 { "" } else { "n" }
                )),
            "{reason}"
        );
        // The client hung up without a byte: no PasswordMessage ('p').
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().after_request.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.connections, 1, "code {code}, tls {tls}");
        assert_eq!(
            seen.after_request,
            vec![Vec::<u8>::new()],
            "code {code}, tls {tls}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_response_url_that_is_not_cloudformations_is_never_contacted() {
    let mut d = Deployment::new().await;
    // Anything listening here would see a contact.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let contacts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = contacts.clone();
    tokio::spawn(async move {
        while let Ok(_conn) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for url in [
        format!("http://{addr}/cfn-response/Schema?X-Amz-Signature=0123abcd"),
        format!("https://{addr}/cfn-response/Schema?X-Amz-Signature=0123abcd"),
        format!("http://{BUCKET_HOST}/cfn-response/Schema?X-Amz-Signature=0123abcd"),
        format!("https://{BUCKET_HOST}:{}/x?X-Amz-Signature=1", addr.port()),
        format!("https://{BUCKET_HOST}/cfn-response/Schema"),
        "https://cloudformation-custom-resource-response-euwest1.s3.amazonaws.com/x?X-Amz-Signature=1".into(),
    ] {
        let mut event = d.event("Create", None, d.properties("1"));
        event["ResponseURL"] = json!(url);
        let e = d.handler.handle(event, SystemTime::now() + Duration::from_secs(30)).await;
        assert!(
            matches!(e, Err(tenant_users_migrate::custom_resource::Unanswered::UntrustedResponseUrl(_))),
            "{url}: {e:?}"
        );
    }
    assert_eq!(contacts.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(
        d.answers.try_recv().is_err(),
        "the bucket got nothing either"
    );
    // And the event was not acted on: no role was made.
    assert!(!can_log_in(&d.login("tenant_app", "app-pw-1")).await);
    let su = connect(&d.superuser()).await;
    let role: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'tenant_app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, 0);
}

/// The registry as the superuser sees it (RLS does not apply to it):
/// tenant, tier and status of every tenant.
async fn registry(su: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    su.query(
        "SELECT tenant_id, tier, status FROM tenants ORDER BY tenant_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Every column of one tenant's registry row and its bucket, as text: what
/// "untouched" compares.
async fn tenant_rows(su: &tokio_postgres::Client, tenant: &str) -> Vec<String> {
    su.query(
        "SELECT t::text FROM tenants t WHERE tenant_id = $1
         UNION ALL SELECT r::text FROM tenant_rate r WHERE tenant_id = $1",
        &[&tenant],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn entry(tenant: &str, tier: &str, status: &str) -> (String, String, String) {
    (tenant.into(), tier.into(), status.into())
}

/// Whether the application role may enter `tenant`'s scope: what every
/// request of the API does first.
async fn app_may_serve(d: &Deployment, tenant: &str) -> Result<(), String> {
    let app = connect(&d.login("tenant_app", "app-pw-1")).await;
    app.batch_execute("BEGIN").await.unwrap();
    let entered = app
        .query_one("SELECT public.app_enter_tenant($1, 0, 0)", &[&tenant])
        .await
        .map(|_| ())
        .map_err(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_default());
    app.batch_execute("ROLLBACK").await.unwrap();
    entered
}

#[tokio::test]
async fn create_registers_the_listed_tenants_and_update_moves_their_tiers() {
    let mut d = Deployment::new().await;
    let answer = d
        .send(d.event("Create", None, d.with_tenants("1", "acme, globex:premium")))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    let su = connect(&d.superuser()).await;
    assert_eq!(
        registry(&su).await,
        [
            entry("acme", "standard", "active"),
            entry("globex", "premium", "active")
        ]
    );
    assert_eq!(app_may_serve(&d, "acme").await, Ok(()));
    assert_eq!(app_may_serve(&d, "initech").await, Err("TU001".into()));
    // The tiers a list may name are exactly the database's.
    let mut tiers: Vec<String> = su
        .query("SELECT tier FROM tenant_tiers", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tiers.sort();
    let mut known = tenant_users_migrate::TIERS.to_vec();
    known.sort();
    assert_eq!(tiers, known);

    // Registered some other way, and changed by an operator since: none of
    // it is the list's business.
    tenant_users_migrate::register_tenant(&su, "initech", "basic")
        .await
        .unwrap();
    su.batch_execute("UPDATE tenants SET status = 'suspended' WHERE tenant_id = 'globex'")
        .await
        .unwrap();
    let initech = tenant_rows(&su, "initech").await;
    let acme = tenant_rows(&su, "acme").await;
    assert_eq!(initech.len(), 2, "{initech:?}");

    // acme dropped from the list, globex moved, hooli added.
    let answer = d
        .send(d.event(
            "Update",
            Some(PHYSICAL_ID),
            d.with_tenants("1", "globex:basic,hooli"),
        ))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(
        registry(&su).await,
        [
            entry("acme", "standard", "active"),
            entry("globex", "basic", "suspended"),
            entry("hooli", "standard", "active"),
            entry("initech", "basic", "active"),
        ]
    );
    assert_eq!(
        tenant_rows(&su, "initech").await,
        initech,
        "unlisted: untouched"
    );
    assert_eq!(tenant_rows(&su, "acme").await, acme, "delisted: untouched");
    assert_eq!(app_may_serve(&d, "globex").await, Err("TU002".into()));
    assert_eq!(app_may_serve(&d, "hooli").await, Ok(()));

    // An empty list and a Delete change no tenant either.
    let before: Vec<Vec<String>> = {
        let mut all = Vec::new();
        for t in ["acme", "globex", "hooli", "initech"] {
            all.push(tenant_rows(&su, t).await);
        }
        all
    };
    let answer = d
        .send(d.event("Update", Some(PHYSICAL_ID), d.with_tenants("2", "")))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    let answer = d
        .send(d.event(
            "Delete",
            Some(PHYSICAL_ID),
            d.with_tenants("2", "globex:basic,hooli"),
        ))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    for (t, rows) in ["acme", "globex", "hooli", "initech"].iter().zip(&before) {
        assert_eq!(&tenant_rows(&su, t).await, rows, "{t}");
    }
}

#[tokio::test]
async fn an_invalid_tenant_entry_fails_naming_it_and_changes_nothing() {
    let mut d = Deployment::new().await;
    let answer = d
        .send(d.event(
            "Create",
            None,
            d.with_tenants("1", "acme,bad tenant,globex:gold"),
        ))
        .await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("read properties failed: property Tenants: entry \"bad tenant\": "),
        "{reason}"
    );
    assert!(
        reason.contains("entry \"globex:gold\": unknown tier \"gold\""),
        "{reason}"
    );
    assert!(!reason.contains("\"acme\""), "{reason}");
    // Refused before anything was done: no migration, no role.
    let su = connect(&d.superuser()).await;
    let migrated: bool = su
        .query_one("SELECT to_regclass('public.tenants') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!migrated);
    assert!(!can_log_in(&d.login("tenant_app", "app-pw-1")).await);

    // On a deployed schema, an invalid Update registers nothing either.
    let answer = d
        .send(d.event("Create", None, d.with_tenants("1", "acme")))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    let registered = registry(&su).await;
    assert_eq!(registered, [entry("acme", "standard", "active")]);
    for list in [
        "acme:premium,globex,",
        "acme:premium,globex:premium:x",
        "globex,globex",
    ] {
        let answer = d
            .send(d.event("Update", Some(PHYSICAL_ID), d.with_tenants("1", list)))
            .await;
        assert_eq!(answer["Status"], "FAILED", "{list}: {answer}");
        let reason = answer["Reason"].as_str().unwrap();
        assert!(
            reason.starts_with("read properties failed: property Tenants: "),
            "{reason}"
        );
        assert_eq!(registry(&su).await, registered, "{list}");
    }
    // A Delete is never refused over its list: it registers nothing anyway.
    let answer = d
        .send(d.event(
            "Delete",
            Some(PHYSICAL_ID),
            d.with_tenants("1", "bad tenant"),
        ))
        .await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");

    // A tier the database lacks (its tiers drifted from the list's) is
    // caught before the first registration: none of the list is registered.
    su.batch_execute("DELETE FROM tenant_tiers WHERE tier = 'basic'")
        .await
        .unwrap();
    let answer = d
        .send(d.event(
            "Update",
            Some(PHYSICAL_ID),
            d.with_tenants("1", "globex,hooli:basic"),
        ))
        .await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("register tenants failed: tier \"basic\" of tenant hooli "),
        "{reason}"
    );
    assert_eq!(registry(&su).await, registered);
}

#[tokio::test]
async fn with_a_control_secret_the_control_planes_role_is_made_and_audited() {
    let mut d = Deployment::new().await;
    let control_arn = d
        .moto
        .create_secret(
            &format!("control-{}", uuid::Uuid::new_v4().simple()),
            &json!({"engine": "postgres", "username": "tenant_control", "password": "ctl-pw-1"})
                .to_string(),
        )
        .await;
    d.redeploy(&[("DB_CONTROL_SECRET_ARN", Some(control_arn.as_str()))]);
    let mut properties = d.properties("1");
    properties["ControlSecretArn"] = json!(control_arn);

    // An event naming another control secret is refused before anything.
    let mut other = properties.clone();
    other["ControlSecretArn"] = json!("arn:aws:secretsmanager:us-east-1:123456789012:secret:evil");
    let answer = d.send(d.event("Create", None, other)).await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    assert!(
        answer["Reason"]
            .as_str()
            .unwrap()
            .contains("ControlSecretArn"),
        "{answer}"
    );
    assert!(!can_log_in(&d.login("tenant_control", "ctl-pw-1")).await);

    let answer = d.send(d.event("Create", None, properties)).await;
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    // Made by the RDS-shaped master (no superuser), without BYPASSRLS, and
    // fit to serve by its own audit.
    let control = connect(&d.login("tenant_control", "ctl-pw-1")).await;
    let findings = tenant_users::audit::check_as(&control, tenant_users::audit::Profile::Control)
        .await
        .unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    let bypass: bool = control
        .query_one(
            "SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!bypass);
    // The application role still cannot reach the trail.
    let app = connect(&d.login("tenant_app", "app-pw-1")).await;
    assert!(
        app.query("SELECT 1 FROM control.operator_trail", &[])
            .await
            .is_err()
    );
}
