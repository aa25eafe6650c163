//! The users resource: input types that can only hold valid values, and the
//! SQL. Every statement filters on `tenant_id = $1` itself (defense in depth:
//! RLS would hide other tenants' rows anyway), and runs only through
//! [`Database::run`], which binds `$1` from the verified token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::db::{Database, DbError, TenantQuery};
use crate::tenant::TenantContext;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 100;
const MAX_EMAIL_LEN: usize = 254;
const MAX_NAME_LEN: usize = 200;

/// The caller sent something we cannot accept; the text says what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidInput(pub String);

fn invalid(msg: impl Into<String>) -> InvalidInput {
    InvalidInput(msg.into())
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
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_LEN {
            return Err(invalid(format!(
                "name must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid("name must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
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
            ("tenant_id", _) => {
                return Err(invalid(
                    "tenant_id must not be sent: the tenant comes from your token",
                ));
            }
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

#[derive(Debug, Serialize)]
pub struct Page {
    pub users: Vec<User>,
    pub next_cursor: Option<String>,
}

/// Position after the last user of a page: (created_at, user_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    created_at: SystemTime,
    user_id: Uuid,
}

impl Cursor {
    /// `<created_at in µs since 1970>-<user_id as 32 hex digits>`: opaque
    /// to clients, but of a shape the API spec can state exactly.
    pub fn encode(&self) -> String {
        let micros = self
            .created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        format!("{micros}-{}", self.user_id.simple())
    }

    pub fn decode(raw: &str) -> Result<Self, InvalidInput> {
        let bad = || invalid("cursor is invalid: pass back next_cursor unchanged");
        let (micros, id) = raw.split_once('-').ok_or_else(bad)?;
        if !(1..=17).contains(&micros.len())
            || !micros.bytes().all(|b| b.is_ascii_digit())
            || id.len() != 32
            || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let micros: u64 = micros.parse().map_err(|_| bad())?;
        let created_at = UNIX_EPOCH
            .checked_add(Duration::from_micros(micros))
            .ok_or_else(bad)?;
        let user_id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Self {
            created_at,
            user_id,
        })
    }
}

pub fn parse_limit(raw: Option<&str>) -> Result<i64, InvalidInput> {
    match raw {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "limit must be a whole number from 1 to {MAX_PAGE_SIZE}"
                ))
            }),
    }
}

pub fn parse_user_id(raw: &str) -> Result<Uuid, InvalidInput> {
    Uuid::try_parse(raw).map_err(|_| invalid("user_id must be a UUID"))
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
    limit: i64,
    after: Option<Cursor>,
) -> Result<Page, DbError> {
    // One extra row tells us whether another page follows.
    let fetch = limit + 1;
    let query = match &after {
        None => TenantQuery::new(LIST_FIRST).bind(&fetch, Type::INT8),
        Some(c) => TenantQuery::new(LIST_AFTER)
            .bind(&fetch, Type::INT8)
            .bind(&c.created_at, Type::TIMESTAMPTZ)
            .bind(&c.user_id, Type::UUID),
    };
    let rows = db.run(caller, query.retry_safe()).await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next_cursor = match page.last() {
        Some(last) if more => Some(
            Cursor {
                created_at: last.get(5),
                user_id: last.get(0),
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(Page {
        users: page.iter().map(user).collect(),
        next_cursor,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_statement_filters_on_the_tenant_itself() {
        for sql in ALL_STATEMENTS {
            assert!(
                sql.contains("tenant_id = $1") || sql.contains("VALUES ($1,"),
                "{sql}"
            );
        }
    }

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
    fn names_are_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  Ada ").unwrap().as_ref(), "Ada");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"x".repeat(201)).is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
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

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None), Ok(50));
        assert_eq!(parse_limit(Some("100")), Ok(100));
        for bad in ["0", "101", "-1", "ten", "1e2", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn cursors_round_trip(micros in 0u64..99_999_999_999_999_999, id in any::<u128>()) {
            let c = Cursor { created_at: UNIX_EPOCH + Duration::from_micros(micros), user_id: Uuid::from_u128(id) };
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn junk_cursors_are_refused_not_panicking(raw in any::<String>()) {
            let _ = Cursor::decode(&raw);
        }
    }
}
