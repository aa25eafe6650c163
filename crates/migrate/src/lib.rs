//! Schema migrations and the application role, applied with an admin
//! connection (`DATABASE_ADMIN_URL`, or the custom resource's master
//! secret), never by the serving function.
//!
//! The SQL lives in `migrations/` and is embedded at build time (refinery).
//! The application role is managed here rather than in a migration because
//! its name and password are deployment settings. The admin is assumed to
//! be shaped like the RDS master user: not a superuser, but CREATEROLE,
//! CREATEDB and owner of the database. PostgreSQL refuses such an admin any
//! `ALTER ROLE` that names SUPERUSER, BYPASSRLS or REPLICATION, so an
//! existing role is changed only where it must be (LOGIN, password) and
//! everything else about it is verified instead; a role that would weaken
//! isolation is refused, not repaired. Every run is idempotent: first
//! deploy, redeploy and password change take the same path.
//!
//! The password travels only as a SCRAM-SHA-256 verifier computed here, so
//! neither the server log (`log_statement = all`) nor `pg_stat_statements`
//! ever holds it.

use tokio_postgres::Client;

use tenant_users::audit::Profile;
use tenant_users::db::config::{DbConfig, SslMode, TlsConfig};
use tenant_users::db::error_chain;
use tenant_users::tenant::TenantId;

pub mod admin_conn;
pub mod custom_resource;

mod embedded {
    // The workspace's `migrations/`, relative to this crate.
    refinery::embed_migrations!("../../migrations");
}

/// Registers `tenant` in the tier `tier` (or moves a registered one to it),
/// as the admin: inside that tenant's scope, so it works for the table
/// owner under FORCEd row level security, not only for a superuser. The
/// tenant keeps its status; a new one starts active with a full bucket.
pub async fn register_tenant(
    client: &Client,
    tenant: &str,
    tier: &str,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let result = async {
        client
            .execute(
                "SELECT pg_catalog.set_config('app.current_tenant', $1, true)",
                &[&tenant],
            )
            .await?;
        client
            .execute(
                "INSERT INTO public.tenants (tenant_id, tier) VALUES ($1, $2) \
                 ON CONFLICT (tenant_id) DO UPDATE SET tier = EXCLUDED.tier, updated_at = now()",
                &[&tenant, &tier],
            )
            .await
    }
    .await;
    match result {
        Ok(_) => client.batch_execute("COMMIT").await,
        Err(error) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}

/// The tiers `migrations/` create (`tenant_tiers`), the only ones a
/// [`Registration`] can name; a test holds this list to the table, so a
/// migration that adds a tier fails it until the tier is added here.
pub const TIERS: &[&str] = &["basic", "standard", "premium", "unlimited"];
/// The tier of a tenant listed without one (the table's default too).
pub const DEFAULT_TIER: &str = "standard";

/// A tenant to register and the tier to put it in, both checked: a
/// registration that exists names a valid tenant id and a known tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    tenant: TenantId,
    tier: &'static str,
}

impl Registration {
    /// `tier` must be one of [`TIERS`]; the error says what is wrong, in
    /// words fit for a CloudFormation reason.
    pub fn parse(tenant: &str, tier: &str) -> Result<Self, String> {
        let tenant = TenantId::parse(tenant).map_err(|e| e.to_string())?;
        let Some(tier) = TIERS.iter().copied().find(|known| *known == tier) else {
            return Err(format!(
                "unknown tier {tier:?} (tiers: {})",
                TIERS.join(", ")
            ));
        };
        Ok(Registration { tenant, tier })
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn tier(&self) -> &'static str {
        self.tier
    }
}

/// Registers each of `tenants` in its tier, in order ([`register_tenant`]:
/// a new one starts active, a registered one keeps its status and only
/// moves tier). No other tenant is read or changed. The tiers are first
/// looked up in the database, so a tier it lacks registers none of them.
pub async fn register_tenants(
    client: &Client,
    tenants: &[Registration],
) -> Result<(), MigrateError> {
    if tenants.is_empty() {
        return Ok(());
    }
    let wanted: Vec<&str> = tenants.iter().map(Registration::tier).collect();
    let known: Vec<String> = client
        .query(
            "SELECT tier FROM public.tenant_tiers WHERE tier = ANY ($1)",
            &[&wanted],
        )
        .await
        .map_err(|e| MigrateError::Register(format!("reading tenant_tiers: {}", error_chain(&e))))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(missing) = tenants.iter().find(|r| !known.iter().any(|k| k == r.tier)) {
        return Err(MigrateError::Register(format!(
            "tier {:?} of tenant {} is not in the database's tenant_tiers; no tenant was registered",
            missing.tier, missing.tenant
        )));
    }
    for (done, registration) in tenants.iter().enumerate() {
        register_tenant(client, registration.tenant.as_str(), registration.tier)
            .await
            .map_err(|e| {
                MigrateError::Register(format!(
                    "registering tenant {}: {} (the {done} listed before it are registered)",
                    registration.tenant,
                    error_chain(&e)
                ))
            })?;
        tracing::info!(tenant = %registration.tenant, tier = registration.tier, "tenant registered");
    }
    Ok(())
}

/// The service's own tenant tables that the application role may use less
/// than fully: its tenant's registry row, read-only, and its bucket's level.
/// Every other tenant table gets SELECT, INSERT, UPDATE and DELETE.
const NARROWER_GRANTS: &[(&str, &str)] = &[
    ("tenants", "SELECT"),
    ("tenant_rate", "SELECT, UPDATE (tokens, refilled_at)"),
];

/// Marks a table without `tenant_id` as readable by every tenant: its
/// comment starts with this (migrations/V4).
pub const SHARED_MARK: &str = "shared:";

/// The application role's privileges on schema `public`'s tables, from the
/// catalog rather than a list: everything is revoked, then each tenant
/// table (a `tenant_id` column: what the self-audit judges) gets
/// SELECT, INSERT, UPDATE, DELETE (or its [`NARROWER_GRANTS`]) and USAGE on
/// the sequences its columns own, and each table marked [`SHARED_MARK`]
/// gets SELECT. A table added by a migration is covered without code; one
/// without `tenant_id` and unmarked gets nothing.
async fn table_grants(
    client: &Client,
    role: &str,
    narrower: &[(&str, &str)],
) -> Result<Vec<String>, MigrateError> {
    let rows = client
        .query(
            "SELECT c.relname::text,
                    EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                             AND a.attname = 'tenant_id' AND NOT a.attisdropped),
                    coalesce(starts_with(obj_description(c.oid, 'pg_class'), $1), false),
                    ARRAY(SELECT s.relname::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
                           WHERE d.refobjid = c.oid AND d.classid = 'pg_class'::regclass
                             AND s.relkind = 'S' AND d.deptype IN ('a', 'i') ORDER BY 1)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              ORDER BY 1",
            &[&SHARED_MARK],
        )
        .await
        .map_err(MigrateError::Role)?;
    let mut grants = vec![
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}"),
    ];
    for row in rows {
        let (table, tenant, shared, sequences): (String, bool, bool, Vec<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let privileges = if tenant {
            narrower
                .iter()
                .find(|(t, _)| *t == table)
                .map_or("SELECT, INSERT, UPDATE, DELETE", |(_, p)| p)
        } else if shared {
            "SELECT"
        } else {
            continue;
        };
        grants.push(format!(
            "GRANT {privileges} ON TABLE public.{} TO {role}",
            quote_ident(&table)
        ));
        if tenant && privileges.contains("INSERT") {
            for sequence in sequences {
                grants.push(format!(
                    "GRANT USAGE ON SEQUENCE public.{} TO {role}",
                    quote_ident(&sequence)
                ));
            }
        }
    }
    Ok(grants)
}
pub const DEFAULT_APP_USER: &str = "tenant_app";
/// What AWS's multi-user rotation appends to the user name for the
/// alternate user it creates (`GRANT <user> TO <user>_clone`).
pub const CLONE_SUFFIX: &str = "_clone";

/// Roles whose membership hands out more than the app role may have; the
/// same list the self-audit (`audit.sql`) checks, plus any role with one of
/// the attributes the audit forbids.
const PRIVILEGED_ROLES: &[&str] = &[
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_database_owner",
    "rds_superuser",
    "azure_pg_admin",
    "cloudsqlsuperuser",
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The TLS settings cannot work (e.g. an unreadable CA file).
    #[error("cannot connect as the admin: {0}")]
    Tls(String),
    #[error("cannot connect as the admin: {}", error_chain(.0))]
    Connect(#[source] crate::admin_conn::ConnectError),
    #[error("migration failed: {}", describe_refinery(.0))]
    Migration(#[source] refinery::Error),
    /// A statement on the application role, its grants or schema `public`
    /// failed.
    #[error("managing the application role failed: {}", error_chain(.0))]
    Role(#[source] tokio_postgres::Error),
    /// The deployment is not fit to serve, and migrate may not fix it.
    #[error("{0}")]
    Refused(String),
    /// A listed tenant could not be registered.
    #[error("{0}")]
    Register(String),
    /// The application role could not log in to be audited.
    #[error("cannot connect as the application role to audit it: {0}")]
    AppLogin(String),
    /// The self-audit, run as the application role after migrating, found
    /// what would make the service refuse every request.
    #[error(
        "the isolation self-audit fails as the application role, so the service would answer 503: {0}"
    )]
    Audit(String),
}

impl MigrateError {
    /// The step that failed, in the words the custom resource reports.
    pub fn step(&self) -> &'static str {
        match self {
            MigrateError::Tls(_) | MigrateError::Connect(_) => "connect",
            MigrateError::Migration(_) => "migrate",
            MigrateError::Role(_) | MigrateError::Refused(_) => "app role",
            MigrateError::Register(_) => "register tenants",
            MigrateError::AppLogin(_) | MigrateError::Audit(_) => "audit",
        }
    }
}

/// refinery says "`message`, `db error`"; the SQLSTATE and message are in
/// the source.
fn describe_refinery(error: &refinery::Error) -> String {
    match error.kind() {
        refinery::error::Kind::Connection(message, source) => {
            format!("{message}: {}", error_chain(source.as_ref()))
        }
        other => other.to_string(),
    }
}

/// The login role the service connects as.
pub struct AppRole {
    pub name: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for AppRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRole")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The admin connection, with TLS as `tls` says; without `DB_SSLMODE`, the
/// URL's own sslmode=require is honoured (encrypted, unverified) and
/// anything else means plain.
pub async fn connect_admin(
    admin: &tokio_postgres::Config,
    tls: &TlsConfig,
) -> Result<(Client, tokio::task::JoinHandle<()>), MigrateError> {
    let url_requires = admin.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let tls = match tls.mode {
        SslMode::Disable if url_requires => &TlsConfig {
            mode: SslMode::Require,
            ..tls.clone()
        },
        _ => tls,
    };
    let mut admin = admin.clone();
    let connector = match tls.mode {
        SslMode::Disable => None,
        SslMode::Require | SslMode::VerifyFull => {
            admin.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tenant_users::db::tls_connector(tls).map_err(MigrateError::Tls)?)
        }
    };
    crate::admin_conn::connect(&admin, connector)
        .await
        .map_err(MigrateError::Connect)
}

/// Applies pending migrations, then creates or updates the application role.
pub async fn run(
    admin: &tokio_postgres::Config,
    tls: &TlsConfig,
    role: &AppRole,
) -> Result<(), MigrateError> {
    run_with_progress(admin, tls, role, &[], |_| {}).await
}

/// [`run`], then [`register_tenants`] on the same connection, then the
/// self-audit as the application role ([`audit_as_app`]), telling
/// `progress` the step it enters (`connect`, `migrate`, `app role`,
/// `register tenants`, `audit`: the words of [`MigrateError::step`]), so a
/// caller that gives up on a deadline can say where it was.
pub async fn run_with_progress(
    admin: &tokio_postgres::Config,
    tls: &TlsConfig,
    role: &AppRole,
    tenants: &[Registration],
    progress: impl Fn(&'static str),
) -> Result<(), MigrateError> {
    check_role_name(&role.name)?;
    progress("connect");
    let (mut client, task) = connect_admin(admin, tls).await?;
    progress("migrate");
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(MigrateError::Migration)?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied");
    }
    let result = async {
        progress("app role");
        revoke_public_create(&client).await?;
        ensure_app_role(&client, role).await?;
        progress("register tenants");
        register_tenants(&client, tenants).await
    }
    .await;
    drop(client);
    let _ = task.await;
    result?;
    progress("audit");
    audit_as_app(admin, tls, role).await
}

/// The self-audit, as the application role, the way the API runs it on
/// its first connection: a migration that leaves a finding (a tenant table
/// without FORCE, a table without `tenant_id` granted to the role, a
/// privilege the API needs and lacks) fails here, naming it, instead of
/// deploying and then answering 503 to every request. The role logs in
/// with its password; without one, as trust auth lets it, or else the
/// admin's session takes the role with `SET ROLE`.
pub async fn audit_as_app(
    admin: &tokio_postgres::Config,
    tls: &TlsConfig,
    role: &AppRole,
) -> Result<(), MigrateError> {
    audit_as(admin, tls, role, Profile::Api).await
}

/// [`audit_as_app`] for the role of `profile`.
async fn audit_as(
    admin: &tokio_postgres::Config,
    tls: &TlsConfig,
    role: &AppRole,
    profile: Profile,
) -> Result<(), MigrateError> {
    let login = |e: MigrateError| MigrateError::AppLogin(e.to_string());
    let mut as_app = admin.clone();
    as_app.user(&role.name);
    if let Some(password) = &role.password {
        as_app.password(password.as_str());
    }
    let (client, task) = match (connect_admin(&as_app, tls).await, &role.password) {
        (Ok(connected), _) => connected,
        (Err(error), Some(_)) => return Err(login(error)),
        // No password: trust auth did not let the role in, so the
        // admin's session takes it (a superuser, or a member of it).
        (Err(_), None) => {
            let (client, task) = connect_admin(admin, tls).await.map_err(login)?;
            if let Err(e) = client
                .batch_execute(&format!("SET ROLE {}", quote_ident(&role.name)))
                .await
            {
                return Err(MigrateError::AppLogin(format!(
                    "{} (set APP_DB_PASSWORD so that migrate can log in as the role)",
                    error_chain(&e)
                )));
            }
            (client, task)
        }
    };
    let findings = tenant_users::audit::check_as(&client, profile).await;
    drop(client);
    let _ = task.await;
    let findings = findings.map_err(|e| MigrateError::Audit(error_chain(&e)))?;
    if findings.is_empty() {
        tracing::info!(role = %role.name, ?profile, "isolation self-audit passed as the role");
        Ok(())
    } else {
        Err(MigrateError::Audit(findings.join("; ")))
    }
}

/// The control plane's default role name (`CONTROL_DB_USER`).
pub const DEFAULT_CONTROL_USER: &str = "tenant_control";

/// Creates or updates the control plane's role, then audits it as that
/// role ([`Profile::Control`]). Like the application role it has no
/// BYPASSRLS and owns nothing, so `tenant_policy` holds it to the tenant
/// its transaction names; unlike it, it may write the registry and delete
/// from every tenant table (granted from the catalog, as the app role's
/// grants are, so a table added later is covered), and append to the
/// operator trail, which the application role cannot reach at all.
pub async fn ensure_control_role(
    admin: &tokio_postgres::Config,
    tls: &TlsConfig,
    control: &AppRole,
    app: &AppRole,
) -> Result<(), MigrateError> {
    check_role_name(&control.name)?;
    if control.name == app.name {
        return Err(MigrateError::Refused(format!(
            "the control plane's role must not be the application role ({}): set CONTROL_DB_USER to another name",
            app.name
        )));
    }
    let (client, task) = connect_admin(admin, tls).await?;
    let result = async {
        let name = quote_ident(&control.name);
        let mut grants = vec![format!("GRANT USAGE ON SCHEMA public, control TO {name}")];
        grants.extend(table_grants(&client, &name, &[]).await?);
        grants.push(format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA control FROM {name}"
        ));
        grants.push(format!(
            "GRANT INSERT ON TABLE {} TO {name}",
            tenant_users::audit::TRAIL
        ));
        let created = ensure_login_role(
            &client,
            control,
            "the control plane's role",
            "CONTROL_DB_USER",
            grants,
        )
        .await?;
        tracing::info!(role = %control.name, created, "control plane role ready");
        Ok(())
    }
    .await;
    drop(client);
    let _ = task.await;
    result?;
    audit_as(admin, tls, control, Profile::Control).await
}

/// PostgreSQL 13 and 14 let PUBLIC create in schema `public`, which would
/// let the app role plant objects (the audit's `role-no-create`). Only the
/// schema's owner may take that back: on 15 that is `pg_database_owner`,
/// i.e. the admin that owns the database; on older servers it may be a role
/// the admin is not, and then we say so rather than leave the door open.
async fn revoke_public_create(client: &Client) -> Result<(), MigrateError> {
    let row = client
        .query_opt(
            "SELECT EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
                             WHERE a.grantee = 0 AND a.privilege_type = 'CREATE'),
                    pg_has_role(current_user, n.nspowner, 'USAGE'),
                    pg_get_userbyid(n.nspowner)::text
               FROM pg_namespace n WHERE n.nspname = 'public'",
            &[],
        )
        .await
        .map_err(MigrateError::Role)?;
    let Some(row) = row else {
        return Ok(());
    };
    let (public_may_create, may_revoke, owner): (bool, bool, String) =
        (row.get(0), row.get(1), row.get(2));
    if !public_may_create {
        return Ok(());
    }
    if !may_revoke {
        return Err(MigrateError::Refused(format!(
            "PUBLIC may CREATE in schema public (PostgreSQL 14 and older grant it), and only its \
             owner {owner} can revoke that: run REVOKE CREATE ON SCHEMA public FROM PUBLIC as {owner}, \
             then migrate again"
        )));
    }
    client
        .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .await
        .map_err(MigrateError::Role)?;
    tracing::info!("revoked CREATE on schema public from PUBLIC");
    Ok(())
}

async fn ensure_app_role(client: &Client, role: &AppRole) -> Result<(), MigrateError> {
    let name = quote_ident(&role.name);
    let mut grants = vec![
        format!("GRANT USAGE ON SCHEMA public TO {name}"),
        format!(
            "GRANT EXECUTE ON FUNCTION public.app_enter_tenant(text, integer, integer) TO {name}"
        ),
        // The entry point of functions deployed before the registry (migrations/V3).
        format!("GRANT EXECUTE ON FUNCTION public.app_set_tenant(text, integer) TO {name}"),
    ];
    grants.extend(table_grants(client, &name, NARROWER_GRANTS).await?);
    let created =
        ensure_login_role(client, role, "the application role", "APP_DB_USER", grants).await?;
    // The multi-user rotation's alternate user inherits everything from the
    // app role (GRANT app TO app_clone); it must be no stronger than it.
    let clone = format!("{}{CLONE_SUFFIX}", role.name);
    if clone.len() <= MAX_IDENTIFIER_BYTES
        && client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&clone])
            .await
            .map_err(MigrateError::Role)?
            .is_some()
    {
        verify_role(client, &clone).await?;
    }
    tracing::info!(role = %role.name, created, "application role ready");
    Ok(())
}

/// Makes `role` a login role fit for its `purpose`, with `grants`, and
/// says whether it was created. Never the admin itself (`setting` names
/// the variable to change). An existing role is checked before it is
/// touched (a role that would weaken isolation gets no new password and
/// no grants) and then gets only LOGIN and the password: naming
/// SUPERUSER, BYPASSRLS or REPLICATION in ALTER ROLE is refused to a
/// non-superuser admin, and the rest was verified; a new one gets every
/// attribute spelled out. One transaction: a failed grant leaves the old
/// password in place. Checked again after.
async fn ensure_login_role(
    client: &Client,
    role: &AppRole,
    purpose: &str,
    setting: &str,
    grants: Vec<String>,
) -> Result<bool, MigrateError> {
    let admin: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(MigrateError::Role)?
        .get(0);
    if role.name == admin {
        return Err(MigrateError::Refused(format!(
            "{purpose} must not be the admin/owner role ({admin}); set {setting} to another name"
        )));
    }
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role.name])
        .await
        .map_err(MigrateError::Role)?
        .is_some();
    if exists {
        verify_role(client, &role.name).await?;
    }
    let name = quote_ident(&role.name);
    let password = match &role.password {
        Some(password) => format!(" PASSWORD {}", scram_literal(password)?),
        None => String::new(),
    };
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(MigrateError::Role)?
        .get(0);
    let mut script = String::from("BEGIN;\n");
    let head = [
        if exists {
            format!("ALTER ROLE {name} WITH LOGIN{password}")
        } else {
            format!(
                "CREATE ROLE {name} WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION{password}"
            )
        },
        format!(
            "GRANT CONNECT ON DATABASE {} TO {name}",
            quote_ident(&database)
        ),
    ];
    for sql in head.iter().chain(&grants) {
        script.push_str(sql);
        script.push_str(";\n");
    }
    script.push_str("COMMIT;");
    if let Err(error) = client.batch_execute(&script).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(MigrateError::Role(error));
    }
    verify_role(client, &role.name).await?;
    Ok(!exists)
}

/// Everything about `name` that the self-audit would hold against it, as
/// the admin sees it: attributes, privileged memberships (direct or
/// inherited), and objects owned by it or a role it belongs to.
async fn verify_role(client: &Client, name: &str) -> Result<(), MigrateError> {
    let row = client
        .query_one(
            "SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                    ARRAY(SELECT p.rolname::text FROM pg_roles p
                           WHERE p.oid <> r.oid AND pg_has_role(r.oid, p.oid, 'MEMBER')
                             AND (p.rolsuper OR p.rolbypassrls OR p.rolcreaterole OR p.rolcreatedb
                                  OR p.rolreplication OR p.rolname = ANY ($2::text[]))
                           ORDER BY 1),
                    ARRAY(SELECT pg_describe_object(d.classid, d.objid, d.objsubid)
                            FROM pg_shdepend d
                           WHERE d.deptype = 'o' AND d.refclassid = 'pg_authid'::regclass
                             AND pg_has_role(r.oid, d.refobjid, 'MEMBER')
                             AND d.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
                           ORDER BY 1),
                    ARRAY(SELECT d.datname::text FROM pg_database d, pg_shdepend s
                           WHERE s.deptype = 'o' AND s.refclassid = 'pg_authid'::regclass
                             AND pg_has_role(r.oid, s.refobjid, 'MEMBER')
                             AND s.dbid = d.oid AND d.datname <> current_database()
                           GROUP BY 1 ORDER BY 1)
               FROM pg_roles r WHERE r.rolname = $1",
            &[&name, &PRIVILEGED_ROLES],
        )
        .await
        .map_err(MigrateError::Role)?;
    let mut problems = Vec::new();
    for (i, attribute) in [
        "SUPERUSER",
        "BYPASSRLS",
        "CREATEROLE",
        "CREATEDB",
        "REPLICATION",
    ]
    .iter()
    .enumerate()
    {
        if row.get::<_, bool>(i) {
            problems.push(format!("has {attribute}"));
        }
    }
    let memberships: Vec<String> = row.get(5);
    if !memberships.is_empty() {
        problems.push(format!("is a member of {}", memberships.join(", ")));
    }
    let owned: Vec<String> = row.get(6);
    if !owned.is_empty() {
        problems.push(format!("owns {}", owned.join(", ")));
    }
    let elsewhere: Vec<String> = row.get(7);
    if !elsewhere.is_empty() {
        problems.push(format!(
            "owns objects in database(s) {}",
            elsewhere.join(", ")
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(MigrateError::Refused(format!(
        "role {name} exists but is not fit to be the application role: it {}. Migrate does not \
         repair this (a non-superuser admin may not, and an unexpected role may be in use \
         elsewhere): fix the role by hand or choose another name",
        problems.join("; it ")
    )))
}

/// PostgreSQL truncates longer names with only a NOTICE, so a role looked
/// up by its full name would never be found again.
const MAX_IDENTIFIER_BYTES: usize = 63;

fn check_role_name(name: &str) -> Result<(), MigrateError> {
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES || name.contains('\0') {
        return Err(MigrateError::Refused(format!(
            "the application role name must be 1 to {MAX_IDENTIFIER_BYTES} bytes, got {} bytes",
            name.len()
        )));
    }
    if name.starts_with("pg_") {
        return Err(MigrateError::Refused(
            "the application role name may not start with pg_ (reserved by PostgreSQL)".into(),
        ));
    }
    Ok(())
}

/// A double-quoted identifier, exactly as `quote_ident` would make it.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The password as a quoted SCRAM-SHA-256 verifier (what `psql \password`
/// sends): PostgreSQL stores a pre-hashed value as given, so the clear
/// text never leaves this process.
fn scram_literal(password: &str) -> Result<String, MigrateError> {
    if password.is_empty() {
        return Err(MigrateError::Refused(
            "the application role's password is empty".into(),
        ));
    }
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    // base64, digits and the separators `$` and `:`: nothing to escape, and
    // anything else would mean the verifier is not what we think it is.
    if !verifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=$:-".contains(&b))
    {
        return Err(MigrateError::Refused(
            "internal error: unexpected characters in the SCRAM verifier".into(),
        ));
    }
    Ok(format!("'{verifier}'"))
}

/// The application role's connection: the admin URL's server and
/// database, the role's credentials, and TLS settled exactly as `migrate`
/// settles it for the admin connection (`DB_SSLMODE`; without it, the
/// URL's own `sslmode=require`).
pub fn app_db_config(admin: &tokio_postgres::Config, role: &AppRole, tls: TlsConfig) -> DbConfig {
    let mut pg = admin.clone();
    pg.user(&role.name);
    if let Some(password) = &role.password {
        pg.password(password.as_str());
    }
    pg.application_name("tenant-users-dev");
    let url_requires = admin.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let tls = match tls.mode {
        SslMode::Disable if url_requires => TlsConfig {
            mode: SslMode::Require,
            ..tls
        },
        _ => tls,
    };
    DbConfig {
        tls,
        ..DbConfig::plain(pg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_sent_as_a_salted_scram_verifier() {
        let a = scram_literal("s3cret'; DROP ROLE x; --").unwrap();
        let b = scram_literal("s3cret'; DROP ROLE x; --").unwrap();
        assert!(a.starts_with("'SCRAM-SHA-256$4096:"), "{a}");
        assert!(!a.contains("s3cret"));
        assert_ne!(a, b, "a fresh salt each time");
        assert!(scram_literal("").is_err());
    }

    #[test]
    fn identifiers_are_quoted_and_names_checked() {
        assert_eq!(quote_ident("tenant_app"), "\"tenant_app\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(check_role_name("tenant_app").is_ok());
        assert!(check_role_name("").is_err());
        assert!(check_role_name(&"x".repeat(64)).is_err());
        assert!(check_role_name("pg_app").is_err());
        assert!(check_role_name("a\0b").is_err());
    }

    #[test]
    fn each_error_names_its_step() {
        assert_eq!(MigrateError::Tls("x".into()).step(), "connect");
        assert_eq!(MigrateError::Refused("x".into()).step(), "app role");
        assert_eq!(
            MigrateError::Register("x".into()).step(),
            "register tenants"
        );
    }

    #[test]
    fn a_registration_names_a_valid_tenant_and_a_known_tier() {
        let r = Registration::parse("acme.eu-1", "premium").unwrap();
        assert_eq!((r.tenant().as_str(), r.tier()), ("acme.eu-1", "premium"));
        assert!(TIERS.contains(&DEFAULT_TIER));
        assert!(Registration::parse("a b", "basic").is_err());
        assert!(Registration::parse("", "basic").is_err());
        let e = Registration::parse("acme", "gold").unwrap_err();
        assert_eq!(
            e,
            "unknown tier \"gold\" (tiers: basic, standard, premium, unlimited)"
        );
    }

    fn role() -> AppRole {
        AppRole {
            name: "tenant_app".into(),
            password: Some("pw".into()),
        }
    }

    #[test]
    fn the_app_connection_follows_the_admin_tls_settings() {
        let admin: tokio_postgres::Config = "postgres://owner@db.example/app".parse().unwrap();
        let verify = TlsConfig {
            mode: SslMode::VerifyFull,
            ca_file: Some("/etc/rds-ca.pem".into()),
            roots: tenant_users::db::config::Roots::System,
        };
        let db = app_db_config(&admin, &role(), verify);
        assert_eq!(db.tls.mode, SslMode::VerifyFull);
        assert_eq!(db.tls.ca_file, Some("/etc/rds-ca.pem".into()));
        let tenant_users::db::config::DbSource::Url(pg) = &db.source else {
            panic!("fixed credentials")
        };
        assert_eq!(pg.get_user(), Some("tenant_app"));

        let required: tokio_postgres::Config = "postgres://owner@db.example/app?sslmode=require"
            .parse()
            .unwrap();
        let db = app_db_config(&required, &role(), TlsConfig::DISABLED);
        assert_eq!(db.tls.mode, SslMode::Require, "the URL's sslmode=require");
        let db = app_db_config(&admin, &role(), TlsConfig::DISABLED);
        assert_eq!(
            db.tls.mode,
            SslMode::Disable,
            "plain only when nothing asks for TLS"
        );
    }
}
