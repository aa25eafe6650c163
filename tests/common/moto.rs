//! A real moto server (STS, IAM, Secrets Manager) on a loopback port, with
//! IAM enforcement on: after the set-up actions below, every call is
//! authenticated and authorised against the policies, as in AWS.
//!
//! Set-up (done unauthenticated, exactly `SETUP_ACTIONS` calls):
//! - user `function` (stands for the Lambda execution role) may only
//!   `sts:AssumeRole` the role `secret-reader`;
//! - role `secret-reader` may only `secretsmanager:GetSecretValue`;
//! - user `admin` may do anything (the test's own hand, for secrets);
//! - user `function` may also make the user pool calls of
//!   `tenant_users::identity` (AdminCreateUser, AdminAddUserToGroup,
//!   AdminGetUser, AdminDisableUser, AdminDeleteUser, ListUsers). moto
//!   matches an IAM statement's resource only against `*`, so the policy
//!   names no pool here; template.yaml's names the one pool.
//!
//! moto also serves the Cognito user pools ([`Moto::user_pool`]): admin
//! calls, sign-in issuing RS256 ID tokens with `custom:` attributes and
//! `cognito:groups`, and each pool's JWKS.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};

pub const ACCOUNT: &str = "123456789012";
pub const READER_ROLE: &str = "arn:aws:iam::123456789012:role/secret-reader";
pub const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/some-other-role";
const SETUP_ACTIONS: usize = 9;
/// What the API function may ask of its user pool.
pub const POOL_ACTIONS: &[&str] = &[
    "cognito-idp:AdminCreateUser",
    "cognito-idp:AdminAddUserToGroup",
    "cognito-idp:AdminGetUser",
    "cognito-idp:AdminDisableUser",
    "cognito-idp:AdminDeleteUser",
    "cognito-idp:ListUsers",
];
/// Password of every identity the tests sign in with.
pub const PASSWORD: &str = "Corr3ct-Horse-Battery!";

pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    /// Keys of the `function` user: what the Lambda would run with.
    pub function_key: (String, String),
    admin_key: (String, String),
    child: Child,
    log: std::path::PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Self {
        // moto (werkzeug) logs one line per request on stderr: the count of
        // AWS calls the function made.
        let log = std::env::temp_dir().join(format!("moto-{port}-{}.log", std::process::id()));
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", SETUP_ACTIONS.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log file"))
            .spawn()
            .expect("moto_server on PATH (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_for_port(port, Duration::from_secs(20));
        let mut moto = Moto {
            endpoint,
            port,
            function_key: (String::new(), String::new()),
            admin_key: (String::new(), String::new()),
            child,
            log,
        };
        moto.set_up_iam().await;
        moto
    }

    async fn set_up_iam(&mut self) {
        let allow = |action: &str, resource: &str| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"{resource}"}}]}}"#
            )
        };
        let trust = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:user/function"}},"Action":"sts:AssumeRole"}}]}}"#
        );
        self.iam(&[("Action", "CreateUser"), ("UserName", "function")])
            .await;
        self.function_key = access_key(
            &self
                .iam(&[("Action", "CreateAccessKey"), ("UserName", "function")])
                .await,
        );
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "function"),
            ("PolicyName", "assume-secret-reader"),
            ("PolicyDocument", &allow("sts:AssumeRole", READER_ROLE)),
        ])
        .await;
        self.iam(&[
            ("Action", "CreateRole"),
            ("RoleName", "secret-reader"),
            ("AssumeRolePolicyDocument", &trust),
        ])
        .await;
        self.iam(&[
            ("Action", "PutRolePolicy"),
            ("RoleName", "secret-reader"),
            ("PolicyName", "read-db-secret"),
            (
                "PolicyDocument",
                &allow("secretsmanager:GetSecretValue", "*"),
            ),
        ])
        .await;
        let pool_actions = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":{},"Resource":"*"}}]}}"#,
            serde_json::to_string(POOL_ACTIONS).unwrap()
        );
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "function"),
            ("PolicyName", "user-pool"),
            ("PolicyDocument", &pool_actions),
        ])
        .await;
        self.iam(&[("Action", "CreateUser"), ("UserName", "admin")])
            .await;
        self.admin_key = access_key(
            &self
                .iam(&[("Action", "CreateAccessKey"), ("UserName", "admin")])
                .await,
        );
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "admin"),
            ("PolicyName", "all"),
            ("PolicyDocument", &allow("*", "*")),
        ])
        .await;
    }

    /// One IAM Query API call, during the unauthenticated set-up.
    async fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form: Vec<(&str, &str)> = vec![("Version", "2010-05-08")];
        form.extend_from_slice(params);
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        // reqwest runs on rustls with ring, installed by the service.
        tenant_users::token::install_tls_provider();
        let response = reqwest::Client::new()
            .post(&self.endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body)
            .send()
            .await
            .expect("moto answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "IAM {params:?}: {status} {text}");
        text
    }

    /// The environment the function would see: its own keys, moto's
    /// endpoint, and the secret to read through the reader role.
    pub fn function_env(&self, secret_arn: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.function_key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.function_key.1.clone()),
            ("DB_SECRET_ARN".into(), secret_arn.into()),
            ("DB_SECRET_ROLE_ARN".into(), READER_ROLE.into()),
            (
                "AWS_LAMBDA_FUNCTION_NAME".into(),
                "tenant-users-test".into(),
            ),
            // The tests sign HS256 tokens, which a Lambda takes only when told.
            ("JWT_ALLOW_HS256".into(), "true".into()),
        ]
    }

    /// The environment of a function whose own role reads the secrets (the
    /// migrate function: no role to assume): moto's endpoint and keys that
    /// may read any secret.
    pub fn own_role_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.admin_key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.admin_key.1.clone()),
        ]
    }

    /// A Secrets Manager client with the admin's keys (the test's hand).
    pub fn secrets(&self) -> aws_sdk_secretsmanager::Client {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(tenant_users::secret::http_client())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new(
                &self.admin_key.0,
                &self.admin_key.1,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }

    /// Creates a secret and returns its ARN.
    pub async fn create_secret(&self, name: &str, value: &str) -> String {
        self.secrets()
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("create secret")
            .arn()
            .unwrap()
            .to_owned()
    }

    pub async fn put_secret(&self, id: &str, value: &str) {
        self.secrets()
            .put_secret_value()
            .secret_id(id)
            .secret_string(value)
            .send()
            .await
            .expect("put secret value");
    }

    /// AWS API calls moto has answered so far (STS, Secrets Manager, IAM):
    /// every call is one `POST /` in its request log.
    pub fn calls(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            // werkzeug colours the request of a non-2xx answer when `click`
            // is installed (ANSI escapes around it), so match the bare line.
            .filter(|l| l.contains("POST / HTTP/1.1"))
            .count()
    }

    /// A Cognito client with the admin's keys (the test's hand).
    pub fn cognito(&self) -> aws_sdk_cognitoidentityprovider::Client {
        let config = aws_sdk_cognitoidentityprovider::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(tenant_users::secret::http_client())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new(
                &self.admin_key.0,
                &self.admin_key.1,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_cognitoidentityprovider::Client::from_conf(config)
    }

    /// A user pool as the stack makes one: a `custom:tenant_id` attribute
    /// users cannot change, the `tenant-admin` group, an app client that
    /// signs in with a password.
    pub async fn user_pool(&self) -> UserPool {
        use aws_sdk_cognitoidentityprovider::types::{
            AttributeDataType, ExplicitAuthFlowsType, SchemaAttributeType,
        };
        let cognito = self.cognito();
        let pool = cognito
            .create_user_pool()
            .pool_name(format!("tenant-users-{}", uuid::Uuid::new_v4().simple()))
            .schema(
                SchemaAttributeType::builder()
                    .name("tenant_id")
                    .attribute_data_type(AttributeDataType::String)
                    .mutable(false)
                    .build(),
            )
            .send()
            .await
            .expect("create user pool");
        let id = pool.user_pool().and_then(|p| p.id()).unwrap().to_owned();
        cognito
            .create_group()
            .user_pool_id(&id)
            .group_name(tenant_users::tenant::ADMIN_GROUP)
            .send()
            .await
            .expect("create group");
        let client = cognito
            .create_user_pool_client()
            .user_pool_id(&id)
            .client_name("api")
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowAdminUserPasswordAuth)
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
            .send()
            .await
            .expect("create app client");
        let client_id = client
            .user_pool_client()
            .and_then(|c| c.client_id())
            .unwrap()
            .to_owned();
        UserPool {
            issuer: format!("https://cognito-idp.us-east-1.amazonaws.com/{id}"),
            jwks_url: format!("{}/{id}/.well-known/jwks.json", self.endpoint),
            id,
            client_id,
            cognito,
        }
    }

    pub fn arn_of(name: &str) -> String {
        format!("arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{name}")
    }
}

/// A user pool in moto, and the test's admin hand on it.
pub struct UserPool {
    pub id: String,
    pub client_id: String,
    /// The `iss` of its tokens (moto writes AWS's, whatever its endpoint).
    pub issuer: String,
    pub jwks_url: String,
    pub cognito: aws_sdk_cognitoidentityprovider::Client,
}

impl UserPool {
    /// The token settings of an API that takes this pool's ID tokens.
    pub fn token_env(&self) -> Vec<(String, String)> {
        vec![
            ("JWT_JWKS_URL".into(), self.jwks_url.clone()),
            ("JWT_ISSUER".into(), self.issuer.clone()),
            ("JWT_AUDIENCE".into(), self.client_id.clone()),
            ("JWT_ALGORITHMS".into(), "RS256".into()),
            ("JWT_TOKEN_USE".into(), "id".into()),
        ]
    }

    /// An identity as onboarding makes one (an admin) or as a test needs
    /// one, with a permanent password.
    pub async fn add(&self, username: &str, tenant: &str, admin: bool) {
        use aws_sdk_cognitoidentityprovider::types::{AttributeType, MessageActionType};
        let attribute =
            |n: &str, v: &str| AttributeType::builder().name(n).value(v).build().unwrap();
        self.cognito
            .admin_create_user()
            .user_pool_id(&self.id)
            .username(username)
            .user_attributes(attribute("email", username))
            .user_attributes(attribute("custom:tenant_id", tenant))
            .message_action(MessageActionType::Suppress)
            .send()
            .await
            .expect("admin create user");
        if admin {
            self.cognito
                .admin_add_user_to_group()
                .user_pool_id(&self.id)
                .username(username)
                .group_name(tenant_users::tenant::ADMIN_GROUP)
                .send()
                .await
                .expect("add to group");
        }
        self.set_password(username).await;
    }

    /// Gives `username` the test password, permanent (as the user would
    /// after the invitation's temporary one).
    pub async fn set_password(&self, username: &str) {
        self.cognito
            .admin_set_user_password()
            .user_pool_id(&self.id)
            .username(username)
            .password(PASSWORD)
            .permanent(true)
            .send()
            .await
            .expect("set password");
    }

    /// Signs in with the test password: the ID token, or the pool's
    /// refusal (its error code).
    pub async fn sign_in(&self, username: &str) -> Result<String, String> {
        use aws_sdk_cognitoidentityprovider::error::ProvideErrorMetadata;
        use aws_sdk_cognitoidentityprovider::types::AuthFlowType;
        let result = self
            .cognito
            .admin_initiate_auth()
            .user_pool_id(&self.id)
            .client_id(&self.client_id)
            .auth_flow(AuthFlowType::AdminUserPasswordAuth)
            .auth_parameters("USERNAME", username)
            .auth_parameters("PASSWORD", PASSWORD)
            .send()
            .await
            .map_err(|e| e.code().unwrap_or("no error code").to_owned())?;
        Ok(result
            .authentication_result()
            .and_then(|r| r.id_token())
            .expect("an ID token")
            .to_owned())
    }

    /// The identity of `username`: its attributes and whether it is
    /// enabled, or `None` when the pool has none.
    pub async fn identity(&self, username: &str) -> Option<Identity> {
        match self
            .cognito
            .admin_get_user()
            .user_pool_id(&self.id)
            .username(username)
            .send()
            .await
        {
            Ok(user) => {
                let groups = self
                    .cognito
                    .admin_list_groups_for_user()
                    .user_pool_id(&self.id)
                    .username(username)
                    .send()
                    .await
                    .expect("list groups")
                    .groups()
                    .iter()
                    .filter_map(|g| g.group_name().map(str::to_owned))
                    .collect();
                Some(Identity {
                    attributes: user
                        .user_attributes()
                        .iter()
                        .map(|a| {
                            (
                                a.name().to_owned(),
                                a.value().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect(),
                    enabled: user.enabled(),
                    groups,
                })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_user_not_found_exception()) =>
            {
                None
            }
            Err(e) => panic!("admin get user: {e:?}"),
        }
    }

    /// Every username in the pool, sorted.
    pub async fn usernames(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .cognito
            .list_users()
            .user_pool_id(&self.id)
            .send()
            .await
            .expect("list users")
            .users()
            .iter()
            .filter_map(|u| u.username().map(str::to_owned))
            .collect();
        names.sort();
        names
    }
}

#[derive(Debug)]
pub struct Identity {
    pub attributes: std::collections::BTreeMap<String, String>,
    pub enabled: bool,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn tenant(&self) -> Option<&str> {
        self.attributes.get("custom:tenant_id").map(String::as_str)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn wait_for_port(port: u16, limit: Duration) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < limit,
            "nothing listened on port {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn access_key(xml: &str) -> (String, String) {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = xml.find(&open).unwrap_or_else(|| panic!("{name} in {xml}")) + open.len();
        let end = xml[start..].find('<').unwrap() + start;
        xml[start..end].to_owned()
    };
    (field("AccessKeyId"), field("SecretAccessKey"))
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
