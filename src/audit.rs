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

/// Returns the findings: empty when the connection is fit to serve.
pub async fn check(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let mut findings = Vec::new();

    let role = client.query_typed(ROLE_CHECK, &[]).await?;
    match role.first() {
        None => findings.push("the connected role is not in pg_roles".to_owned()),
        Some(row) => {
            let name: String = row.get(0);
            if row.get::<_, bool>(1) {
                findings.push(format!(
                    "role {name} is a superuser (superusers bypass RLS)"
                ));
            }
            if row.get::<_, bool>(2) {
                findings.push(format!("role {name} has BYPASSRLS"));
            }
        }
    }

    let tables = client
        .query_typed(
            TABLE_CHECK,
            &[(&POLICY_NAME, Type::TEXT), (&TENANT_SETTING, Type::TEXT)],
        )
        .await?;
    if tables.is_empty() {
        findings.push(
            "no table with a tenant_id column is visible (wrong database or schema?)".to_owned(),
        );
    }
    for row in tables {
        let table: String = row.get(0);
        if !row.get::<_, bool>(1) {
            findings.push(format!("table {table}: row level security is not enabled"));
        }
        if !row.get::<_, bool>(2) {
            findings.push(format!("table {table}: row level security is not forced"));
        }
        if row.get::<_, bool>(3) {
            findings.push(format!(
                "table {table}: the connected role owns it (owners can disable RLS)"
            ));
        }
        if !row.get::<_, bool>(4) {
            findings.push(format!(
                "table {table}: no policy {POLICY_NAME} FOR ALL with USING and WITH CHECK on {TENANT_SETTING}"
            ));
        }
        if let Some(others) = row.get::<_, Option<String>>(5) {
            findings.push(format!(
                "table {table}: other permissive policies ({others}) would widen {POLICY_NAME}"
            ));
        }
    }
    Ok(findings)
}
