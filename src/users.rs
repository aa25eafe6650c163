//! The users resource, the worked example of a resource module: input types
//! that can only hold valid values, the SQL, and the routes. Every
//! statement filters on `tenant_id = $1` itself (defense in depth: RLS
//! would hide other tenants' rows anyway; `resource::check_statement` holds
//! every resource to it), and runs only through [`Database::run`], which
//! binds `$1` from the verified token. Database errors (this email is
//! taken) are mapped by constraint in `problem.rs`, not here.

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

use crate::db::{Database, DbError, TenantQuery};
use crate::http::Caller;
use crate::problem::ApiError;
use crate::resource::{
    self, AppState, Cursor, InvalidInput, JsonObject, Operation, Page, PageRequest, Resource,
    invalid, not_found, path_id,
};
use crate::tenant::TenantContext;

const MAX_EMAIL_LEN: usize = 254;
const MAX_NAME_LEN: usize = 200;

/// The users resource: its routes and statements, for the router and the
/// checks every resource passes.
pub const RESOURCE: Resource = Resource {
    name: "users",
    table: "users",
    operations,
    statements: &ALL_STATEMENTS,
};

fn operations() -> Vec<Operation> {
    vec![
        (Method::GET, "/users", routing::get(list_users)),
        (Method::POST, "/users", routing::post(create_user)),
        (Method::GET, "/users/{user_id}", routing::get(get_user)),
        (
            Method::PATCH,
            "/users/{user_id}",
            routing::patch(update_user),
        ),
        (
            Method::DELETE,
            "/users/{user_id}",
            routing::delete(delete_user),
        ),
    ]
}

/// An email address, checked for shape (not deliverability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let bad = || invalid("email must be an address like name@example.com");
        if raw.is_empty() || raw.chars().count() > MAX_EMAIL_LEN {
            return Err(invalid(format!(
                "email must be 3 to {MAX_EMAIL_LEN} characters"
            )));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = raw.rsplit_once('@').ok_or_else(bad)?;
        // Domain: dot-separated host-name labels (IDNs in their ASCII form).
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if local.is_empty()
            || local.chars().count() > 64
            || local.contains('@')
            || !domain.contains('.')
            || domain.len() > 253
            || !domain.split('.').all(label_ok)
        {
            return Err(bad());
        }
        Ok(Self(raw.to_owned()))
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A display name: 1 to 200 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        resource::text("name", raw, MAX_NAME_LEN).map(Self)
    }
}

impl AsRef<str> for UserName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Body of `POST /users`.
#[derive(Debug)]
pub struct NewUser {
    pub email: Email,
    pub name: UserName,
}

/// Body of `PATCH /users/{id}`: at least one field.
#[derive(Debug)]
pub struct UserPatch {
    pub email: Option<Email>,
    pub name: Option<UserName>,
}

impl NewUser {
    pub fn from_json(body: Map<String, Value>) -> Result<Self, InvalidInput> {
        let (email, name) = fields(body)?;
        Ok(Self {
            email: email.ok_or_else(|| invalid("email is required"))?,
            name: name.ok_or_else(|| invalid("name is required"))?,
        })
    }
}

impl UserPatch {
    pub fn from_json(body: Map<String, Value>) -> Result<Self, InvalidInput> {
        let (email, name) = fields(body)?;
        if email.is_none() && name.is_none() {
            return Err(invalid("send at least one of email, name"));
        }
        Ok(Self { email, name })
    }
}

fn fields(body: Map<String, Value>) -> Result<(Option<Email>, Option<UserName>), InvalidInput> {
    let (mut email, mut name) = (None, None);
    for (key, value) in body {
        match (key.as_str(), value) {
            ("email", Value::String(s)) => email = Some(Email::parse(&s)?),
            ("name", Value::String(s)) => name = Some(UserName::parse(&s)?),
            ("email" | "name", _) => return Err(invalid(format!("{key} must be a string"))),
            ("tenant_id", _) => return Err(resource::tenant_in_body()),
            _ => {
                return Err(invalid(format!(
                    "unknown field {key:?} (allowed: email, name)"
                )));
            }
        }
    }
    Ok((email, name))
}

/// A user as the API returns it.
#[derive(Debug, Serialize)]
pub struct User {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

// The columns every statement returns, timestamps rendered as RFC 3339 UTC
// by the database, plus the raw created_at for the cursor.
macro_rules! user_columns {
    () => {
        "user_id, email, name, \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         created_at"
    };
}

pub const LIST_FIRST: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE tenant_id = $1 ",
    "ORDER BY created_at, user_id LIMIT $2"
);
pub const LIST_AFTER: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE tenant_id = $1 ",
    "AND (created_at, user_id) > ($3, $4) ORDER BY created_at, user_id LIMIT $2"
);
pub const GET: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE tenant_id = $1 AND user_id = $2"
);
pub const INSERT: &str = concat!(
    "INSERT INTO users (tenant_id, email, name) VALUES ($1, $2, $3) RETURNING ",
    user_columns!()
);
pub const UPDATE: &str = concat!(
    "UPDATE users SET email = COALESCE($3, email), name = COALESCE($4, name), updated_at = now() ",
    "WHERE tenant_id = $1 AND user_id = $2 RETURNING ",
    user_columns!()
);
pub const DELETE: &str =
    "DELETE FROM users WHERE tenant_id = $1 AND user_id = $2 RETURNING user_id";

/// Every statement this module runs, for tests that check their shape.
pub const ALL_STATEMENTS: [&str; 6] = [LIST_FIRST, LIST_AFTER, GET, INSERT, UPDATE, DELETE];

fn user(row: &Row) -> User {
    User {
        user_id: row.get(0),
        email: row.get(1),
        name: row.get(2),
        created_at: row.get(3),
        updated_at: row.get(4),
    }
}

pub async fn list(
    db: &Database,
    caller: &TenantContext,
    request: &PageRequest,
) -> Result<Page<User>, DbError> {
    let fetch = request.fetch();
    let query = match &request.after {
        None => TenantQuery::new(LIST_FIRST).bind(&fetch, Type::INT8),
        Some(c) => TenantQuery::new(LIST_AFTER)
            .bind(&fetch, Type::INT8)
            .bind(&c.created_at, Type::TIMESTAMPTZ)
            .bind(&c.id, Type::UUID),
    };
    let rows = db.run(caller, query.retry_safe()).await?;
    Ok(Page::from_rows("users", &rows, request, user, |row| {
        Cursor {
            created_at: row.get(5),
            id: row.get(0),
        }
    }))
}

pub async fn get(db: &Database, caller: &TenantContext, id: Uuid) -> Result<Option<User>, DbError> {
    let rows = db
        .run(
            caller,
            TenantQuery::new(GET).bind(&id, Type::UUID).retry_safe(),
        )
        .await?;
    Ok(rows.first().map(user))
}

pub async fn create(db: &Database, caller: &TenantContext, new: &NewUser) -> Result<User, DbError> {
    let (email, name) = (new.email.as_ref(), new.name.as_ref());
    let rows = db
        .run(
            caller,
            TenantQuery::new(INSERT)
                .bind(&email, Type::TEXT)
                .bind(&name, Type::TEXT),
        )
        .await?;
    rows.first()
        .map(user)
        .ok_or_else(|| DbError::Misconfigured("INSERT ... RETURNING returned no row".into()))
}

pub async fn update(
    db: &Database,
    caller: &TenantContext,
    id: Uuid,
    patch: &UserPatch,
) -> Result<Option<User>, DbError> {
    let email = patch.email.as_ref().map(AsRef::as_ref);
    let name = patch.name.as_ref().map(AsRef::as_ref);
    let rows = db
        .run(
            caller,
            TenantQuery::new(UPDATE)
                .bind(&id, Type::UUID)
                .bind(&email, Type::TEXT)
                .bind(&name, Type::TEXT),
        )
        .await?;
    Ok(rows.first().map(user))
}

/// Not retried after a lost connection, unlike the reads: the DELETE may
/// have committed, and a retry would then answer 404 for a delete that
/// happened. The caller gets 503 and can look.
pub async fn delete(db: &Database, caller: &TenantContext, id: Uuid) -> Result<bool, DbError> {
    let rows = db
        .run(caller, TenantQuery::new(DELETE).bind(&id, Type::UUID))
        .await?;
    Ok(!rows.is_empty())
}

// Routes: parse, call the functions above for the verified caller, answer.

async fn list_users(
    Caller(caller): Caller,
    State(app): State<AppState>,
    page: PageRequest,
) -> Result<Response, ApiError> {
    Ok(Json(list(&app.db, &caller, &page).await?).into_response())
}

async fn get_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id, "user_id")?;
    match get(&app.db, &caller, id).await? {
        Some(user) => Ok(Json(user).into_response()),
        None => Err(not_found("user")),
    }
}

async fn create_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let new = NewUser::from_json(body)?;
    let user = create(&app.db, &caller, &new).await?;
    let location = format!("/users/{}", user.user_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(user),
    )
        .into_response())
}

async fn update_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let id = path_id(id, "user_id")?;
    let patch = UserPatch::from_json(body)?;
    match update(&app.db, &caller, id, &patch).await? {
        Some(user) => Ok(Json(user).into_response()),
        None => Err(not_found("user")),
    }
}

async fn delete_user(
    Caller(caller): Caller,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id, "user_id")?;
    if delete(&app.db, &caller, id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found("user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.com",
            "Ünï@example.org",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "plain", "@b.co", "a@", "a@b", "a b@c.de", "a@b..c", "a@-b.c", "a@b.c\n", "a@@b.c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn bodies_refuse_tenant_and_unknown_fields() {
        let body = |v: Value| v.as_object().cloned().unwrap();
        let e = NewUser::from_json(body(
            serde_json::json!({"email":"a@b.co","name":"A","tenant_id":"x"}),
        ));
        assert!(e.unwrap_err().0.contains("tenant comes from your token"));
        assert!(
            NewUser::from_json(body(
                serde_json::json!({"email":"a@b.co","name":"A","admin":true})
            ))
            .is_err()
        );
        assert!(NewUser::from_json(body(serde_json::json!({"email":"a@b.co"}))).is_err());
        assert!(NewUser::from_json(body(serde_json::json!({"email":"a@b.co","name":7}))).is_err());
        assert!(UserPatch::from_json(body(serde_json::json!({}))).is_err());
        assert!(UserPatch::from_json(body(serde_json::json!({"name":"B"}))).is_ok());
    }
}
