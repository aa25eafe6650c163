//! The control plane's routes. Every one takes an [`Operator`]: the IAM
//! principal that API Gateway verified (SigV4, `AWS_IAM` authorization on
//! every route of the control API). A request without one (no credentials,
//! a tenant user's bearer token, anything not through that API) is refused
//! before anything else runs.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use lambda_http::request::RequestContext;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_postgres::Client;

use tenant_users::db::{DbError, error_chain};
use tenant_users::identity::IdentityError;
use tenant_users::problem::ApiError;
use tenant_users::resource::{InvalidInput, JsonObject, MAX_BODY_BYTES, invalid, text};
use tenant_users::tenant::TenantId;
use tenant_users::users::Email;

use crate::Control;
use crate::lifecycle::{self, PurgeError, READ_WRITE, SNAPSHOT, in_tenant};
use crate::store::SIGNING_ALGORITHM;

type State_ = State<Arc<Control>>;

/// The control plane's routes, (method, path) as `template.yaml` declares
/// them on the control API.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/tenants"),
    ("GET", "/tenants/{tenant_id}"),
    ("PATCH", "/tenants/{tenant_id}"),
    ("DELETE", "/tenants/{tenant_id}"),
    ("POST", "/tenants/{tenant_id}/export"),
];

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/tenants", post(onboard))
        .route(
            "/tenants/{tenant_id}",
            get(read).patch(update).delete(offboard),
        )
        .route("/tenants/{tenant_id}/export", post(export))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(control)
}

/// Who acts: the IAM principal API Gateway verified, and the request's id
/// (both go into the operator trail).
#[derive(Debug, Clone)]
pub struct Operator {
    pub principal: String,
    pub request_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let context = match parts.extensions.get::<RequestContext>() {
            Some(RequestContext::ApiGatewayV2(context)) => Some(context),
            _ => None,
        };
        let principal = context
            .and_then(|c| c.authorizer.as_ref())
            .and_then(|a| a.iam.as_ref())
            .and_then(|iam| iam.user_arn.clone().or_else(|| iam.caller_id.clone()))
            .filter(|p| !p.trim().is_empty());
        match (principal, context) {
            (Some(principal), Some(context)) => Ok(Operator {
                principal,
                request_id: context
                    .request_id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            }),
            // No credentials at all: 401. Anything else (a tenant user's
            // bearer token, an unsigned call that reached us some other
            // way): 403, whatever the token says.
            _ if !parts.headers.contains_key(header::AUTHORIZATION) => Err(ApiError::other(
                StatusCode::UNAUTHORIZED,
                "operator-only",
                "the control plane takes only IAM-signed (SigV4) requests through its API",
            )),
            _ => Err(ApiError::other(
                StatusCode::FORBIDDEN,
                "operator-only",
                "the control plane takes only IAM-signed (SigV4) requests through its API; tenant tokens are never accepted",
            )),
        }
    }
}

/// A tenant as the registry holds it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: String,
    pub name: Option<String>,
    pub status: String,
    pub tier: String,
    pub created_at: String,
    pub updated_at: String,
}

const SELECT_TENANT: &str = "SELECT tenant_id, name, status, tier, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
     FROM public.tenants WHERE tenant_id = $1";

async fn load(client: &Client, tenant: &TenantId) -> Result<Option<Tenant>, DbError> {
    let row = client
        .query_opt(SELECT_TENANT, &[&tenant.as_str()])
        .await
        .map_err(DbError::classify)?;
    Ok(row.map(|r| Tenant {
        tenant_id: r.get(0),
        name: r.get(1),
        status: r.get(2),
        tier: r.get(3),
        created_at: r.get(4),
        updated_at: r.get(5),
    }))
}

/// One row of the operator trail, in the caller's transaction.
async fn record(
    client: &Client,
    operator: &Operator,
    action: &str,
    tenant: &TenantId,
    outcome: &str,
    detail: Value,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO control.operator_trail (operator, action, tenant, request_id, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &operator.principal,
                &action,
                &tenant.as_str(),
                &operator.request_id,
                &outcome,
                &detail,
            ],
        )
        .await
        .map(drop)
        .map_err(DbError::classify)
}

/// A trail row in a transaction of its own: an action that failed (and
/// changed nothing) or was compensated. Best effort: a trail that cannot be
/// written is logged, and the answer is the failure's.
async fn record_alone(
    control: &Control,
    operator: &Operator,
    action: &str,
    tenant: &TenantId,
    outcome: &str,
    detail: Value,
) {
    let result = async {
        let client = &*control.db.connection().await?;
        in_tenant(client, tenant, READ_WRITE, async {
            record(client, operator, action, tenant, outcome, detail).await
        })
        .await
    }
    .await;
    if let Err(error) = result {
        tracing::error!(
            error = %error_chain(&error),
            action,
            %tenant,
            outcome,
            "the operator trail could not record an action"
        );
    }
}

/// The tenant a path names; one that is not even a valid id names no
/// tenant (404, as an unknown one).
fn tenant_path(path: Result<Path<String>, PathRejection>) -> Result<TenantId, ApiError> {
    let Path(raw) = path.map_err(|_| no_such_tenant())?;
    TenantId::parse(&raw).map_err(|_| no_such_tenant())
}

/// 422 unless `tier` is one of the registry's tiers (the foreign key would
/// refuse it too, with a problem meant for tenant users).
async fn known_tier(client: &Client, tier: &str) -> Result<Result<(), InvalidInput>, DbError> {
    let known: Vec<String> = client
        .query("SELECT tier FROM public.tenant_tiers ORDER BY tier", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(if known.iter().any(|t| t == tier) {
        Ok(())
    } else {
        Err(invalid(format!(
            "unknown tier {tier}; the registry's tiers: {}",
            known.join(", ")
        )))
    })
}

fn no_such_tenant() -> ApiError {
    ApiError::not_found("no such tenant")
}

fn offboarded() -> ApiError {
    ApiError::other(
        StatusCode::CONFLICT,
        "offboarded",
        "the tenant is offboarded; its registry row is a tombstone and cannot change",
    )
}

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, InvalidInput> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn only(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), InvalidInput> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(invalid(format!(
            "unknown field {k}; allowed: {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn tier(raw: &str) -> Result<String, InvalidInput> {
    if raw.is_empty()
        || raw.len() > 32
        || !raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("tier must be 1 to 32 of a-z, 0-9, '-'"));
    }
    Ok(raw.to_owned())
}

/// `POST /tenants`: the registry row and the first admin's `users` row in
/// one transaction (with the trail's row). Idempotent by tenant id: the
/// same request again answers 200 with the tenant; a different one for an
/// existing id is 409.
async fn onboard(
    State(control): State_,
    operator: Operator,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    only(&body, &["tenant_id", "name", "tier", "admin_email"])?;
    let tenant = TenantId::parse(
        field(&body, "tenant_id")?.ok_or_else(|| invalid("tenant_id is required"))?,
    )
    .map_err(|e| invalid(format!("tenant_id: {e}")))?;
    let name = field(&body, "name")?
        .map(|n| text("name", n, 200))
        .transpose()?;
    let tier = tier(field(&body, "tier")?.ok_or_else(|| invalid("tier is required"))?)?;
    let admin = Email::parse(
        field(&body, "admin_email")?.ok_or_else(|| invalid("admin_email is required"))?,
    )?;
    let admin_email: String = admin.as_ref().to_owned();
    let client = &*control.db.connection().await.map_err(db_problem)?;
    let (tenant, operator) = (&tenant, &operator);
    let (name, tier, admin_email) = (&name, &tier, &admin_email);
    in_tenant(client, tenant, SNAPSHOT, known_tier(client, tier))
        .await
        .map_err(db_problem)??;
    let (created, tenant_row) = in_tenant(client, tenant, READ_WRITE, async move {
        if let Some(existing) = load(client, tenant).await? {
            let has_admin = client
                .query_opt(
                    "SELECT 1 FROM public.users WHERE tenant_id = $1 AND lower(email) = lower($2)",
                    &[&tenant.as_str(), admin_email],
                )
                .await
                .map_err(DbError::classify)?
                .is_some();
            let same = existing.tier == *tier
                && existing.name == *name
                && existing.status != "offboarded"
                && has_admin;
            return Ok((false, Some(existing).filter(|_| same)));
        }
        client
            .execute(
                "INSERT INTO public.tenants (tenant_id, name, tier) VALUES ($1, $2, $3)",
                &[&tenant.as_str(), name, tier],
            )
            .await
            .map_err(DbError::classify)?;
        client
            .execute(
                "INSERT INTO public.users (tenant_id, email, name) VALUES ($1, $2, $3)",
                &[&tenant.as_str(), admin_email, &"Tenant admin"],
            )
            .await
            .map_err(DbError::classify)?;
        record(
            client,
            operator,
            "onboard",
            tenant,
            "succeeded",
            json!({"tier": *tier, "admin_email": *admin_email}),
        )
        .await?;
        Ok((true, load(client, tenant).await?))
    })
    .await
    .map_err(db_problem)?;
    let Some(tenant_row) = tenant_row else {
        return Err(ApiError::other(
            StatusCode::CONFLICT,
            "tenant-exists",
            "a tenant with this id exists with another name, tier or first admin (or is offboarded)",
        ));
    };
    // The first admin's identity, after the rows: a failure undoes the
    // rows (a new tenant), so there is never half a tenant; a repeated
    // request finds the rows and makes the identity if it is missing.
    if let Some(identities) = &control.identities {
        let made = identities.create(tenant, admin_email, true).await;
        let failure = match made {
            Ok(()) => None,
            // Already there: a repeated request (the rows were ours), or
            // an address the pool holds for someone else (a new tenant).
            Err(IdentityError::Exists) if !created => None,
            Err(error) => Some(error),
        };
        if let Some(error) = failure {
            if created {
                let undone = in_tenant(client, tenant, READ_WRITE, async {
                    for sql in [
                        "DELETE FROM public.users WHERE tenant_id = $1",
                        "DELETE FROM public.tenant_rate WHERE tenant_id = $1",
                        "DELETE FROM public.tenants WHERE tenant_id = $1",
                    ] {
                        client.execute(sql, &[&tenant.as_str()]).await?;
                    }
                    record(
                        client,
                        operator,
                        "onboard",
                        tenant,
                        "compensated",
                        json!({"reason": error.to_string()}),
                    )
                    .await
                })
                .await;
                if let Err(undo) = undone {
                    // A repeated request converges: it finds the rows and
                    // makes the identity.
                    tracing::error!(
                        inconsistent = true,
                        %tenant,
                        error = %error_chain(&undo),
                        "onboarding: the first admin's identity failed and the tenant's rows could not be removed; repeat the request"
                    );
                }
            }
            return Err(match error {
                IdentityError::Exists => ApiError::other(
                    StatusCode::CONFLICT,
                    "duplicate",
                    "admin_email already signs in to the user pool (for this or another tenant); nothing was kept",
                ),
                other => {
                    tracing::error!(error = %other, %tenant, "onboarding: the user pool refused the first admin");
                    ApiError::unavailable(
                        "identity-unavailable",
                        "the user pool is unavailable; nothing was kept; repeat the request",
                        5,
                    )
                }
            });
        }
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(tenant_row)).into_response())
}

/// `GET /tenants/{tenant_id}`.
async fn read(
    State(control): State_,
    _operator: Operator,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    let client = &*control.db.connection().await.map_err(db_problem)?;
    let row = in_tenant(client, &tenant, SNAPSHOT, load(client, &tenant))
        .await
        .map_err(db_problem)?
        .ok_or_else(no_such_tenant)?;
    Ok(axum::Json(row).into_response())
}

/// `PATCH /tenants/{tenant_id}`: suspend or resume (`status`), re-tier,
/// rename. Takes effect on the tenant's next request: the API checks the
/// registry inside each request's one round trip.
async fn update(
    State(control): State_,
    operator: Operator,
    path: Result<Path<String>, PathRejection>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    only(&body, &["status", "tier", "name"])?;
    let status = match field(&body, "status")? {
        None => None,
        Some(s @ ("active" | "suspended")) => Some(s.to_owned()),
        Some(_) => return Err(invalid("status must be active or suspended").into()),
    };
    let tier = field(&body, "tier")?.map(tier).transpose()?;
    let name = field(&body, "name")?
        .map(|n| text("name", n, 200))
        .transpose()?;
    if status.is_none() && tier.is_none() && name.is_none() {
        return Err(invalid("send at least one of status, tier, name").into());
    }
    let action = match status.as_deref() {
        Some("suspended") => "suspend",
        Some(_) => "resume",
        None => "update",
    };
    let client = &*control.db.connection().await.map_err(db_problem)?;
    let (tenant, operator) = (&tenant, &operator);
    let (status, tier, name) = (&status, &tier, &name);
    if let Some(tier) = tier {
        in_tenant(client, tenant, SNAPSHOT, known_tier(client, tier))
            .await
            .map_err(db_problem)??;
    }
    let row = in_tenant(client, tenant, READ_WRITE, async move {
        let Some(before) = load(client, tenant).await? else {
            return Ok(None);
        };
        if before.status == "offboarded" {
            return Ok(Some(Err(before)));
        }
        client
            .execute(
                "UPDATE public.tenants SET status = coalesce($2, status), \
                         tier = coalesce($3, tier), name = coalesce($4, name), updated_at = now() \
                         WHERE tenant_id = $1",
                &[&tenant.as_str(), status, tier, name],
            )
            .await
            .map_err(DbError::classify)?;
        record(
            client,
            operator,
            action,
            tenant,
            "succeeded",
            json!({
                "from": {"status": before.status, "tier": before.tier},
                "to": {"status": status, "tier": tier, "name": name},
            }),
        )
        .await?;
        Ok(load(client, tenant).await?.map(Ok))
    })
    .await
    .map_err(db_problem)?;
    match row {
        None => Err(no_such_tenant()),
        Some(Err(_)) => Err(offboarded()),
        Some(Ok(row)) => Ok(axum::Json(row).into_response()),
    }
}

/// One file of an export, as the manifest lists it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    pub table: String,
    pub key: String,
    pub rows: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub export_id: String,
    pub tenant_id: String,
    /// When the snapshot was taken (the transaction's start).
    pub snapshot_at: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Exported {
    pub export_id: String,
    pub bucket: String,
    pub manifest_key: String,
    pub manifest: Manifest,
}

/// `POST /tenants/{tenant_id}/export`.
async fn export(
    State(control): State_,
    operator: Operator,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    let exported = export_tenant(&control, &operator, &tenant).await?;
    Ok(axum::Json(exported).into_response())
}

/// Every tenant table's rows of `tenant` from one snapshot, written to the
/// bucket as JSON Lines per table plus the manifest, and recorded.
async fn export_tenant(
    control: &Control,
    operator: &Operator,
    tenant: &TenantId,
) -> Result<Exported, ApiError> {
    let bucket = control.bucket.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "export-unconfigured",
            "exports need EXPORT_BUCKET and EXPORT_KEY_ID",
            60,
        )
    })?;
    let connection = control.db.connection().await.map_err(db_problem)?;
    let client = &*connection;
    let snapshot = in_tenant(client, tenant, SNAPSHOT, async move {
        let Some(row) = load(client, tenant).await? else {
            return Ok(None);
        };
        let at: String = client
            .query_one(
                "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[],
            )
            .await
            .map_err(DbError::classify)?
            .get(0);
        let files = lifecycle::export_rows(client, tenant)
            .await
            .map_err(DbError::classify)?;
        Ok(Some((row, at, files)))
    })
    .await
    .map_err(db_problem)?;
    drop(connection);
    let Some((row, snapshot_at, files)) = snapshot else {
        return Err(no_such_tenant());
    };
    if row.status == "offboarded" {
        return Err(offboarded());
    }
    let export_id = uuid::Uuid::new_v4().to_string();
    let prefix = format!("exports/{tenant}/{export_id}");
    let mut listed = Vec::with_capacity(files.len());
    for file in files {
        let key = format!("{prefix}/{}.jsonl", file.table);
        bucket
            .put(&key, file.body, "application/x-ndjson")
            .await
            .map_err(store_problem)?;
        listed.push(ManifestFile {
            table: file.table,
            key,
            rows: file.rows,
            sha256: file.sha256,
        });
    }
    let manifest = Manifest {
        export_id,
        tenant_id: tenant.to_string(),
        snapshot_at,
        files: listed,
    };
    let manifest_key = format!("{prefix}/manifest.json");
    let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bucket
        .put(&manifest_key, body, "application/json")
        .await
        .map_err(store_problem)?;
    let rows: Map<String, Value> = manifest
        .files
        .iter()
        .map(|f| (f.table.clone(), json!(f.rows)))
        .collect();
    let detail = json!({"manifest_key": manifest_key, "rows": rows});
    let client = &*control.db.connection().await.map_err(db_problem)?;
    in_tenant(client, tenant, READ_WRITE, async move {
        record(client, operator, "export", tenant, "succeeded", detail).await
    })
    .await
    .map_err(db_problem)?;
    Ok(Exported {
        export_id: manifest.export_id.clone(),
        bucket: bucket.name.clone(),
        manifest_key,
        manifest,
    })
}

/// One table of a receipt.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiptTable {
    pub table: String,
    pub rows_deleted: u64,
    pub rows_left: u64,
}

/// What an offboarding did, as signed.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    pub receipt_id: String,
    pub tenant_id: String,
    pub operator: String,
    pub request_id: String,
    pub offboarded_at: String,
    pub tables: Vec<ReceiptTable>,
    pub identities_deleted: u64,
    pub export_manifest_key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OffboardQuery {
    export: Option<String>,
}

/// `DELETE /tenants/{tenant_id}[?export=true]`: optionally export first;
/// delete the tenant's rows from every tenant table in one transaction,
/// count again and require zero everywhere, leave the registry row as the
/// tombstone, sign the receipt with the stack's KMS key and record it in
/// the trail, all before that transaction commits; then store the receipt
/// (its exact signed bytes, and the signature) in the bucket.
async fn offboard(
    State(control): State_,
    operator: Operator,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<OffboardQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let with_export = match query.export.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("export must be true or false")),
    };
    let (Some(bucket), Some(signer)) = (control.bucket.as_ref(), control.signer.as_ref()) else {
        return Err(ApiError::unavailable(
            "offboard-unconfigured",
            "offboarding needs EXPORT_BUCKET, EXPORT_KEY_ID and RECEIPT_KEY_ID: no receipt, no offboarding",
            60,
        ));
    };
    let current = {
        let client = &*control.db.connection().await.map_err(db_problem)?;
        in_tenant(client, &tenant, SNAPSHOT, load(client, &tenant))
            .await
            .map_err(db_problem)?
            .ok_or_else(no_such_tenant)?
    };
    if current.status == "offboarded" {
        return Err(offboarded());
    }
    let export_manifest_key = if with_export {
        Some(
            export_tenant(&control, &operator, &tenant)
                .await?
                .manifest_key,
        )
    } else {
        None
    };
    let receipt_id = uuid::Uuid::new_v4().to_string();
    let connection = control.db.connection().await.map_err(db_problem)?;
    let client = &*connection;
    let signed = in_tenant(
        client,
        &tenant,
        READ_WRITE,
        purge_and_sign(
            client,
            &control,
            signer,
            &operator,
            &tenant,
            Receipt {
                receipt_id: receipt_id.clone(),
                tenant_id: tenant.to_string(),
                operator: operator.principal.clone(),
                request_id: operator.request_id.clone(),
                offboarded_at: String::new(),
                tables: Vec::new(),
                identities_deleted: 0,
                export_manifest_key,
            },
        ),
    )
    .await;
    drop(connection);
    if let Err(error) = &signed {
        // Nothing was deleted (the transaction rolled back); the attempt
        // is recorded on its own.
        record_alone(
            &control,
            &operator,
            "offboard",
            &tenant,
            "failed",
            json!({"reason": error.to_string()}),
        )
        .await;
    }
    let (bytes, signature) = match signed {
        Ok(signed) => signed,
        Err(Offboard::Db(e)) => return Err(db_problem(e)),
        Err(Offboard::Purge(PurgeError::Left { table, left })) => {
            return Err(ApiError::other(
                StatusCode::CONFLICT,
                "rows-left",
                format!(
                    "{table} still held {left} row(s) of the tenant after the deletes; no row was deleted"
                ),
            ));
        }
        Err(Offboard::Purge(PurgeError::Db(e))) => return Err(db_problem(DbError::classify(e))),
        Err(Offboard::Identities(reason)) => {
            tracing::error!(%reason, "offboarding: the tenant's identities could not all be removed; no row was deleted");
            return Err(ApiError::unavailable(
                "identity-unavailable",
                "the user pool is unavailable; no row was deleted (identities it already removed stay removed); retry",
                5,
            ));
        }
        Err(Offboard::Sign(reason)) => {
            tracing::error!(%reason, "offboarding: the receipt could not be signed; no row was deleted");
            return Err(ApiError::unavailable(
                "signing-unavailable",
                "the receipt could not be signed; no row was deleted (the tenant's identities, if any, are already removed from the pool); retry",
                5,
            ));
        }
    };
    let receipt_key = format!("receipts/{tenant}/{receipt_id}.json");
    let signature_key = format!("receipts/{tenant}/{receipt_id}.sig");
    let mut stored = false;
    for attempt in 0..3 {
        let put = async {
            bucket
                .put(&receipt_key, bytes.clone(), "application/json")
                .await?;
            bucket
                .put(
                    &signature_key,
                    signature.clone(),
                    "application/octet-stream",
                )
                .await
        };
        match put.await {
            Ok(()) => {
                stored = true;
                break;
            }
            Err(e) => {
                tracing::error!(attempt, error = %e, %receipt_key, "offboarding: storing the receipt failed (it is in the operator trail)")
            }
        }
    }
    let receipt: Box<serde_json::value::RawValue> =
        serde_json::value::RawValue::from_string(String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|_| ApiError::unavailable("receipt", "receipt encoding failed", 1))?;
    Ok(axum::Json(json!({
        "receipt": receipt,
        "signature": base64::engine::general_purpose::STANDARD.encode(&signature),
        "signing_key_id": signer.key_id,
        "signing_algorithm": SIGNING_ALGORITHM,
        "receipt_key": receipt_key,
        "signature_key": signature_key,
        "stored": stored,
    }))
    .into_response())
}

/// The offboarding transaction's work, after its tenant scope: the rows
/// deleted and counted again ([`lifecycle::purge_rows`]), the tenant's
/// identities removed from the pool, the `receipt` completed and signed,
/// and the trail's row written; the caller commits. Any failure rolls the
/// rows back; identities the pool already removed stay removed (a repeated
/// DELETE finds none and completes).
async fn purge_and_sign(
    client: &Client,
    control: &Control,
    signer: &crate::store::Signer,
    operator: &Operator,
    tenant: &TenantId,
    mut receipt: Receipt,
) -> Result<(Vec<u8>, Vec<u8>), Offboard> {
    let purged = lifecycle::purge_rows(client, tenant)
        .await
        .map_err(Offboard::Purge)?;
    receipt.identities_deleted = match &control.identities {
        Some(identities) => identities
            .remove_tenant(tenant)
            .await
            .map_err(|e| Offboard::Identities(e.to_string()))? as u64,
        None => 0,
    };
    receipt.offboarded_at = client
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await?
        .get(0);
    receipt.tables = purged
        .into_iter()
        .map(|p| ReceiptTable {
            table: p.table,
            rows_deleted: p.deleted,
            rows_left: 0,
        })
        .collect();
    let bytes = serde_json::to_vec(&receipt).unwrap_or_default();
    let signature = signer
        .sign(&bytes)
        .await
        .map_err(|e| Offboard::Sign(e.to_string()))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&signature);
    record(
        client,
        operator,
        "offboard",
        tenant,
        "succeeded",
        json!({"receipt": receipt, "signature": encoded, "signing_key_id": signer.key_id}),
    )
    .await?;
    Ok((bytes, signature))
}

#[derive(Debug, thiserror::Error)]
enum Offboard {
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Purge(PurgeError),
    #[error("{0}")]
    Sign(String),
    #[error("user pool: {0}")]
    Identities(String),
}

impl From<tokio_postgres::Error> for Offboard {
    fn from(error: tokio_postgres::Error) -> Self {
        Offboard::Db(DbError::classify(error))
    }
}

fn db_problem(error: DbError) -> ApiError {
    tracing::warn!(error = %error_chain(&error), "control plane: database error");
    ApiError::from(error)
}

fn store_problem(error: crate::store::StoreError) -> ApiError {
    tracing::error!(%error, "control plane: the bucket refused a write");
    ApiError::unavailable(
        "storage-unavailable",
        "the export bucket is unavailable; retry",
        5,
    )
}
