//! Property-based isolation: random sequences of create/list/get/update/
//! delete from several tenants, including attempts on other tenants' users,
//! checked after every step against a simple in-memory model, and at the
//! end against the table itself. Run (a) over one reused connection and
//! (b) as concurrent environments through PgBouncer in transaction mode,
//! where each worker also picks the other workers' ids (always a 404,
//! never a change to the other worker's rows).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use crate::common::pgbouncer::PgBouncer;
use crate::common::{TestApp, TestDb};

/// Cases for the single-connection run, and for the concurrent one.
const SERIAL_CASES: u32 = 40;
const CONCURRENT_CASES: u32 = 10;
const WORKERS: usize = 4;
const TENANTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Create {
        tenant: usize,
        email: usize,
        upper: bool,
    },
    List {
        tenant: usize,
    },
    Get {
        caller: usize,
        pick: usize,
    },
    Rename {
        caller: usize,
        pick: usize,
        name: u8,
    },
    Delete {
        caller: usize,
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TENANTS;
    prop_oneof![
        3 => (t.clone(), 0..5usize, any::<bool>()).prop_map(|(tenant, email, upper)| Op::Create { tenant, email, upper }),
        2 => t.clone().prop_map(|tenant| Op::List { tenant }),
        2 => (t.clone(), any::<usize>()).prop_map(|(caller, pick)| Op::Get { caller, pick }),
        2 => (t.clone(), any::<usize>(), any::<u8>()).prop_map(|(caller, pick, name)| Op::Rename { caller, pick, name }),
        1 => (t, any::<usize>()).prop_map(|(caller, pick)| Op::Delete { caller, pick }),
    ]
}

/// Every id ever created, with its tenant (deleted ones too), shared by
/// all workers of a run: a worker's get/rename/delete may pick another
/// worker's id, which must be a 404 and change nothing.
type Ids = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// What each tenant should hold: user id → (email, name).
struct Model {
    tenants: Vec<String>,
    rows: BTreeMap<String, BTreeMap<String, (String, String)>>,
    ids: Ids,
    /// Attempts on ids of tenants outside this model.
    foreign_attempts: usize,
}

impl Model {
    fn new(prefix: &str, ids: Ids) -> Self {
        let tenants: Vec<String> = (0..TENANTS).map(|i| format!("{prefix}-t{i}")).collect();
        Model {
            rows: tenants
                .iter()
                .map(|t| (t.clone(), BTreeMap::new()))
                .collect(),
            tenants,
            ids,
            foreign_attempts: 0,
        }
    }

    async fn register(&self, db: &TestDb) {
        for tenant in &self.tenants {
            db.register(tenant, "unlimited").await;
        }
    }

    fn owner_of(&self, pick: usize) -> Option<(String, String)> {
        let ids = self.ids.lock().unwrap();
        if ids.is_empty() {
            return None;
        }
        Some(ids[pick % ids.len()].clone())
    }
}

fn check(ok: bool, what: String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what))
    }
}

/// Runs `ops` against `app`, checking every response against the model.
async fn run(app: &TestApp, model: &mut Model, ops: &[Op]) -> Result<(), TestCaseError> {
    for op in ops {
        match op {
            Op::Create {
                tenant,
                email,
                upper,
            } => {
                let tenant = model.tenants[*tenant].clone();
                let mut address = format!("user{email}@{tenant}.test");
                if *upper {
                    address = address.to_uppercase();
                }
                let taken = model.rows[&tenant]
                    .values()
                    .any(|(e, _)| e.eq_ignore_ascii_case(&address));
                let r = app
                    .post(
                        "/users",
                        &app.token(&tenant),
                        json!({"email": address, "name": "n"}),
                    )
                    .await;
                if taken {
                    check(
                        r.status == StatusCode::CONFLICT,
                        format!("{op:?}: {} {}", r.status, r.text()),
                    )?;
                } else {
                    check(
                        r.status == StatusCode::CREATED,
                        format!("{op:?}: {} {}", r.status, r.text()),
                    )?;
                    let id = r.json()["user_id"].as_str().unwrap().to_owned();
                    model
                        .rows
                        .get_mut(&tenant)
                        .unwrap()
                        .insert(id.clone(), (address, "n".into()));
                    model.ids.lock().unwrap().push((tenant, id));
                }
            }
            Op::List { tenant } => {
                let tenant = &model.tenants[*tenant];
                let r = app.get("/users?limit=100", &app.token(tenant)).await;
                check(r.status == StatusCode::OK, format!("{op:?}: {}", r.status))?;
                let seen: BTreeMap<String, (String, String)> = r.json()["users"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| {
                        let s = |k: &str| u[k].as_str().unwrap().to_owned();
                        (s("user_id"), (s("email"), s("name")))
                    })
                    .collect();
                check(
                    seen == model.rows[tenant],
                    format!("{op:?}: saw {seen:?}, expected {:?}", model.rows[tenant]),
                )?;
            }
            Op::Get { caller, pick }
            | Op::Rename { caller, pick, .. }
            | Op::Delete { caller, pick } => {
                let caller = model.tenants[*caller].clone();
                let (owner, id) = model
                    .owner_of(*pick)
                    .unwrap_or_else(|| (String::new(), uuid::Uuid::new_v4().to_string()));
                let visible = owner == caller && model.rows[&caller].contains_key(&id);
                if !owner.is_empty() && !model.rows.contains_key(&owner) {
                    model.foreign_attempts += 1;
                }
                let path = format!("/users/{id}");
                let token = app.token(&caller);
                match op {
                    Op::Get { .. } => {
                        let r = app.get(&path, &token).await;
                        if visible {
                            check(r.status == StatusCode::OK, format!("{op:?}: {}", r.status))?;
                            check(
                                r.json()["email"] == model.rows[&caller][&id].0,
                                format!("{op:?}: wrong row"),
                            )?;
                        } else {
                            check(
                                r.status == StatusCode::NOT_FOUND,
                                format!("{op:?} ({owner}'s): {}", r.status),
                            )?;
                        }
                    }
                    Op::Rename { name, .. } => {
                        let name = format!("name-{name}");
                        let r = app.patch(&path, &token, json!({"name": name})).await;
                        if visible {
                            check(r.status == StatusCode::OK, format!("{op:?}: {}", r.status))?;
                            model.rows.get_mut(&caller).unwrap().get_mut(&id).unwrap().1 = name;
                        } else {
                            check(
                                r.status == StatusCode::NOT_FOUND,
                                format!("{op:?} ({owner}'s): {}", r.status),
                            )?;
                        }
                    }
                    _ => {
                        let r = app.delete(&path, &token).await;
                        if visible {
                            check(
                                r.status == StatusCode::NO_CONTENT,
                                format!("{op:?}: {}", r.status),
                            )?;
                            model.rows.get_mut(&caller).unwrap().remove(&id);
                        } else {
                            check(
                                r.status == StatusCode::NOT_FOUND,
                                format!("{op:?} ({owner}'s): {}", r.status),
                            )?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The table, read as the superuser, must equal the model: nothing crossed
/// tenants, nothing was lost.
async fn table_matches(db: &TestDb, model: &Model) -> Result<(), TestCaseError> {
    let admin = db.admin().await;
    for tenant in &model.tenants {
        let rows: BTreeMap<String, (String, String)> = admin
            .query(
                "SELECT user_id::text, email, name FROM users WHERE tenant_id = $1",
                &[tenant],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        check(
            rows == model.rows[tenant],
            format!("table for {tenant}: {rows:?} vs {:?}", model.rows[tenant]),
        )?;
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn random_operations_over_one_connection_match_the_model() {
    let rt = runtime();
    let app = rt.block_on(TestApp::spawn());
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: SERIAL_CASES,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..30), |ops| {
            let prefix = format!("s{}", case.fetch_add(1, Ordering::SeqCst));
            rt.block_on(async {
                let mut model = Model::new(&prefix, Ids::default());
                model.register(&app.db).await;
                run(&app, &mut model, &ops).await?;
                table_matches(&app.db, &model).await
            })
        })
        .unwrap();
    assert_eq!(
        rt.block_on(app.app_activity()).len(),
        1,
        "all of it over one connection"
    );
}

#[test]
fn concurrent_environments_through_pgbouncer_match_their_models() {
    let rt = runtime();
    let db = Arc::new(rt.block_on(TestDb::create()));
    let bouncer = PgBouncer::start(&[(&db.app_user, "pw")], 2);
    let env = bouncer.app_env(&db.app_user, "pw", &db.name);
    let apps: Vec<Arc<TestApp>> = (0..WORKERS)
        .map(|_| Arc::new(rt.block_on(TestApp::from_env_shared(db.clone(), env.clone()))))
        .collect();
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CONCURRENT_CASES,
        ..Config::default()
    });
    let foreign_attempts = AtomicUsize::new(0);
    let sequences = proptest::collection::vec(proptest::collection::vec(op(), 1..20), WORKERS);
    runner
        .run(&sequences, |sequences| {
            let n = case.fetch_add(1, Ordering::SeqCst);
            let ids = Ids::default();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for (w, ops) in sequences.into_iter().enumerate() {
                    let app = apps[w].clone();
                    let ids = ids.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut model = Model::new(&format!("c{n}-w{w}"), ids);
                        model.register(&app.db).await;
                        run(&app, &mut model, &ops).await.map(|()| model)
                    }));
                }
                let mut models = Vec::new();
                for task in tasks {
                    models.push(task.await.unwrap()?);
                }
                // Only once every worker is done: a foreign rename or
                // delete that slipped through would show here.
                for model in &models {
                    foreign_attempts.fetch_add(model.foreign_attempts, Ordering::SeqCst);
                    table_matches(&db, model).await?;
                }
                Ok(())
            })
        })
        .unwrap();
    assert!(
        foreign_attempts.load(Ordering::SeqCst) > 0,
        "the workers never tried each other's ids"
    );
}
