//! Isolation self-audit, run on every new connection before it serves.
//!
//! The database must enforce isolation on its own, whatever the application
//! does. So before a connection is used we check, through the catalogs, that
//! the role we connected as cannot step around Row Level Security, and that
//! every table with a `tenant_id` column carries the tenant policy. Any
//! finding means the deployment is misconfigured and the service refuses to
//! serve (503) rather than serve unprotected. Only catalogs are read here.

use tokio_postgres::Client;

/// The policy every tenant table must carry.
pub const POLICY_NAME: &str = "tenant_policy";
/// The setting the policy reads, set per transaction by `db`.
pub const TENANT_SETTING: &str = "app.current_tenant";

const ROLE_CHECK: &str = "SELECT current_user::text, rolsuper, rolbypassrls \
                          FROM pg_roles WHERE rolname = current_user";

const TABLE_CHECK: &str = "\
SELECT n.nspname || '.' || c.relname,
       c.relrowsecurity,
       c.relforcerowsecurity,
       pg_has_role(current_user, c.relowner, 'MEMBER'),
       EXISTS (SELECT 1 FROM pg_policy p
                WHERE p.polrelid = c.oid AND p.polname = $1 AND p.polcmd = '*'
                  AND p.polpermissive
                  AND p.polqual IS NOT NULL AND p.polwithcheck IS NOT NULL
                  AND strpos(pg_get_expr(p.polqual, p.polrelid), $2) > 0
                  AND strpos(pg_get_expr(p.polwithcheck, p.polrelid), $2) > 0),
       (SELECT string_agg(p.polname, ', ') FROM pg_policy p
         WHERE p.polrelid = c.oid AND p.polpermissive AND p.polname <> $1)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (current_schemas(false))
   AND c.relkind IN ('r', 'p')
   AND EXISTS (SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
 ORDER BY 1";

/// One check of the audit, passed or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `role NAME` or `table SCHEMA.NAME`.
    pub subject: String,
    /// The requirement, phrased as what must hold.
    pub requirement: String,
    pub passed: bool,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "{verdict}  {}: {}", self.subject, self.requirement)
    }
}

/// Every check, for the `audit` command's report.
pub async fn report(client: &Client) -> Result<Vec<Check>, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let mut checks = Vec::new();
    let mut check = |subject: &str, requirement: String, passed: bool| {
        checks.push(Check {
            subject: subject.to_owned(),
            requirement,
            passed,
        })
    };

    let role = client.query_typed(ROLE_CHECK, &[]).await?;
    match role.first() {
        None => check("role", "the connected role is in pg_roles".into(), false),
        Some(row) => {
            let subject = format!("role {}", row.get::<_, String>(0));
            check(
                &subject,
                "is not a superuser (superusers bypass RLS)".into(),
                !row.get::<_, bool>(1),
            );
            check(
                &subject,
                "does not have BYPASSRLS".into(),
                !row.get::<_, bool>(2),
            );
        }
    }

    let tables = client
        .query_typed(
            TABLE_CHECK,
            &[(&POLICY_NAME, Type::TEXT), (&TENANT_SETTING, Type::TEXT)],
        )
        .await?;
    check(
        "schema",
        "at least one table with a tenant_id column is visible (right database and schema)".into(),
        !tables.is_empty(),
    );
    for row in tables {
        let subject = format!("table {}", row.get::<_, String>(0));
        check(&subject, "row level security is enabled".into(), row.get(1));
        check(&subject, "row level security is forced".into(), row.get(2));
        check(
            &subject,
            "is not owned by the connected role (owners can disable RLS)".into(),
            !row.get::<_, bool>(3),
        );
        check(
            &subject,
            format!(
                "has policy {POLICY_NAME} FOR ALL with USING and WITH CHECK on {TENANT_SETTING}"
            ),
            row.get(4),
        );
        let others: Option<String> = row.get(5);
        check(
            &subject,
            format!(
                "has no other permissive policy that would widen {POLICY_NAME}{}",
                others.map(|o| format!(" (found: {o})")).unwrap_or_default()
            ),
            row.get::<_, Option<String>>(5).is_none(),
        );
    }
    Ok(checks)
}

/// The failed checks: empty when the connection is fit to serve.
pub async fn check(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(report(client)
        .await?
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.subject, c.requirement))
        .collect())
}
