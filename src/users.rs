//! The users resource, the worked example of a resource module: input types
//! that can only hold valid values, the SQL, and the routes. Every
//! statement filters on `tenant_id = $1` itself (defense in depth: RLS
//! would hide other tenants' rows anyway; `resource::check_statement` holds
//! every resource to it), and runs only through [`Database::run`], which
//! binds `$1` from the verified token. Database errors (this email is
//! taken) are mapped by constraint in `problem.rs`, not here.
//!
//! Writes need a tenant admin ([`TenantAdmin`], from the [`Admin`]
//! extractor: a member gets 403 before anything runs). With a user pool
//! configured ([`crate::identity`]), `POST` and `DELETE` keep the user's
//! identity in step with its row: the identity is created first and
//! removed again if the row cannot be written; the row is deleted first
//! (one round trip, returning what the identity's removal needs) and
//! written back, as it was, if the identity cannot be removed.

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
use crate::http::{Admin, Caller};
use crate::identity::{Identities, IdentityError};
use crate::problem::ApiError;
use crate::resource::{
    self, AppState, Cursor, InvalidInput, JsonObject, Operation, Page, PageRequest, Resource,
    invalid, not_found, path_id,
};
use crate::tenant::{TenantAdmin, TenantContext};

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
/// Returns the whole row, so that it can be written back as it was when
/// the user's identity cannot be removed.
pub const DELETE: &str = "DELETE FROM users WHERE tenant_id = $1 AND user_id = $2 \
     RETURNING user_id, email, name, created_at, updated_at";
/// Writes a deleted row back, as it was (same id and timestamps).
pub const RESTORE: &str = "INSERT INTO users (tenant_id, user_id, email, name, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// Every statement this module runs, for tests that check their shape.
pub const ALL_STATEMENTS: [&str; 7] =
    [LIST_FIRST, LIST_AFTER, GET, INSERT, UPDATE, DELETE, RESTORE];

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

pub async fn create(db: &Database, admin: &TenantAdmin, new: &NewUser) -> Result<User, DbError> {
    let (email, name) = (new.email.as_ref(), new.name.as_ref());
    let rows = db
        .run(
            admin.context(),
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
    admin: &TenantAdmin,
    id: Uuid,
    patch: &UserPatch,
) -> Result<Option<User>, DbError> {
    let email = patch.email.as_ref().map(AsRef::as_ref);
    let name = patch.name.as_ref().map(AsRef::as_ref);
    let rows = db
        .run(
            admin.context(),
            TenantQuery::new(UPDATE)
                .bind(&id, Type::UUID)
                .bind(&email, Type::TEXT)
                .bind(&name, Type::TEXT),
        )
        .await?;
    Ok(rows.first().map(user))
}

/// A deleted row, as it was.
#[derive(Debug)]
pub struct Deleted {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: std::time::SystemTime,
    pub updated_at: std::time::SystemTime,
}

/// Not retried after a lost connection, unlike the reads: the DELETE may
/// have committed, and a retry would then answer 404 for a delete that
/// happened. The caller gets 503 and can look.
pub async fn delete(
    db: &Database,
    admin: &TenantAdmin,
    id: Uuid,
) -> Result<Option<Deleted>, DbError> {
    let rows = db
        .run(
            admin.context(),
            TenantQuery::new(DELETE).bind(&id, Type::UUID),
        )
        .await?;
    Ok(rows.first().map(|row| Deleted {
        user_id: row.get(0),
        email: row.get(1),
        name: row.get(2),
        created_at: row.get(3),
        updated_at: row.get(4),
    }))
}

/// Writes `deleted` back as it was (not retried, as [`delete`]).
pub async fn restore(db: &Database, admin: &TenantAdmin, deleted: &Deleted) -> Result<(), DbError> {
    db.run(
        admin.context(),
        TenantQuery::new(RESTORE)
            .bind(&deleted.user_id, Type::UUID)
            .bind(&deleted.email, Type::TEXT)
            .bind(&deleted.name, Type::TEXT)
            .bind(&deleted.created_at, Type::TIMESTAMPTZ)
            .bind(&deleted.updated_at, Type::TIMESTAMPTZ),
    )
    .await?;
    Ok(())
}

/// Creates the user's identity, then its row; when the row cannot be
/// written (taken, refused, the database away), the identity is removed
/// again, so neither is left without the other. A row that did commit
/// although the answer was lost keeps no identity: a user who cannot sign
/// in, never an identity without a row.
pub async fn create_with_identity(
    db: &Database,
    identities: &Identities,
    admin: &TenantAdmin,
    new: &NewUser,
) -> Result<User, ApiError> {
    let tenant = admin.tenant();
    identities
        .create(tenant, new.email.as_ref(), false)
        .await
        .map_err(identity_error)?;
    match create(db, admin, new).await {
        Ok(user) => Ok(user),
        Err(error) => {
            if let Err(undo) = identities.remove(tenant, new.email.as_ref()).await {
                // Left as it is, this identity could sign in to a tenant
                // that has no row for it: say so as loudly as we can.
                tracing::error!(
                    inconsistent = true,
                    %tenant,
                    email = new.email.as_ref(),
                    error = %undo,
                    "INCONSISTENT: identity created, its row not written, and the identity could not be removed"
                );
            }
            Err(error.into())
        }
    }
}

/// Deletes the row, then removes its identity; when the identity cannot
/// be removed (after the SDK's retries), the row is written back as it
/// was and the caller gets 503, so a retry of the same DELETE converges.
/// Only if that write fails too is a row missing while its (disabled, if
/// that step got through) identity remains: logged as an inconsistency
/// with what an operator needs to finish the removal.
pub async fn delete_with_identity(
    db: &Database,
    identities: &Identities,
    admin: &TenantAdmin,
    id: Uuid,
) -> Result<bool, ApiError> {
    // While the pool is backing off, change nothing: the identity could
    // not be removed anyway.
    identities.ready().map_err(identity_error)?;
    let Some(deleted) = delete(db, admin, id).await? else {
        return Ok(false);
    };
    let tenant = admin.tenant();
    let Err(error) = identities.remove(tenant, &deleted.email).await else {
        return Ok(true);
    };
    tracing::warn!(%tenant, user_id = %deleted.user_id, %error, "identity not removed: writing the row back");
    match restore(db, admin, &deleted).await {
        Ok(()) => Err(ApiError::identity_unavailable()),
        Err(restore_error) => {
            tracing::error!(
                inconsistent = true,
                %tenant,
                user_id = %deleted.user_id,
                email = deleted.email,
                error = %error,
                restore_error = %crate::db::error_chain(&restore_error),
                "INCONSISTENT: row deleted, its identity could not be removed, and the row could not be written back"
            );
            Err(ApiError::identity_unavailable())
        }
    }
}

fn identity_error(error: IdentityError) -> ApiError {
    match error {
        IdentityError::Exists => ApiError::email_taken(),
        IdentityError::Unavailable(cause) => {
            tracing::error!(error = %cause, "user pool unavailable");
            ApiError::identity_unavailable()
        }
        IdentityError::BackingOff(wait) => {
            tracing::warn!(?wait, "user pool not called: backing off after failures");
            ApiError::identity_unavailable_for(wait)
        }
    }
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
    Admin(admin): Admin,
    State(app): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let new = NewUser::from_json(body)?;
    let user = match &app.identities {
        Some(identities) => create_with_identity(&app.db, identities, &admin, &new).await?,
        None => create(&app.db, &admin, &new).await?,
    };
    let location = format!("/users/{}", user.user_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(user),
    )
        .into_response())
}

async fn update_user(
    Admin(admin): Admin,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let id = path_id(id, "user_id")?;
    let patch = UserPatch::from_json(body)?;
    // The email is the identity's username, which the pool cannot rename.
    if app.identities.is_some() && patch.email.is_some() {
        return Err(ApiError::email_immutable());
    }
    match update(&app.db, &admin, id, &patch).await? {
        Some(user) => Ok(Json(user).into_response()),
        None => Err(not_found("user")),
    }
}

async fn delete_user(
    Admin(admin): Admin,
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id, "user_id")?;
    let deleted = match &app.identities {
        Some(identities) => delete_with_identity(&app.db, identities, &admin, id).await?,
        None => delete(&app.db, &admin, id).await?.is_some(),
    };
    if deleted {
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
