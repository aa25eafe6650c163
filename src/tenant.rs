//! Who is calling: the tenant id, the subject and the groups (roles inside
//! the tenant), as proven by a verified token.
//!
//! A [`TenantId`] exists only after parsing, and a [`TenantContext`] only
//! comes out of [`crate::token::TokenManager::verify`]: no other code can make
//! one, so a tenant can never come from a path, query string or body. A
//! [`TenantAdmin`] exists only for a context whose token put the caller in
//! [`ADMIN_GROUP`]: functions that write users take one, so a member's
//! request cannot reach them.

use std::fmt;

/// Longest tenant id we accept (and the database's CHECK constraint agrees).
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A tenant id: 1 to 64 characters of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_ID_LEN} characters")]
    TooLong,
    #[error("tenant id may only contain A-Z, a-z, 0-9, '.', '_' and '-'")]
    InvalidCharacter,
}

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, TenantIdError> {
        if raw.is_empty() {
            return Err(TenantIdError::Empty);
        }
        if raw.len() > MAX_TENANT_ID_LEN {
            return Err(TenantIdError::TooLong);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(TenantIdError::InvalidCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// The group (Cognito's `cognito:groups` claim) of a tenant's admins: they
/// may create, change and delete the tenant's users; members may read.
pub const ADMIN_GROUP: &str = "tenant-admin";

/// The verified caller. Fields are private and there is no public
/// constructor outside this crate's token module.
#[derive(Clone, Debug)]
pub struct TenantContext {
    tenant: TenantId,
    subject: Option<String>,
    /// The token's `cognito:groups`, empty when it had none.
    groups: Vec<String>,
}

impl TenantContext {
    pub(crate) fn new(tenant: TenantId, subject: Option<String>, groups: Vec<String>) -> Self {
        Self {
            tenant,
            subject,
            groups,
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// True iff the token put the caller in [`ADMIN_GROUP`].
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == ADMIN_GROUP)
    }

    /// The caller as a tenant admin, or `None` for a member.
    pub fn admin(&self) -> Option<TenantAdmin> {
        self.is_admin().then(|| TenantAdmin(self.clone()))
    }
}

/// A verified caller in [`ADMIN_GROUP`]: made only by
/// [`TenantContext::admin`].
#[derive(Clone, Debug)]
pub struct TenantAdmin(TenantContext);

impl TenantAdmin {
    pub fn context(&self) -> &TenantContext {
        &self.0
    }

    pub fn tenant(&self) -> &TenantId {
        self.0.tenant()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_ids() {
        for ok in ["acme", "tenant-1", "a.b_c-D9", &"x".repeat(64)] {
            assert_eq!(TenantId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_empty_long_and_odd_ids() {
        assert_eq!(TenantId::parse(""), Err(TenantIdError::Empty));
        assert_eq!(
            TenantId::parse(&"x".repeat(65)),
            Err(TenantIdError::TooLong)
        );
        for bad in [
            "x'; DROP TABLE users; --",
            "a b",
            "a\0b",
            "ténant",
            "a/b",
            " a",
        ] {
            assert_eq!(
                TenantId::parse(bad),
                Err(TenantIdError::InvalidCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_the_admin_group_makes_an_admin() {
        let tenant = TenantId::parse("acme").unwrap();
        let with = |groups: &[&str]| {
            TenantContext::new(
                tenant.clone(),
                None,
                groups.iter().map(|g| g.to_string()).collect(),
            )
        };
        assert!(with(&[ADMIN_GROUP]).is_admin());
        assert!(with(&["readers", ADMIN_GROUP]).admin().is_some());
        for member in [&[][..], &["readers"], &["Tenant-Admin"], &["tenant-admin "]] {
            assert!(!with(member).is_admin(), "{member:?}");
            assert!(with(member).admin().is_none(), "{member:?}");
        }
    }

    proptest! {
        #[test]
        fn valid_ids_round_trip(raw in "[A-Za-z0-9._-]{1,64}") {
            let id = TenantId::parse(&raw).unwrap();
            prop_assert_eq!(id.as_str(), raw.as_str());
        }

        #[test]
        fn anything_parsed_matches_the_alphabet(raw in any::<String>()) {
            if let Ok(id) = TenantId::parse(&raw) {
                prop_assert!(!id.as_str().is_empty() && id.as_str().len() <= MAX_TENANT_ID_LEN);
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
        }
    }
}
