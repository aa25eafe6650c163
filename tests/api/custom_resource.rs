//! The migrate function as CloudFormation calls it: Create/Update/Delete
//! events fed to the handler in-process, real PostgreSQL with an RDS-shaped
//! master and password logins, moto holding both secrets, and a local HTTP
//! server standing in for the pre-signed ResponseURL.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tenant_users::config::DbConfig;
use tenant_users::custom_resource::{ANSWER_RESERVE, CustomResource};
use tenant_users::db::Database;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use crate::common::cluster::Cluster;
use crate::common::connect;
use crate::common::moto::Moto;

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

/// A few lines of HTTP/1.1: read one request per connection, record it,
/// answer 200 as S3 does.
async fn response_url() -> (String, mpsc::UnboundedReceiver<Recorded>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/cfn-response/Schema?X-Amz-Signature=0123abcd",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
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
    (url, rx)
}

struct Deployment {
    cluster: Cluster,
    moto: Moto,
    master_arn: String,
    app_arn: String,
    handler: CustomResource,
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
        // The cluster speaks no TLS; the default (verify-full) is unit-tested.
        env.push(("DB_SSLMODE".into(), "disable".into()));
        let handler = CustomResource::from_lookup(move |key| {
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        });
        let (url, answers) = response_url().await;
        Deployment {
            cluster,
            moto,
            master_arn,
            app_arn,
            handler,
            url,
            answers,
        }
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
    let mut props = d.properties("1");
    props["MasterSecretArn"] = json!(missing);
    let answer = d.send(d.event("Create", None, props)).await;
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

    let mut props = d.properties("1");
    props.as_object_mut().unwrap().remove("DbHost");
    let answer = d.send(d.event("Update", Some(PHYSICAL_ID), props)).await;
    assert_eq!(answer["Status"], "FAILED");
    assert_eq!(answer["PhysicalResourceId"], PHYSICAL_ID);
    let reason = answer["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("read properties failed: property DbHost is missing"),
        "{reason}"
    );

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
    let env = d.moto.own_role_env();
    d.handler = CustomResource::from_lookup(move |key| {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    });
    let answer = d.send(d.event("Create", None, d.properties("1"))).await;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    let reason = answer["Reason"].as_str().unwrap();
    assert!(reason.starts_with("connect failed: "), "{reason}");
    assert!(!can_log_in(&d.login("tenant_app", "app-pw-1")).await);
}
