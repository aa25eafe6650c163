//! A test-only resource, written as a user of the kit writes one: this
//! module (types, SQL, routes) and `projects.sql`, nothing else. The
//! router takes it as a value ([`tenant_users::http::router_for`]); a
//! resource of the product is listed in `http::RESOURCES` instead.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use tenant_users::db::TenantQuery;
use tenant_users::http::Caller;
use tenant_users::problem::ApiError;
use tenant_users::resource::{
    self, AppState, Cursor, InvalidInput, JsonObject, Operation, Page, PageRequest, Resource,
    invalid, not_found, path_id,
};

pub const MIGRATION: &str = include_str!("projects.sql");

pub const RESOURCE: Resource = Resource {
    name: "projects",
    table: "projects",
    operations,
    statements: &[LIST_FIRST, LIST_AFTER, GET, INSERT, UPDATE, DELETE],
};

fn operations() -> Vec<Operation> {
    vec![
        (Method::GET, "/projects", routing::get(list)),
        (Method::POST, "/projects", routing::post(create)),
        (Method::GET, "/projects/{project_id}", routing::get(get)),
        (
            Method::PATCH,
            "/projects/{project_id}",
            routing::patch(update),
        ),
        (
            Method::DELETE,
            "/projects/{project_id}",
            routing::delete(delete),
        ),
    ]
}

#[derive(Debug, Serialize)]
pub struct Project {
    project_id: Uuid,
    name: String,
    owner_user_id: Option<Uuid>,
    created_at: String,
}

fn project(row: &Row) -> Project {
    Project {
        project_id: row.get(0),
        name: row.get(1),
        owner_user_id: row.get(2),
        created_at: row.get(3),
    }
}

/// The fields a body may send; `owner_user_id: null` clears the owner.
#[derive(Default)]
struct Fields {
    name: Option<String>,
    owner: Option<Option<Uuid>>,
}

fn fields(body: Map<String, Value>) -> Result<Fields, InvalidInput> {
    let mut f = Fields::default();
    for (key, value) in body {
        match (key.as_str(), value) {
            ("name", Value::String(s)) => f.name = Some(resource::text("name", &s, 200)?),
            ("owner_user_id", Value::String(s)) => {
                f.owner = Some(Some(resource::parse_id(&s, "owner_user_id")?))
            }
            ("owner_user_id", Value::Null) => f.owner = Some(None),
            ("name" | "owner_user_id", _) => {
                return Err(invalid(format!("{key} must be a string")));
            }
            ("tenant_id", _) => return Err(resource::tenant_in_body()),
            _ => {
                return Err(invalid(format!(
                    "unknown field {key:?} (allowed: name, owner_user_id)"
                )));
            }
        }
    }
    Ok(f)
}

macro_rules! columns {
    () => {
        "project_id, name, owner_user_id, \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), created_at"
    };
}

const LIST_FIRST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM projects WHERE tenant_id = $1 ORDER BY created_at, project_id LIMIT $2"
);
const LIST_AFTER: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM projects WHERE tenant_id = $1 AND (created_at, project_id) > ($3, $4) ",
    "ORDER BY created_at, project_id LIMIT $2"
);
const GET: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM projects WHERE tenant_id = $1 AND project_id = $2"
);
const INSERT: &str = concat!(
    "INSERT INTO projects (tenant_id, name, owner_user_id) VALUES ($1, $2, $3) RETURNING ",
    columns!()
);
const UPDATE: &str = concat!(
    "UPDATE projects SET name = COALESCE($3, name), ",
    "owner_user_id = CASE WHEN $4 THEN $5 ELSE owner_user_id END ",
    "WHERE tenant_id = $1 AND project_id = $2 RETURNING ",
    columns!()
);
const DELETE: &str =
    "DELETE FROM projects WHERE tenant_id = $1 AND project_id = $2 RETURNING project_id";

async fn list(
    Caller(caller): Caller,
    State(app): State<AppState>,
    page: PageRequest,
) -> Result<Response, ApiError> {
    let fetch = page.fetch();
    let query = match &page.after {
        None => TenantQuery::new(LIST_FIRST).bind(&fetch, Type::INT8),
        Some(c) => TenantQuery::new(LIST_AFTER)
            .bind(&fetch, Type::INT8)
            .bind(&c.created_at, Type::TIMESTAMPTZ)
            .bind(&c.id, Type::UUID),
    };
    let rows = app.db.run(&caller, query.retry_safe()).await?;
    let page = Page::from_rows("projects", &rows, &page, project, |row| Cursor {
        created_at: row.get(4),
        id: row.get(0),
    });
    Ok(Json(page).into_response())
}

async fn get(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id, "project_id")?;
    let query = TenantQuery::new(GET).bind(&id, Type::UUID).retry_safe();
    match app.db.run(&caller, query).await?.first() {
        Some(row) => Ok(Json(project(row)).into_response()),
        None => Err(not_found("project")),
    }
}

async fn create(
    Caller(caller): Caller,
    State(app): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let f = fields(body)?;
    let name = f.name.ok_or_else(|| invalid("name is required"))?;
    let owner = f.owner.flatten();
    let query = TenantQuery::new(INSERT)
        .bind(&name, Type::TEXT)
        .bind(&owner, Type::UUID);
    let rows = app.db.run(&caller, query).await?;
    let Some(created) = rows.first().map(project) else {
        return Err(not_found("project"));
    };
    let location = format!("/projects/{}", created.project_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

async fn update(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let id = path_id(id, "project_id")?;
    let f = fields(body)?;
    if f.name.is_none() && f.owner.is_none() {
        return Err(invalid("send at least one of name, owner_user_id").into());
    }
    let (set_owner, owner) = (f.owner.is_some(), f.owner.flatten());
    let query = TenantQuery::new(UPDATE)
        .bind(&id, Type::UUID)
        .bind(&f.name, Type::TEXT)
        .bind(&set_owner, Type::BOOL)
        .bind(&owner, Type::UUID);
    match app.db.run(&caller, query).await?.first() {
        Some(row) => Ok(Json(project(row)).into_response()),
        None => Err(not_found("project")),
    }
}

async fn delete(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id, "project_id")?;
    let query = TenantQuery::new(DELETE).bind(&id, Type::UUID);
    if app.db.run(&caller, query).await?.is_empty() {
        Err(not_found("project"))
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}
