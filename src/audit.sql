-- The isolation self-audit, as one statement (one round trip per audit).
-- It returns the tenant tables, the role and database names, and one
-- 'fail' row per finding: (kind, rule, subject, detail). Rule ids and
-- their wording live in src/audit.rs; $1 is the policy name, $2 and $3
-- the (table, privilege) pairs the service's statements need, $4 whether
-- the role may append to the operator trail (the control plane's role) or
-- must not reach it at all (the application role). Only
-- catalogs and the session's own settings are read.
--
-- The statement means the same whatever the session's search_path: every
-- relation, function, type and operator is named with its schema
-- (OPERATOR(pg_catalog.=), not =), so no object placed earlier in the path
-- can stand in for a catalog one. (A SET of search_path would cost a round
-- trip, or pin an RDS Proxy connection.) Names in the output are written
-- out schema-qualified too, never left to pg_describe_object's guess of
-- what is visible.
WITH RECURSIVE me AS (
    SELECT r.oid, r.rolname::pg_catalog.text AS name, r.rolsuper, r.rolbypassrls,
           r.rolcreaterole, r.rolcreatedb, r.rolreplication
      FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
), my_roles AS (
    SELECT r.oid, r.rolname::pg_catalog.text AS name, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb
      FROM pg_catalog.pg_roles r WHERE pg_catalog.pg_has_role(CURRENT_USER, r.oid, 'MEMBER')
), this_database AS (
    SELECT d.oid, d.datname::pg_catalog.text AS name, d.datdba
      FROM pg_catalog.pg_database d
     WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
), user_schemas AS (
    SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
     WHERE NOT (n.nspname OPERATOR(pg_catalog.=) ANY ('{pg_catalog,information_schema}'::pg_catalog.name[]))
       AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_toast')
       AND NOT pg_catalog.starts_with(n.nspname::pg_catalog.text, 'pg_temp_')
), rel_names AS (
    -- Every relation as `kind schema.name`, for subjects and details.
    SELECT c.oid,
           pg_catalog.format('%s %I.%I',
             CASE WHEN c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog."char"[]) THEN 'table'
                  WHEN c.relkind OPERATOR(pg_catalog.=) 'v' THEN 'view'
                  WHEN c.relkind OPERATOR(pg_catalog.=) 'm' THEN 'materialized view'
                  WHEN c.relkind OPERATOR(pg_catalog.=) 'f' THEN 'foreign table'
                  WHEN c.relkind OPERATOR(pg_catalog.=) 'S' THEN 'sequence'
                  WHEN c.relkind OPERATOR(pg_catalog.=) 'c' THEN 'type'
                  ELSE 'relation' END,
             n.nspname, c.relname) AS name,
           pg_catalog.format('%I.%I', n.nspname, c.relname) AS qualified
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
), tenant_rels(oid) AS (
    -- Every relation whose rows may be a tenant's, in any schema: the
    -- tables with a tenant_id, every foreign table (its rows come from
    -- elsewhere, past any policy), and their inheritance ancestors (a
    -- parent returns its children's rows under its own policies only).
    SELECT c.oid FROM pg_catalog.pg_class c
      JOIN user_schemas n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.relkind OPERATOR(pg_catalog.=) 'f'
        OR (c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog."char"[])
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND NOT a.attisdropped
                           AND a.attname OPERATOR(pg_catalog.=) 'tenant_id'))
    UNION
    SELECT i.inhparent FROM pg_catalog.pg_inherits i
      JOIN tenant_rels t ON t.oid OPERATOR(pg_catalog.=) i.inhrelid
), tenant_data AS (
    SELECT c.oid, rn.qualified AS name, rn.name AS described, c.relkind, c.relnamespace,
           c.relowner, c.relrowsecurity, c.relforcerowsecurity,
           a.attnum AS tenant_att, a.atttypid AS tenant_typid,
           pg_catalog.format_type(a.atttypid, a.atttypmod) AS tenant_type,
           a.attcollation AS tenant_collation,
           -- Equality on tenant_id is exact: an allowed type (not char(n),
           -- which pads, nor a domain or extension type such as citext),
           -- and a deterministic collation (a case-insensitive one makes
           -- ACME equal acme).
           a.atttypid OPERATOR(pg_catalog.=) ANY (
             '{pg_catalog.text,pg_catalog.varchar,pg_catalog.uuid,pg_catalog.int4,pg_catalog.int8}'::pg_catalog.regtype[]::pg_catalog.oid[]
           ) AS tenant_type_ok,
           (a.attcollation OPERATOR(pg_catalog.=) 0
            OR EXISTS (SELECT 1 FROM pg_catalog.pg_collation l
                        WHERE l.oid OPERATOR(pg_catalog.=) a.attcollation AND l.collisdeterministic)) AS tenant_collation_ok
      FROM (SELECT DISTINCT oid FROM tenant_rels) x
      JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) x.oid
      JOIN rel_names rn ON rn.oid OPERATOR(pg_catalog.=) c.oid
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
       AND a.attname OPERATOR(pg_catalog.=) 'tenant_id' AND NOT a.attisdropped
), tenant_tables AS (
    -- The tenant tables the role can name: the table rules judge these.
    SELECT t.* FROM tenant_data t
     WHERE t.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog."char"[])
       AND t.tenant_att IS NOT NULL
       AND pg_catalog.has_schema_privilege(t.relnamespace, 'USAGE')
), policy_refs AS (
    -- What a policy calls beyond the built-in catalog. Built-in (pinned)
    -- objects are never recorded in pg_depend, so every function,
    -- operator, type or collation found here was created later; only
    -- those in pg_catalog may pass. Compared by OID: a same-named function
    -- in another schema deparses to the same text.
    SELECT d.objid AS policy,
           pg_catalog.format('function %I.%I(%s)', n.nspname, p.proname,
                             pg_catalog.oidvectortypes(p.proargtypes)) AS what
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.refobjid
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND n.nspname OPERATOR(pg_catalog.<>) 'pg_catalog'
    UNION ALL
    SELECT d.objid,
           pg_catalog.format('operator %I.%s(%s, %s)', n.nspname, o.oprname,
                             pg_catalog.format_type(o.oprleft, NULL), pg_catalog.format_type(o.oprright, NULL))
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_operator o ON o.oid OPERATOR(pg_catalog.=) d.refobjid
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass
       AND n.nspname OPERATOR(pg_catalog.<>) 'pg_catalog'
    UNION ALL
    SELECT d.objid, pg_catalog.format('type %I.%I', n.nspname, y.typname)
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_type y ON y.oid OPERATOR(pg_catalog.=) d.refobjid
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) y.typnamespace
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
       AND n.nspname OPERATOR(pg_catalog.<>) 'pg_catalog'
    UNION ALL
    SELECT d.objid, pg_catalog.format('collation %I.%I', n.nspname, l.collname)
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_collation l ON l.oid OPERATOR(pg_catalog.=) d.refobjid
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) l.collnamespace
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_collation'::pg_catalog.regclass
       AND n.nspname OPERATOR(pg_catalog.<>) 'pg_catalog'
), canonical AS (
    -- What tenant_policy must say, as PostgreSQL deparses it: tenant_id
    -- equal to the setting (with or without missing_ok; either operand
    -- first; the setting cast to tenant_id's type, or tenant_id to text).
    SELECT t.oid, e.expr
      FROM tenant_data t,
           LATERAL (VALUES ('current_setting(''app.current_tenant''::text, true)'),
                           ('current_setting(''app.current_tenant''::text)')) s(setting),
           LATERAL (SELECT CASE WHEN t.tenant_typid OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype
                                THEN s.setting
                                ELSE pg_catalog.format('(%s)::%s', s.setting, t.tenant_type) END AS typed) x,
           LATERAL (VALUES (pg_catalog.format('(tenant_id = %s)', x.typed)),
                           (pg_catalog.format('(%s = tenant_id)', x.typed)),
                           (pg_catalog.format('((tenant_id)::text = %s)', s.setting)),
                           (pg_catalog.format('(%s = (tenant_id)::text)', s.setting))) e(expr)
     WHERE t.tenant_att IS NOT NULL
), policies AS (
    SELECT p.oid, p.polrelid, p.polname::pg_catalog.text AS polname, p.polpermissive, p.polcmd, p.polroles,
           p.polname OPERATOR(pg_catalog.=) $1 AS is_tenant_policy,
           pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS using_expr,
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
      FROM pg_catalog.pg_policy p
     WHERE p.polrelid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tenant_data)
), judged_policies AS (
    SELECT p.*,
           coalesce(p.using_expr OPERATOR(pg_catalog.=) ANY (
                      SELECT c.expr FROM canonical c WHERE c.oid OPERATOR(pg_catalog.=) p.polrelid), false) AS using_ok,
           (p.check_expr IS NULL
            OR coalesce(p.check_expr OPERATOR(pg_catalog.=) ANY (
                      SELECT c.expr FROM canonical c WHERE c.oid OPERATOR(pg_catalog.=) p.polrelid), false)) AS check_ok,
           NOT EXISTS (SELECT 1 FROM policy_refs r WHERE r.policy OPERATOR(pg_catalog.=) p.oid) AS catalog_only
      FROM policies p
), applying_policies AS (
    -- Policies that apply to the connected role: TO PUBLIC or to a role it is a member of.
    SELECT p.*, t.name AS table_name
      FROM judged_policies p JOIN tenant_tables t ON t.oid OPERATOR(pg_catalog.=) p.polrelid
     WHERE p.polroles OPERATOR(pg_catalog.&&) (ARRAY[0::pg_catalog.oid] OPERATOR(pg_catalog.||) ARRAY(SELECT oid FROM my_roles))
), views AS (
    SELECT c.oid, c.relowner,
           c.relkind OPERATOR(pg_catalog.=) 'm' AS stores,
           EXISTS (SELECT 1 FROM pg_catalog.unnest(c.reloptions) o
                    WHERE pg_catalog.lower(o) OPERATOR(pg_catalog.=) ANY (
                      '{security_invoker=true,security_invoker=on,security_invoker=1,security_invoker=yes}'::pg_catalog.text[])) AS invoker
      FROM pg_catalog.pg_class c
     WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'::pg_catalog."char"[])
), view_deps AS (
    -- The relations each view or materialized view reads.
    SELECT DISTINCT r.ev_class AS view, d.refobjid AS ref
      FROM pg_catalog.pg_rewrite r
      JOIN pg_catalog.pg_depend d
        ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
       AND d.objid OPERATOR(pg_catalog.=) r.oid
       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refobjid OPERATOR(pg_catalog.<>) r.ev_class
), readers AS (
    -- Whose privileges the role can read with: its own (via 0), and those
    -- of the owner of each SECURITY DEFINER function it may execute (via
    -- the function), in any schema.
    SELECT m.oid AS reader, 0::pg_catalog.oid AS via FROM me m
    UNION ALL
    SELECT p.proowner, p.oid FROM pg_catalog.pg_proc p
     WHERE p.prosecdef AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
), walk(reader, via, entry, rel, reads_as) AS (
    -- Each view a reader may use, and the views it reads in turn, with
    -- the role whose privileges and policies the reads run under: the
    -- view's owner, the caller's for a security_invoker view, and none
    -- (0) once a materialized view stores the rows.
    SELECT q.reader, q.via, v.oid, v.oid,
           CASE WHEN v.stores THEN 0::pg_catalog.oid WHEN v.invoker THEN q.reader ELSE v.relowner END
      FROM readers q JOIN views v
        ON pg_catalog.has_table_privilege(q.reader, v.oid, 'SELECT, INSERT, UPDATE, DELETE')
        OR pg_catalog.has_any_column_privilege(q.reader, v.oid, 'SELECT, INSERT, UPDATE')
    UNION
    SELECT w.reader, w.via, w.entry, v.oid,
           CASE WHEN w.reads_as OPERATOR(pg_catalog.=) 0 OR v.stores THEN 0::pg_catalog.oid
                WHEN v.invoker THEN w.reads_as ELSE v.relowner END
      FROM walk w
      JOIN view_deps d ON d.view OPERATOR(pg_catalog.=) w.rel
      JOIN views v ON v.oid OPERATOR(pg_catalog.=) d.ref
), reaches AS (
    -- (reader, via, entry view or 0, tenant relation, the role reading it)
    SELECT w.reader, w.via, w.entry, d.ref AS rel, w.reads_as
      FROM walk w
      JOIN view_deps d ON d.view OPERATOR(pg_catalog.=) w.rel
     WHERE d.ref OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tenant_data)
    UNION
    -- A function's owner also reads tables directly.
    SELECT q.reader, q.via, 0::pg_catalog.oid, t.oid, q.reader
      FROM readers q, tenant_data t
     WHERE q.via OPERATOR(pg_catalog.<>) 0
), unbound AS (
    -- The reaches that may return another tenant's rows: unless the
    -- reading role is held by exactly tenant_policy (RLS on, not the
    -- owner nor a member of it, not superuser, no BYPASSRLS, an isolating
    -- tenant_policy applies to it, no other permissive policy does, and
    -- no applying policy calls anything outside pg_catalog), or the role
    -- cannot read the relation at all. The role's own reads of the tables
    -- the table rules judge are theirs to report.
    SELECT x.via, x.entry, x.rel, x.reads_as,
           CASE WHEN x.reads_as OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format('stored rows of %s', t.name)
                ELSE pg_catalog.format('reads %s as %s', t.name, r.rolname) END AS what
      FROM reaches x
      JOIN tenant_data t ON t.oid OPERATOR(pg_catalog.=) x.rel
      LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) x.reads_as
     WHERE NOT (x.reads_as OPERATOR(pg_catalog.=) (SELECT oid FROM me)
                AND x.rel OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tenant_tables))
       AND CASE WHEN x.reads_as OPERATOR(pg_catalog.=) 0 THEN true
                ELSE pg_catalog.has_table_privilege(x.reads_as, t.oid, 'SELECT, INSERT, UPDATE, DELETE')
                  OR pg_catalog.has_any_column_privilege(x.reads_as, t.oid, 'SELECT, INSERT, UPDATE') END
       AND NOT coalesce(
             t.relrowsecurity AND t.tenant_type_ok AND t.tenant_collation_ok
             AND NOT r.rolsuper AND NOT r.rolbypassrls
             AND NOT pg_catalog.pg_has_role(r.oid, t.relowner, 'MEMBER')
             AND EXISTS (SELECT 1 FROM judged_policies p
                          WHERE p.polrelid OPERATOR(pg_catalog.=) t.oid AND p.is_tenant_policy
                            AND p.polpermissive AND p.polcmd OPERATOR(pg_catalog.=) '*'
                            AND p.using_ok AND p.check_ok
                            AND EXISTS (SELECT 1 FROM pg_catalog.unnest(p.polroles) g
                                         WHERE g OPERATOR(pg_catalog.=) 0
                                            OR pg_catalog.pg_has_role(r.oid, g, 'MEMBER')))
             AND NOT EXISTS (SELECT 1 FROM judged_policies p
                              WHERE p.polrelid OPERATOR(pg_catalog.=) t.oid
                                AND ((p.polpermissive AND NOT p.is_tenant_policy) OR NOT p.catalog_only)
                                AND EXISTS (SELECT 1 FROM pg_catalog.unnest(p.polroles) g
                                             WHERE g OPERATOR(pg_catalog.=) 0
                                                OR pg_catalog.pg_has_role(r.oid, g, 'MEMBER'))),
             false)
)
SELECT 'table' AS kind, NULL AS rule, name AS subject, NULL AS detail FROM tenant_tables
UNION ALL
SELECT 'role', NULL, name, NULL FROM me
UNION ALL
SELECT 'database', NULL, name, NULL FROM this_database
UNION ALL
SELECT 'fail', 'role-not-superuser', pg_catalog.format('role %s', name), NULL FROM me WHERE rolsuper
UNION ALL
SELECT 'fail', 'role-no-bypassrls', pg_catalog.format('role %s', name), NULL FROM me WHERE rolbypassrls
UNION ALL
SELECT 'fail', 'role-no-createrole-createdb', pg_catalog.format('role %s', name),
       pg_catalog.concat_ws(', ', CASE WHEN rolcreaterole THEN 'CREATEROLE' END, CASE WHEN rolcreatedb THEN 'CREATEDB' END)
  FROM me WHERE rolcreaterole OR rolcreatedb
UNION ALL
SELECT 'fail', 'role-no-privileged-membership', pg_catalog.format('role %s', (SELECT name FROM me)),
       pg_catalog.format('member of %s', r.name)
  FROM my_roles r
 WHERE r.oid OPERATOR(pg_catalog.<>) (SELECT oid FROM me)
   AND (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolcreatedb
        OR r.name OPERATOR(pg_catalog.=) ANY (
             '{pg_read_all_data,pg_write_all_data,pg_read_server_files,pg_write_server_files,pg_execute_server_program,pg_database_owner,rds_superuser,azure_pg_admin,cloudsqlsuperuser}'::pg_catalog.text[]))
UNION ALL
SELECT 'fail', 'role-no-replication-or-monitoring', pg_catalog.format('role %s', m.name),
       pg_catalog.concat_ws(', ', CASE WHEN m.rolreplication THEN 'REPLICATION' END, w.roles)
  FROM me m,
       LATERAL (SELECT 'member of ' OPERATOR(pg_catalog.||) pg_catalog.string_agg(r.name, ', ' ORDER BY r.name) AS roles
                  FROM my_roles r
                 WHERE r.name OPERATOR(pg_catalog.=) ANY (
                         '{rds_replication,pg_read_all_stats,pg_monitor}'::pg_catalog.text[])) w
 WHERE m.rolreplication OR w.roles IS NOT NULL
UNION ALL
SELECT 'fail', 'role-owns-nothing', pg_catalog.format('role %s', (SELECT name FROM me)),
       pg_catalog.format('owns %s', o.what)
  FROM (
    SELECT rn.name AS what, c.relowner AS owner
      FROM pg_catalog.pg_class c
      JOIN user_schemas n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
      JOIN rel_names rn ON rn.oid OPERATOR(pg_catalog.=) c.oid
     WHERE NOT (c.oid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tenant_tables))
       -- indexes and TOAST follow their table's owner
       AND NOT (c.relkind OPERATOR(pg_catalog.=) ANY ('{i,I,t}'::pg_catalog."char"[]))
    UNION ALL
    SELECT pg_catalog.format('function %I.%I(%s)', n.nspname, p.proname,
                             pg_catalog.oidvectortypes(p.proargtypes)), p.proowner
      FROM pg_catalog.pg_proc p JOIN user_schemas n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
    UNION ALL
    SELECT pg_catalog.format('schema %I', n.nspname), n.nspowner
      FROM pg_catalog.pg_namespace n
    UNION ALL
    SELECT pg_catalog.format('database %I', d.name), d.datdba FROM this_database d
  ) o
 WHERE o.owner OPERATOR(pg_catalog.=) ANY (SELECT oid FROM my_roles)
UNION ALL
SELECT 'fail', 'role-no-create', s.what, NULL
  FROM (SELECT pg_catalog.format('database %s', d.name) AS what FROM this_database d
         WHERE pg_catalog.has_database_privilege(d.oid, 'CREATE')
        UNION ALL
        SELECT pg_catalog.format('schema %s', pg_catalog.quote_ident(n.nspname)) FROM user_schemas n
         WHERE pg_catalog.has_schema_privilege(n.oid, 'CREATE')) s
UNION ALL
SELECT 'fail', 'no-default-tenant',
       CASE WHEN s.setrole OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format('database %s', (SELECT name FROM this_database))
            ELSE pg_catalog.format('role %s', (SELECT name FROM me)) END,
       c
  FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
 WHERE (s.setdatabase OPERATOR(pg_catalog.=) 0 OR s.setdatabase OPERATOR(pg_catalog.=) (SELECT oid FROM this_database))
   AND (s.setrole OPERATOR(pg_catalog.=) 0 OR s.setrole OPERATOR(pg_catalog.=) (SELECT oid FROM me))
   AND pg_catalog.starts_with(c, 'app.current_tenant=')
UNION ALL
SELECT 'fail', 'no-default-tenant', 'session',
       pg_catalog.format('app.current_tenant is %L before any transaction set it',
                         pg_catalog.current_setting('app.current_tenant', true))
 WHERE coalesce(pg_catalog.current_setting('app.current_tenant', true), '') OPERATOR(pg_catalog.<>) ''
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
                    WHERE (s.setdatabase OPERATOR(pg_catalog.=) 0 OR s.setdatabase OPERATOR(pg_catalog.=) (SELECT oid FROM this_database))
                      AND (s.setrole OPERATOR(pg_catalog.=) 0 OR s.setrole OPERATOR(pg_catalog.=) (SELECT oid FROM me))
                      AND pg_catalog.starts_with(c, 'app.current_tenant='))
UNION ALL
SELECT 'fail', 'no-search-path-setting',
       CASE WHEN s.setrole OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format('database %s', (SELECT name FROM this_database))
            ELSE pg_catalog.format('role %s', (SELECT name FROM me)) END,
       c
  FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
 WHERE (s.setdatabase OPERATOR(pg_catalog.=) 0 OR s.setdatabase OPERATOR(pg_catalog.=) (SELECT oid FROM this_database))
   AND (s.setrole OPERATOR(pg_catalog.=) 0 OR s.setrole OPERATOR(pg_catalog.=) (SELECT oid FROM me))
   AND pg_catalog.starts_with(c, 'search_path=')
UNION ALL
SELECT 'fail', 'no-search-path-setting', 'session',
       pg_catalog.format('search_path is %L, not the default %L', pg_catalog.current_setting('search_path'), g.boot_val)
  FROM pg_catalog.pg_settings g
 WHERE g.name OPERATOR(pg_catalog.=) 'search_path'
   AND pg_catalog.current_setting('search_path') OPERATOR(pg_catalog.<>) g.boot_val
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
                    WHERE (s.setdatabase OPERATOR(pg_catalog.=) 0 OR s.setdatabase OPERATOR(pg_catalog.=) (SELECT oid FROM this_database))
                      AND (s.setrole OPERATOR(pg_catalog.=) 0 OR s.setrole OPERATOR(pg_catalog.=) (SELECT oid FROM me))
                      AND pg_catalog.starts_with(c, 'search_path='))
UNION ALL
SELECT 'fail', 'table-rls-enabled', pg_catalog.format('table %s', name), NULL FROM tenant_tables WHERE NOT relrowsecurity
UNION ALL
SELECT 'fail', 'table-rls-forced', pg_catalog.format('table %s', name), NULL FROM tenant_tables WHERE NOT relforcerowsecurity
UNION ALL
SELECT 'fail', 'table-not-owned', pg_catalog.format('table %s', name), NULL FROM tenant_tables
 WHERE relowner OPERATOR(pg_catalog.=) ANY (SELECT oid FROM my_roles)
UNION ALL
SELECT 'fail', 'table-tenant-id-type', pg_catalog.format('table %s', name),
       pg_catalog.format('tenant_id is %s', tenant_type)
  FROM tenant_tables WHERE NOT tenant_type_ok
UNION ALL
SELECT 'fail', 'table-tenant-id-deterministic', pg_catalog.format('table %s', t.name),
       pg_catalog.format('tenant_id has the nondeterministic collation %I.%I', n.nspname, l.collname)
  FROM tenant_tables t
  JOIN pg_catalog.pg_collation l ON l.oid OPERATOR(pg_catalog.=) t.tenant_collation
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) l.collnamespace
 WHERE NOT t.tenant_collation_ok
UNION ALL
SELECT 'fail', 'table-no-truncate-references-trigger', pg_catalog.format('table %s', name),
       pg_catalog.concat_ws(', ', CASE WHEN pg_catalog.has_table_privilege(oid, 'TRUNCATE') THEN 'TRUNCATE' END,
                                  CASE WHEN pg_catalog.has_table_privilege(oid, 'REFERENCES') THEN 'REFERENCES' END,
                                  CASE WHEN pg_catalog.has_table_privilege(oid, 'TRIGGER') THEN 'TRIGGER' END)
  FROM tenant_tables
 WHERE NOT (relowner OPERATOR(pg_catalog.=) ANY (SELECT oid FROM my_roles))  -- an owner is table-not-owned's finding
   AND (pg_catalog.has_table_privilege(oid, 'TRUNCATE') OR pg_catalog.has_table_privilege(oid, 'REFERENCES')
        OR pg_catalog.has_table_privilege(oid, 'TRIGGER'))
UNION ALL
SELECT 'fail', 'table-tenant-policy', pg_catalog.format('table %s', t.name),
       CASE
         WHEN p.polname IS NULL THEN
           CASE WHEN EXISTS (SELECT 1 FROM policies q WHERE q.polrelid OPERATOR(pg_catalog.=) t.oid AND q.is_tenant_policy)
                THEN pg_catalog.format('%s does not apply to this role', $1)
                ELSE pg_catalog.format('no %s', $1) END
         WHEN NOT p.polpermissive THEN pg_catalog.format('%s is RESTRICTIVE', $1)
         WHEN p.polcmd OPERATOR(pg_catalog.<>) '*' THEN pg_catalog.format('%s is not FOR ALL', $1)
         WHEN NOT p.using_ok
           THEN pg_catalog.format('USING %s does not isolate tenants', coalesce(p.using_expr, '(none)'))
         ELSE pg_catalog.format('WITH CHECK %s does not isolate tenants', p.check_expr)
       END
  FROM tenant_tables t
  LEFT JOIN applying_policies p ON p.polrelid OPERATOR(pg_catalog.=) t.oid AND p.is_tenant_policy
 WHERE p.polname IS NULL OR NOT p.polpermissive OR p.polcmd OPERATOR(pg_catalog.<>) '*'
    OR NOT p.using_ok OR NOT p.check_ok
UNION ALL
SELECT 'fail', 'table-one-permissive-policy', pg_catalog.format('table %s', p.table_name),
       pg_catalog.format('also %s', p.polname)
  FROM applying_policies p WHERE p.polpermissive AND NOT p.is_tenant_policy
UNION ALL
SELECT 'fail', 'table-policy-pg-catalog-only', pg_catalog.format('table %s', p.table_name),
       pg_catalog.format('policy %s calls %s', p.polname, pg_catalog.string_agg(r.what, ', ' ORDER BY r.what))
  FROM applying_policies p JOIN policy_refs r ON r.policy OPERATOR(pg_catalog.=) p.oid
 GROUP BY p.table_name, p.polname
UNION ALL
SELECT 'fail', 'no-rls-bypassing-view', rn.name, pg_catalog.string_agg(DISTINCT u.what, '; ')
  FROM unbound u JOIN rel_names rn ON rn.oid OPERATOR(pg_catalog.=) u.entry
 WHERE u.via OPERATOR(pg_catalog.=) 0
 GROUP BY rn.name
UNION ALL
SELECT 'fail', 'no-rls-bypassing-function',
       pg_catalog.format('function %I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)),
       CASE WHEN o.rolsuper OR o.rolbypassrls THEN pg_catalog.format('SECURITY DEFINER, owned by %s', o.rolname)
            ELSE pg_catalog.format('SECURITY DEFINER, owned by %s: %s', o.rolname,
                   (SELECT pg_catalog.string_agg(DISTINCT u.what, '; ') FROM unbound u
                     WHERE u.via OPERATOR(pg_catalog.=) p.oid)) END
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
  JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) p.proowner
 WHERE p.prosecdef AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
   AND (o.rolsuper OR o.rolbypassrls
        OR EXISTS (SELECT 1 FROM unbound u WHERE u.via OPERATOR(pg_catalog.=) p.oid))
UNION ALL
SELECT 'fail', 'no-foreign-table', rn.name, NULL
  FROM pg_catalog.pg_class c JOIN rel_names rn ON rn.oid OPERATOR(pg_catalog.=) c.oid
 WHERE c.relkind OPERATOR(pg_catalog.=) 'f'
   AND (pg_catalog.has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')
        OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE'))
UNION ALL
SELECT 'fail', 'no-parent-without-tenant-id', t.described,
       (SELECT pg_catalog.format('parent of %s', pg_catalog.string_agg(cn.qualified, ', ' ORDER BY cn.qualified))
          FROM pg_catalog.pg_inherits i JOIN rel_names cn ON cn.oid OPERATOR(pg_catalog.=) i.inhrelid
         WHERE i.inhparent OPERATOR(pg_catalog.=) t.oid)
  FROM tenant_data t
 WHERE t.tenant_att IS NULL
   AND t.relkind OPERATOR(pg_catalog.<>) 'f'  -- a foreign table is no-foreign-table's finding
   AND (pg_catalog.has_table_privilege(t.oid, 'SELECT, INSERT, UPDATE, DELETE')
        OR pg_catalog.has_any_column_privilege(t.oid, 'SELECT, INSERT, UPDATE'))
UNION ALL
SELECT 'fail', 'fk-includes-tenant', pg_catalog.format('table %s', t.name),
       pg_catalog.format('foreign key %I references %s without tenant_id', k.conname, r.name)
  FROM pg_catalog.pg_constraint k
  JOIN tenant_tables t ON t.oid OPERATOR(pg_catalog.=) k.conrelid
  JOIN tenant_tables r ON r.oid OPERATOR(pg_catalog.=) k.confrelid
 WHERE k.contype OPERATOR(pg_catalog.=) 'f'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.generate_subscripts(k.conkey, 1) i
                    WHERE k.conkey[i] OPERATOR(pg_catalog.=) t.tenant_att
                      AND k.confkey[i] OPERATOR(pg_catalog.=) r.tenant_att)
UNION ALL
SELECT 'fail', 'unique-includes-tenant', pg_catalog.format('table %s', t.name),
       pg_catalog.format('unique index %s does not include tenant_id', x.qualified)
  FROM pg_catalog.pg_index i
  JOIN tenant_tables t ON t.oid OPERATOR(pg_catalog.=) i.indrelid
  JOIN rel_names x ON x.oid OPERATOR(pg_catalog.=) i.indexrelid
 WHERE i.indisunique AND NOT (t.tenant_att OPERATOR(pg_catalog.=) ANY (i.indkey::pg_catalog.int2[]))
UNION ALL
SELECT 'fail', 'role-reads-only-tenant-tables', rn.name,
       CASE WHEN coalesce(pg_catalog.starts_with(pg_catalog.obj_description(c.oid, 'pg_class'), 'shared:'), false)
            THEN 'marked shared, but the role may change it'
            ELSE 'no tenant_id, not marked shared, and the role may use it' END
  FROM pg_catalog.pg_class c
  JOIN user_schemas n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN rel_names rn ON rn.oid OPERATOR(pg_catalog.=) c.oid
 WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog."char"[])
   AND NOT (c.oid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tenant_data))
   AND NOT coalesce(pg_catalog.starts_with(pg_catalog.obj_description(c.oid, 'pg_class'), 'trail:'), false)
   AND pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')
   AND CASE WHEN coalesce(pg_catalog.starts_with(pg_catalog.obj_description(c.oid, 'pg_class'), 'shared:'), false)
            THEN pg_catalog.has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
              OR pg_catalog.has_any_column_privilege(c.oid, 'INSERT, UPDATE')
            ELSE pg_catalog.has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
              OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE') END
UNION ALL
-- The operator trail (a table whose comment starts with 'trail:', in any
-- schema, reachable or not): the application role may not use it in any
-- way; the control plane's role may only append to it.
SELECT 'fail', 'trail-out-of-reach-or-append-only', rn.name,
       CASE WHEN $4::pg_catalog.bool THEN 'the role may read, change or truncate the trail'
            ELSE 'the role may use the trail' END
  FROM pg_catalog.pg_class c
  JOIN rel_names rn ON rn.oid OPERATOR(pg_catalog.=) c.oid
 WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog."char"[])
   AND coalesce(pg_catalog.starts_with(pg_catalog.obj_description(c.oid, 'pg_class'), 'trail:'), false)
   AND CASE WHEN $4::pg_catalog.bool
            THEN pg_catalog.has_table_privilege(c.oid, 'SELECT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
              OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT, UPDATE, REFERENCES')
            ELSE pg_catalog.has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
              OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE, REFERENCES') END
UNION ALL
SELECT 'fail', 'role-has-what-it-needs', pg_catalog.format('table %s', x.t),
       CASE WHEN pg_catalog.to_regclass(x.t) IS NULL THEN 'no such table'
            ELSE pg_catalog.format('lacks %s', pg_catalog.string_agg(x.p, ', ')) END
  FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[])) x(t, p)
 WHERE pg_catalog.to_regclass(x.t) IS NULL
    OR NOT (pg_catalog.has_table_privilege(pg_catalog.to_regclass(x.t), x.p)
            OR (x.p OPERATOR(pg_catalog.=) ANY ('{SELECT,INSERT,UPDATE}'::pg_catalog.text[])
                AND pg_catalog.has_any_column_privilege(pg_catalog.to_regclass(x.t), x.p)))
 GROUP BY x.t
