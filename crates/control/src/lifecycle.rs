//! The data side of a tenant's end of life: export every tenant table of
//! one tenant from one snapshot, and purge them all in one transaction with
//! proof that nothing is left. Both find the tenant tables the way the self-audit does (a
//! `tenant_id` column, in a schema the role can use), so a table a later
//! migration adds is exported and purged without a code change.
//!
//! Both run as whatever role the caller connected as, inside the tenant's
//! scope (`app.current_tenant`, transaction-local): they work for a role
//! without BYPASSRLS under FORCEd row level security, and touch one
//! tenant's rows only. Every statement also filters on `tenant_id` itself.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use tenant_users::tenant::TenantId;

/// How a transaction of [`in_tenant`] begins.
pub const READ_WRITE: &str = "BEGIN";
/// One snapshot for every statement, changing nothing.
pub const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// The registry's own row of a tenant: kept as the tombstone, never purged.
const REGISTRY: &str = "public.tenants";

/// One tenant table, schema-qualified and quoted (`public."users"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTable {
    /// `schema.name`, as written in reports.
    pub name: String,
    quoted: String,
}

/// The tenant tables the connected role can name, in an order fit for
/// deleting: a table that references another (a foreign key between tenant
/// tables) comes before it.
pub async fn tenant_tables(client: &Client) -> Result<Vec<TenantTable>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid::int8, format('%s.%s', n.nspname, c.relname),
                    format('%I.%I', n.nspname, c.relname),
                    ARRAY(SELECT k.confrelid::int8 FROM pg_catalog.pg_constraint k
                           WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid)
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
              ORDER BY 2",
            &[],
        )
        .await?;
    let mut pending: Vec<(i64, TenantTable, Vec<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                TenantTable {
                    name: r.get(1),
                    quoted: r.get(2),
                },
                r.get(3),
            )
        })
        .collect();
    // Referencing tables first: take a table once no pending table
    // references it. A cycle (none today) keeps the rest in name order.
    let mut ordered = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let free = pending
            .iter()
            .position(|(oid, ..)| !pending.iter().any(|(_, _, refs)| refs.contains(oid)))
            .unwrap_or(0);
        ordered.push(pending.remove(free).1);
    }
    Ok(ordered)
}

/// One table's rows of the tenant, as JSON Lines.
#[derive(Debug, Clone)]
pub struct ExportFile {
    pub table: String,
    pub rows: u64,
    /// Lowercase hex SHA-256 of `body`.
    pub sha256: String,
    pub body: Vec<u8>,
}

/// Every tenant table's rows of `tenant`, from one REPEATABLE READ, read-only
/// snapshot: one JSON object per line (`to_jsonb` of the row), in a stable
/// order, with the row count and SHA-256 of each file for the manifest.
pub async fn export(
    client: &Client,
    tenant: &TenantId,
) -> Result<Vec<ExportFile>, tokio_postgres::Error> {
    in_tenant(client, tenant, SNAPSHOT, export_rows(client, tenant)).await
}

/// [`export`]'s work, inside a transaction the caller began and scoped
/// ([`in_tenant`] with [`SNAPSHOT`]).
pub async fn export_rows(
    client: &Client,
    tenant: &TenantId,
) -> Result<Vec<ExportFile>, tokio_postgres::Error> {
    let mut files = Vec::new();
    for table in tenant_tables(client).await? {
        let rows = client
            .query(
                &format!(
                    "SELECT pg_catalog.to_jsonb(t)::text FROM {} t \
                         WHERE t.tenant_id::text = $1 ORDER BY 1",
                    table.quoted
                ),
                &[&tenant.as_str()],
            )
            .await?;
        let mut body = Vec::new();
        for row in &rows {
            body.extend_from_slice(row.get::<_, &str>(0).as_bytes());
            body.push(b'\n');
        }
        files.push(ExportFile {
            table: table.name,
            rows: rows.len() as u64,
            sha256: hex(&Sha256::digest(&body)),
            body,
        });
    }
    Ok(files)
}

/// Rows deleted from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub table: String,
    pub deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    /// Rows were left after the deletes (a table this role cannot see
    /// all of, say): nothing was committed.
    #[error("{table} still holds {left} row(s) of the tenant after the purge; nothing was deleted")]
    Left { table: String, left: i64 },
}

/// Deletes every row of `tenant` from every tenant table but the registry,
/// in one transaction; counts every table again and commits only if each
/// holds none of the tenant's rows; leaves the registry row as the
/// tombstone (status `offboarded`, which refuses every request).
pub async fn purge(client: &Client, tenant: &TenantId) -> Result<Vec<Purged>, PurgeError> {
    in_tenant(client, tenant, READ_WRITE, purge_rows(client, tenant)).await
}

/// [`purge`]'s work, inside a transaction the caller began and scoped
/// ([`in_tenant`] with [`READ_WRITE`]), so that the caller can add its own
/// statements (the operator trail's row) before it commits.
pub async fn purge_rows(client: &Client, tenant: &TenantId) -> Result<Vec<Purged>, PurgeError> {
    let tables = tenant_tables(client).await?;
    let mut purged = Vec::new();
    for table in tables.iter().filter(|t| t.name != REGISTRY) {
        let deleted = client
            .execute(
                &format!("DELETE FROM {} WHERE tenant_id::text = $1", table.quoted),
                &[&tenant.as_str()],
            )
            .await?;
        purged.push(Purged {
            table: table.name.clone(),
            deleted,
        });
    }
    for table in tables.iter().filter(|t| t.name != REGISTRY) {
        let left: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE tenant_id::text = $1",
                    table.quoted
                ),
                &[&tenant.as_str()],
            )
            .await?
            .get(0);
        if left != 0 {
            return Err(PurgeError::Left {
                table: table.name.clone(),
                left,
            });
        }
    }
    client
        .execute(
            "UPDATE public.tenants SET status = 'offboarded', updated_at = now() \
                 WHERE tenant_id = $1",
            &[&tenant.as_str()],
        )
        .await?;
    Ok(purged)
}

/// Runs `work` in one transaction (begun with `begin`, [`READ_WRITE`] or
/// [`SNAPSHOT`]) scoped to `tenant` before `work`'s first statement:
/// COMMIT after success, ROLLBACK after anything else. Every statement of
/// the control plane runs inside one of these.
pub async fn in_tenant<T, E: From<tokio_postgres::Error>>(
    client: &Client,
    tenant: &TenantId,
    begin: &str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    client.batch_execute(begin).await?;
    let result = async {
        enter(client, tenant).await?;
        work.await
    }
    .await;
    finish(client, result).await
}

/// The tenant's scope for this transaction only.
async fn enter(client: &Client, tenant: &TenantId) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_catalog.set_config('app.current_tenant', $1, true)",
            &[&tenant.as_str()],
        )
        .await
        .map(drop)
}

/// COMMIT after success, ROLLBACK after anything else.
async fn finish<T, E: From<tokio_postgres::Error>>(
    client: &Client,
    result: Result<T, E>,
) -> Result<T, E> {
    match result {
        Ok(value) => {
            client.batch_execute("COMMIT").await?;
            Ok(value)
        }
        Err(error) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
