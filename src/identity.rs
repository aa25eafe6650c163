//! The tenant users' identities in the Cognito user pool: who can sign in,
//! kept in step with the `users` rows by the API function (`POST` and
//! `DELETE /users`) and used by the control plane to onboard a tenant's
//! first admin and to offboard a tenant.
//!
//! An identity's username is its email, lower-cased (the pool is shared by
//! every tenant, so an email can sign in for one tenant only, and the
//! rows' emails are unique without regard to case); its `custom:tenant_id`
//! is the tenant of the verified caller, passed in as a [`TenantId`],
//! never read from a request body; an admin is also in
//! [`ADMIN_GROUP`]. Every call goes to the pool named by `USER_POOL_ID`
//! with the function's own credentials, through the same SDK configuration
//! as the secret ([`crate::secret::sdk_config`]); building the client makes
//! no call, so a cold start pays nothing for it. Without `USER_POOL_ID` the
//! API keeps no identities (local development).
//!
//! A failed call (the pool unreachable or refusing, after the SDK's own
//! retries) closes a back-off gate ([`crate::gate`], as for the database
//! credentials: 1 s doubling up to [`MAX_BACKOFF`], jittered): until it
//! reopens every call fails at once, without a request to the pool, so an
//! outage costs the pool a handful of calls, not one per write.
//!
//! Nothing here ever touches another tenant's identity: [`Identities::remove`]
//! reads the identity's tenant first and leaves one of another tenant
//! alone, and a taken username is reported as [`IdentityError::Exists`]
//! whoever holds it.

use aws_sdk_cognitoidentityprovider::Client;
use aws_sdk_cognitoidentityprovider::error::SdkError;
use aws_sdk_cognitoidentityprovider::types::{AttributeType, DeliveryMediumType};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::clock::Clock;
use crate::config::ConfigError;
use crate::gate::CredentialGate;
use crate::secret::config::AwsConfig;
use crate::secret::describe_sdk_error;
use crate::tenant::{ADMIN_GROUP, TenantId};

/// Longest back-off after failed calls to the pool.
pub const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// The user attribute that holds an identity's tenant (the token's tenant
/// claim, `TENANT_CLAIM`, by default).
pub const TENANT_ATTRIBUTE: &str = "custom:tenant_id";

/// `USER_POOL_ID` and the AWS settings of the calls.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub pool_id: String,
    pub aws: AwsConfig,
}

impl IdentityConfig {
    /// `None` without `USER_POOL_ID`: the API then keeps no identities.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(pool_id) = get("USER_POOL_ID").map(|p| p.trim().to_owned()) else {
            return Ok(None);
        };
        // REGION_ID, as Cognito names pools (e.g. eu-west-1_AbC123).
        let valid = pool_id.len() <= 55
            && pool_id.split_once('_').is_some_and(|(region, id)| {
                !region.is_empty()
                    && !id.is_empty()
                    && region
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && id.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if !valid {
            return Err(ConfigError(format!(
                "USER_POOL_ID must be a user pool id like eu-west-1_AbC123, got {pool_id:?}"
            )));
        }
        Ok(Some(Self {
            pool_id,
            aws: AwsConfig::from_lookup(get),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The username (the email) is taken in the pool, by this tenant or
    /// another: which one is not said.
    #[error("an identity with this username already exists in the user pool")]
    Exists,
    /// The pool could not be reached or refused the call.
    #[error("user pool: {0}")]
    Unavailable(String),
    /// Not called: the back-off after failed calls lasts this much longer.
    #[error("user pool: backing off after failed calls for {0:?}")]
    BackingOff(std::time::Duration),
}

/// What [`Identities::remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The tenant's identity was disabled and deleted.
    Removed,
    /// No identity of this tenant has this username (none at all, or
    /// another tenant's, which was left alone).
    Absent,
}

/// The user pool's identities, for one pool.
pub struct Identities {
    client: Client,
    pool_id: String,
    gate: CredentialGate,
}

impl Identities {
    /// Builds the client from `sdk` (the function's SDK configuration);
    /// makes no call.
    pub fn new(sdk: &aws_types::SdkConfig, pool_id: impl Into<String>) -> Self {
        Self {
            client: Client::new(sdk),
            pool_id: pool_id.into(),
            gate: CredentialGate::new(MAX_BACKOFF, Clock::system()),
        }
    }

    /// As [`Identities::new`], with the SDK configuration built from
    /// `config.aws` as the secret's is.
    pub async fn from_config(config: &IdentityConfig) -> Self {
        let sdk = crate::secret::sdk_config(&config.aws).await;
        Self::new(&sdk, config.pool_id.clone())
    }

    pub fn pool_id(&self) -> &str {
        &self.pool_id
    }

    /// Whether the pool may be called now: an error while the back-off
    /// after a failure lasts. A caller about to change something that a
    /// pool call must then follow asks first, so that it changes nothing.
    pub fn ready(&self) -> Result<(), IdentityError> {
        self.gate.admit().map_err(IdentityError::BackingOff)
    }

    /// Runs `call` through the gate: refused at once while it is closed,
    /// closing it on a failure to reach the pool (a taken username is an
    /// answer, not a failure).
    async fn gated<T>(
        &self,
        call: impl Future<Output = Result<T, IdentityError>>,
    ) -> Result<T, IdentityError> {
        self.ready()?;
        let result = call.await;
        match &result {
            Err(IdentityError::Unavailable(_)) => {
                self.gate.failed();
            }
            _ => self.gate.succeeded(),
        }
        result
    }

    /// The username of the identity of `email`.
    pub fn username(email: &str) -> String {
        email.to_lowercase()
    }

    /// Creates the identity of `email` in `tenant` (Cognito sends the
    /// invitation with a temporary password), in [`ADMIN_GROUP`] when
    /// `admin`. All or nothing: when the group cannot be joined, the new
    /// identity is removed again.
    pub async fn create(
        &self,
        tenant: &TenantId,
        email: &str,
        admin: bool,
    ) -> Result<(), IdentityError> {
        self.gated(self.create_ungated(tenant, email, admin)).await
    }

    async fn create_ungated(
        &self,
        tenant: &TenantId,
        email: &str,
        admin: bool,
    ) -> Result<(), IdentityError> {
        let username = Self::username(email);
        let attribute = |name: &str, value: &str| {
            AttributeType::builder()
                .name(name)
                .value(value)
                .build()
                .map_err(|e| IdentityError::Unavailable(format!("attribute {name}: {e}")))
        };
        let created = self
            .client
            .admin_create_user()
            .user_pool_id(&self.pool_id)
            .username(&username)
            .user_attributes(attribute("email", email)?)
            .user_attributes(attribute(TENANT_ATTRIBUTE, tenant.as_str())?)
            .desired_delivery_mediums(DeliveryMediumType::Email)
            .send()
            .await;
        if let Err(error) = created {
            let exists = error
                .as_service_error()
                .is_some_and(|e| e.is_username_exists_exception());
            return Err(if exists {
                IdentityError::Exists
            } else {
                unavailable(&error)
            });
        }
        if admin
            && let Err(error) = self
                .client
                .admin_add_user_to_group()
                .user_pool_id(&self.pool_id)
                .username(&username)
                .group_name(ADMIN_GROUP)
                .send()
                .await
        {
            let error = unavailable(&error);
            if let Err(undo) = self.delete_username(&username).await {
                tracing::error!(
                    inconsistent = true,
                    %tenant,
                    username,
                    error = %undo,
                    "an admin identity without its group is left in the user pool"
                );
            }
            return Err(error);
        }
        tracing::info!(%tenant, admin, "identity created");
        Ok(())
    }

    /// Disables, then deletes, `tenant`'s identity of `email`. Idempotent:
    /// an identity already gone is [`Removal::Absent`]; so is one of
    /// another tenant, which is not touched.
    pub async fn remove(&self, tenant: &TenantId, email: &str) -> Result<Removal, IdentityError> {
        self.gated(self.remove_ungated(tenant, email)).await
    }

    async fn remove_ungated(
        &self,
        tenant: &TenantId,
        email: &str,
    ) -> Result<Removal, IdentityError> {
        let username = Self::username(email);
        let found = self
            .client
            .admin_get_user()
            .user_pool_id(&self.pool_id)
            .username(&username)
            .send()
            .await;
        let user = match found {
            Ok(user) => user,
            Err(error) if not_found(&error) => return Ok(Removal::Absent),
            Err(error) => return Err(unavailable(&error)),
        };
        let owner = user
            .user_attributes()
            .iter()
            .find(|a| a.name() == TENANT_ATTRIBUTE)
            .and_then(|a| a.value());
        if owner != Some(tenant.as_str()) {
            tracing::warn!(%tenant, "the identity of this email belongs to no or another tenant: left alone");
            return Ok(Removal::Absent);
        }
        self.delete_username(&username).await
    }

    /// Removes every identity of `tenant` (offboarding), returning how many
    /// were removed. ListUsers cannot filter on a custom attribute, so the
    /// whole pool is read page by page and filtered here.
    pub async fn remove_tenant(&self, tenant: &TenantId) -> Result<usize, IdentityError> {
        self.gated(self.remove_tenant_ungated(tenant)).await
    }

    async fn remove_tenant_ungated(&self, tenant: &TenantId) -> Result<usize, IdentityError> {
        let mut usernames = Vec::new();
        let mut page = None::<String>;
        loop {
            let output = self
                .client
                .list_users()
                .user_pool_id(&self.pool_id)
                // Cognito's largest page.
                .limit(60)
                .set_pagination_token(page.take())
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            for user in output.users() {
                let of_tenant = user
                    .attributes()
                    .iter()
                    .any(|a| a.name() == TENANT_ATTRIBUTE && a.value() == Some(tenant.as_str()));
                if of_tenant && let Some(username) = user.username() {
                    usernames.push(username.to_owned());
                }
            }
            match output.pagination_token() {
                Some(next) if !next.is_empty() => page = Some(next.to_owned()),
                _ => break,
            }
        }
        let mut removed = 0;
        for username in usernames {
            if self.delete_username(&username).await? == Removal::Removed {
                removed += 1;
            }
        }
        tracing::info!(%tenant, removed, "tenant's identities removed");
        Ok(removed)
    }

    /// AdminDisableUser (its sign-ins stop at once, even if the delete
    /// then fails), then AdminDeleteUser; an identity already gone is
    /// [`Removal::Absent`].
    async fn delete_username(&self, username: &str) -> Result<Removal, IdentityError> {
        let disabled = self
            .client
            .admin_disable_user()
            .user_pool_id(&self.pool_id)
            .username(username)
            .send()
            .await;
        match disabled {
            Ok(_) => {}
            Err(error) if not_found(&error) => return Ok(Removal::Absent),
            Err(error) => return Err(unavailable(&error)),
        }
        let deleted = self
            .client
            .admin_delete_user()
            .user_pool_id(&self.pool_id)
            .username(username)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(Removal::Removed),
            Err(error) if not_found(&error) => Ok(Removal::Absent),
            Err(error) => Err(unavailable(&error)),
        }
    }
}

/// Every operation used here has `UserNotFoundException`; the code is
/// matched through the error metadata, so one helper serves them all.
fn not_found<E>(error: &SdkError<E, HttpResponse>) -> bool
where
    E: aws_sdk_cognitoidentityprovider::error::ProvideErrorMetadata,
{
    error
        .as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "UserNotFoundException")
}

fn unavailable<E>(error: &SdkError<E, HttpResponse>) -> IdentityError
where
    E: aws_sdk_cognitoidentityprovider::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    IdentityError::Unavailable(describe_sdk_error("cognito-idp", error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pool: Option<&str>) -> Result<Option<IdentityConfig>, ConfigError> {
        IdentityConfig::from_lookup(&|key: &str| match key {
            "USER_POOL_ID" => pool.map(str::to_owned),
            _ => None,
        })
    }

    #[test]
    fn the_pool_id_is_optional_and_checked() {
        assert!(config(None).unwrap().is_none());
        let c = config(Some("eu-west-1_AbC123")).unwrap().unwrap();
        assert_eq!(c.pool_id, "eu-west-1_AbC123");
        assert!(config(Some("us-east-1_0123abcdef")).unwrap().is_some());
        for bad in ["pool", "_x", "eu-west-1_", "eu-west-1_a/b", "a_b c"] {
            assert!(config(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames_ignore_case() {
        assert_eq!(Identities::username("Ada@Acme.Test"), "ada@acme.test");
    }
}
