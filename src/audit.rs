//! Isolation self-audit: an RLS linter, run on every new connection before
//! it serves, and on its own as `tenant-users audit`.
//!
//! The database must enforce isolation on its own, whatever the application
//! does. So before a connection is used we check, through the catalogs, what
//! the connected role can actually do: not what policies are called, but
//! whether the one policy that applies to this role *is* the tenant
//! predicate, and whether any door (a privileged membership, an owner's
//! view, a SECURITY DEFINER function, a default tenant) goes around it.
//! It lints what the role can *reach*, in any schema: every view,
//! materialized view, foreign table, inheritance parent and SECURITY DEFINER
//! function it may use either ends at tenant tables read under exactly
//! `tenant_policy`, or is a finding.
//! Any finding means the deployment is misconfigured and the service refuses
//! to serve (503) rather than serve unprotected. The whole audit is one
//! statement (`audit.sql`), so it costs a new connection one round trip, and
//! it names every object with its schema, so the session's `search_path`
//! cannot change what it means.

use tokio_postgres::Client;
use tokio_postgres::types::Type;

/// The policy every tenant table must carry.
pub const POLICY_NAME: &str = "tenant_policy";
/// The setting the policy reads, set per transaction by `db`.
pub const TENANT_SETTING: &str = "app.current_tenant";

const AUDIT: &str = include_str!("audit.sql");

/// What a rule is checked over: each tenant table, or the role and
/// database as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Table,
    Role,
    Database,
}

/// One rule of the audit: a stable id (in reports, logs and README) and
/// the requirement, phrased as what must hold.
#[derive(Debug)]
pub struct Rule {
    pub id: &'static str,
    pub requirement: &'static str,
    scope: Scope,
}

const fn rule(id: &'static str, scope: Scope, requirement: &'static str) -> Rule {
    Rule {
        id,
        requirement,
        scope,
    }
}

/// Every rule, in report order. A "tenant table" is any table with a
/// `tenant_id` column in a schema the role can use, in or out of
/// `search_path`; "tenant data" is any table with a `tenant_id` in any
/// schema, any foreign table, and their inheritance parents.
pub const RULES: &[Rule] = &[
    rule(
        "role-not-superuser",
        Scope::Role,
        "is not a superuser (superusers bypass RLS)",
    ),
    rule("role-no-bypassrls", Scope::Role, "does not have BYPASSRLS"),
    rule(
        "role-no-createrole-createdb",
        Scope::Role,
        "has neither CREATEROLE nor CREATEDB",
    ),
    rule(
        "role-no-privileged-membership",
        Scope::Role,
        "is a member of no privileged role (superuser, BYPASSRLS, CREATEROLE, CREATEDB, pg_read/write_all_data, server file access, database owner, rds_superuser)",
    ),
    rule(
        "role-no-replication-or-monitoring",
        Scope::Role,
        "has no REPLICATION and is a member of none of rds_replication, pg_read_all_stats, pg_monitor (logical replication and server statistics show every tenant's rows and statements)",
    ),
    rule(
        "role-owns-nothing",
        Scope::Role,
        "owns nothing in the database, directly or through a membership (owners can change RLS and grants)",
    ),
    rule(
        "role-no-create",
        Scope::Role,
        "may not CREATE in the database or any schema",
    ),
    rule(
        "role-reads-only-tenant-tables",
        Scope::Role,
        "may use no table without tenant_id, except read-only a table whose comment starts with 'shared:' (such a table is the same for every tenant: any tenant's rows in it would be every tenant's)",
    ),
    rule(
        "trail-out-of-reach-or-append-only",
        Scope::Role,
        "may not use the operator trail (a table whose comment starts with 'trail:') at all; the control plane's role may only INSERT into it",
    ),
    rule(
        "role-has-what-it-needs",
        Scope::Role,
        "has the privileges the service's statements need on every table they use (each resource's table, and the registry's), so no request meets a missing grant",
    ),
    rule(
        "no-default-tenant",
        Scope::Database,
        "no role, database or server default for app.current_tenant (a session starts with no tenant)",
    ),
    rule(
        "no-search-path-setting",
        Scope::Database,
        "no role or database search_path setting, and the session's is the server default (a search_path changes what a policy's deparsed text means)",
    ),
    rule(
        "no-rls-bypassing-view",
        Scope::Database,
        "no view or materialized view the role can use, in any schema, reaches tenant data (also through other views) except as a role held by exactly tenant_policy: each view security_invoker or owned by a role subject to RLS that no other permissive policy matches; no materialized view over tenant data",
    ),
    rule(
        "no-rls-bypassing-function",
        Scope::Database,
        "no SECURITY DEFINER function the role can execute, in any schema, is owned by a role that bypasses RLS or can read tenant data (directly or through views) other than under exactly tenant_policy",
    ),
    rule(
        "no-foreign-table",
        Scope::Database,
        "the role can use no foreign table (its rows come from elsewhere, past any policy)",
    ),
    rule(
        "no-parent-without-tenant-id",
        Scope::Database,
        "the role can use no inheritance parent of tenant data that lacks tenant_id (a parent returns its children's rows under its own policies only)",
    ),
    rule(
        "tenant-table-visible",
        Scope::Database,
        "at least one tenant table is visible (right database and schema)",
    ),
    rule(
        "table-rls-enabled",
        Scope::Table,
        "row level security is enabled",
    ),
    rule(
        "table-rls-forced",
        Scope::Table,
        "row level security is forced",
    ),
    rule(
        "table-not-owned",
        Scope::Table,
        "is not owned by the role or a role it belongs to (owners can disable RLS)",
    ),
    rule(
        "table-tenant-id-type",
        Scope::Table,
        "tenant_id is text, varchar, uuid, integer or bigint (no padded char(n), domain or extension type whose equality is looser)",
    ),
    rule(
        "table-tenant-id-deterministic",
        Scope::Table,
        "tenant_id's collation is deterministic (a case-insensitive collation makes ACME equal acme, in the policy and in WHERE tenant_id = $1)",
    ),
    rule(
        "table-no-truncate-references-trigger",
        Scope::Table,
        "the role has no TRUNCATE, REFERENCES or TRIGGER on it (TRUNCATE ignores RLS)",
    ),
    rule(
        "table-tenant-policy",
        Scope::Table,
        "has permissive policy tenant_policy FOR ALL, applying to the role, whose USING and WITH CHECK are tenant_id = current_setting('app.current_tenant'[, true]) (either operand first, or a cast of either)",
    ),
    rule(
        "table-one-permissive-policy",
        Scope::Table,
        "no other permissive policy applies to the role (permissive policies widen each other; restrictive ones may only narrow)",
    ),
    rule(
        "table-policy-pg-catalog-only",
        Scope::Table,
        "every policy that applies to the role calls only pg_catalog functions and operators (compared by OID; a function elsewhere may deparse to the same text, and sees rows before the tenant predicate filters them)",
    ),
    rule(
        "fk-includes-tenant",
        Scope::Table,
        "every foreign key to another tenant table maps tenant_id to tenant_id (no cross-tenant reference)",
    ),
    rule(
        "unique-includes-tenant",
        Scope::Table,
        "every unique index or constraint includes tenant_id (else a conflict reveals another tenant's data)",
    ),
];

/// One check of the audit, passed or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The object checked: `role NAME`, `table SCHEMA.NAME`, `view NAME`, ...
    pub subject: String,
    /// The rule's id, e.g. `table-rls-forced`.
    pub rule: &'static str,
    /// The requirement, phrased as what must hold.
    pub requirement: String,
    /// What was found, for a failure that has more to say.
    pub detail: Option<String>,
    pub passed: bool,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(
            f,
            "{verdict}  [{}] {}: {}",
            self.rule, self.subject, self.requirement
        )?;
        if let Some(detail) = &self.detail {
            write!(f, " (found: {detail})")?;
        }
        Ok(())
    }
}

impl Check {
    /// The finding in short: `[rule] subject (found: detail)`, for logs and
    /// the 503's log line.
    pub fn finding(&self) -> String {
        match &self.detail {
            Some(detail) => format!("[{}] {} (found: {detail})", self.rule, self.subject),
            None => format!("[{}] {}", self.rule, self.subject),
        }
    }
}

/// Whose connection is audited: the rules are the same, but what the role
/// needs, and what it may do with the operator trail, differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Profile {
    /// The API function's role: must not reach the operator trail.
    #[default]
    Api,
    /// The control plane's role: what the API's role needs, plus writing
    /// the registry and deleting any tenant table's rows (one tenant at a
    /// time, under the same policies), and appending to the trail.
    Control,
}

/// The operator trail (migrations/V6).
pub const TRAIL: &str = "control.operator_trail";

impl Profile {
    /// What this role's statements need, as (table, privilege) pairs.
    pub fn needs(self) -> Vec<(&'static str, &'static str)> {
        let mut needs = needs();
        if self == Profile::Control {
            needs.extend([
                ("tenants", "INSERT"),
                ("tenants", "UPDATE"),
                ("tenants", "DELETE"),
                ("tenant_rate", "INSERT"),
                ("tenant_rate", "DELETE"),
                (TRAIL, "INSERT"),
            ]);
        }
        needs
    }
}

/// What the service's statements need, as (table, privilege) pairs: every
/// resource's table in full, and the registry as `app_enter_tenant` uses
/// it (its own row and the tiers read, its bucket's level updated).
pub fn needs() -> Vec<(&'static str, &'static str)> {
    let mut needs = vec![
        ("tenants", "SELECT"),
        ("tenant_tiers", "SELECT"),
        ("tenant_rate", "SELECT"),
        ("tenant_rate", "UPDATE"),
    ];
    for resource in crate::http::RESOURCES {
        for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
            needs.push((resource.table, privilege));
        }
    }
    needs
}

/// Every check, for the `audit` command's report.
pub async fn report(client: &Client) -> Result<Vec<Check>, tokio_postgres::Error> {
    report_as(client, Profile::Api).await
}

/// Every check of a connection of the `profile`'s role.
pub async fn report_as(
    client: &Client,
    profile: Profile,
) -> Result<Vec<Check>, tokio_postgres::Error> {
    let (tables, privileges): (Vec<&str>, Vec<&str>) = profile.needs().into_iter().unzip();
    let appends = profile == Profile::Control;
    let rows = client
        .query_typed(
            AUDIT,
            &[
                (&POLICY_NAME, Type::TEXT),
                (&tables, Type::TEXT_ARRAY),
                (&privileges, Type::TEXT_ARRAY),
                (&appends, Type::BOOL),
            ],
        )
        .await?;
    let (mut tables, mut role, mut database) = (Vec::new(), String::new(), String::new());
    let mut failures: Vec<(String, String, Option<String>)> = Vec::new();
    for row in &rows {
        let kind: &str = row.get(0);
        let subject: String = row.get(2);
        match kind {
            "table" => tables.push(subject),
            "role" => role = subject,
            "database" => database = subject,
            _ => failures.push((row.get(1), subject, row.get(3))),
        }
    }
    if tables.is_empty() {
        failures.push(("tenant-table-visible".into(), "schema".into(), None));
    }

    let mut checks = Vec::new();
    for rule in RULES {
        let mut failed: Vec<&(String, String, Option<String>)> =
            failures.iter().filter(|(id, ..)| id == rule.id).collect();
        // Table rules pass or fail per table; the others pass once for
        // the role or database, or fail once per offending object.
        let passing: Vec<String> = match rule.scope {
            Scope::Table => tables
                .iter()
                .map(|t| format!("table {t}"))
                .filter(|s| !failed.iter().any(|(_, f, _)| f == s))
                .collect(),
            _ if !failed.is_empty() => Vec::new(),
            Scope::Role => vec![format!("role {role}")],
            Scope::Database => vec![format!("database {database}")],
        };
        for subject in passing {
            checks.push(Check {
                subject,
                rule: rule.id,
                requirement: rule.requirement.to_owned(),
                detail: None,
                passed: true,
            });
        }
        failed.sort_by(|a, b| a.1.cmp(&b.1));
        for (_, subject, detail) in failed {
            checks.push(Check {
                subject: subject.clone(),
                rule: rule.id,
                requirement: rule.requirement.to_owned(),
                detail: detail.clone().filter(|d| !d.is_empty()),
                passed: false,
            });
        }
    }
    // A rule id the SQL knows and this list does not is a bug; never let
    // it pass silently.
    for (id, subject, detail) in &failures {
        if !RULES.iter().any(|r| r.id == id) {
            checks.push(Check {
                subject: subject.clone(),
                rule: "unknown-rule",
                requirement: format!("audit rule {id}"),
                detail: detail.clone(),
                passed: false,
            });
        }
    }
    Ok(checks)
}

/// The failed checks, as findings: empty when the connection is fit to serve.
pub async fn check(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    check_as(client, Profile::Api).await
}

/// [`check`] for a connection of the `profile`'s role.
pub async fn check_as(
    client: &Client,
    profile: Profile,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(report_as(client, profile)
        .await?
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| c.finding())
        .collect())
}
