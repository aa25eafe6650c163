-- The isolation self-audit, as one statement (one round trip per new
-- connection). It returns the tenant tables, the role and database
-- names, and one 'fail' row per finding: (kind, rule, subject, detail).
-- Rule ids and their wording live in src/audit.rs; $1 is the policy name.
-- Only catalogs and the session's own settings are read.
WITH me AS (
    SELECT oid, rolname::text AS name, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb
      FROM pg_roles WHERE rolname = current_user
), my_roles AS (
    SELECT r.oid, r.rolname::text AS name, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb
      FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'MEMBER')
), user_schemas AS (
    SELECT n.oid, n.nspname FROM pg_namespace n
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
), tenant_tables AS (
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relowner,
           c.relrowsecurity, c.relforcerowsecurity, a.attnum AS tenant_att,
           format_type(a.atttypid, a.atttypmod) AS tenant_type
      FROM pg_class c
      JOIN user_schemas n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
     WHERE c.relkind IN ('r', 'p') AND has_schema_privilege(n.oid, 'USAGE')
), applying_policies AS (
    -- Policies that apply to the connected role: TO PUBLIC or to a role it is a member of.
    SELECT p.*, t.name AS table_name, t.tenant_type,
           pg_get_expr(p.polqual, p.polrelid) AS using_expr,
           pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
      FROM pg_policy p JOIN tenant_tables t ON t.oid = p.polrelid
     WHERE p.polroles && (ARRAY[0::oid] || ARRAY(SELECT oid FROM my_roles))
), canonical AS (
    SELECT t.oid, e.expr
      FROM tenant_tables t,
           LATERAL (VALUES ('current_setting(''app.current_tenant''::text, true)')) s(setting),
           LATERAL (SELECT CASE WHEN t.tenant_type = 'text' THEN s.setting
                                ELSE format('(%s)::%s', s.setting, t.tenant_type) END AS typed) x,
           LATERAL (VALUES (format('(tenant_id = %s)', x.typed)),
                           (format('(%s = tenant_id)', x.typed)),
                           (format('((tenant_id)::text = %s)', s.setting)),
                           (format('(%s = (tenant_id)::text)', s.setting))) e(expr)
), exposing AS (
    -- Views and materialized views through which tenant rows can be read
    -- without the reader's own RLS: a matview (its rows were computed once,
    -- for whoever refreshed it), or a view that runs as an owner who is
    -- not subject to RLS; and any non-invoker view over such a view.
    WITH RECURSIVE deps AS (
        SELECT DISTINCT r.ev_class AS view, d.refobjid AS ref
          FROM pg_rewrite r
          JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
    ), views AS (
        SELECT c.oid, c.relkind, c.relowner,
               EXISTS (SELECT 1 FROM unnest(c.reloptions) o
                        WHERE lower(o) IN ('security_invoker=true', 'security_invoker=on',
                                           'security_invoker=1', 'security_invoker=yes')) AS invoker,
               EXISTS (SELECT 1 FROM pg_roles o WHERE o.oid = c.relowner
                          AND NOT o.rolsuper AND NOT o.rolbypassrls) AS owner_subject_to_rls
          FROM pg_class c WHERE c.relkind IN ('v', 'm')
    ), walk(oid) AS (
        SELECT v.oid FROM deps d JOIN views v ON v.oid = d.view
         WHERE d.ref IN (SELECT oid FROM tenant_tables)
           AND (v.relkind = 'm' OR NOT (v.invoker OR v.owner_subject_to_rls))
        UNION
        SELECT v.oid FROM deps d JOIN walk w ON w.oid = d.ref JOIN views v ON v.oid = d.view
         WHERE v.relkind = 'm' OR NOT v.invoker
    )
    SELECT oid FROM walk
)
SELECT 'table' AS kind, NULL AS rule, name AS subject, NULL AS detail FROM tenant_tables
UNION ALL
SELECT 'role', NULL, name, NULL FROM me
UNION ALL
SELECT 'database', NULL, current_database(), NULL
UNION ALL
SELECT 'fail', 'role-not-superuser', 'role ' || name, NULL FROM me WHERE rolsuper
UNION ALL
SELECT 'fail', 'role-no-bypassrls', 'role ' || name, NULL FROM me WHERE rolbypassrls
UNION ALL
SELECT 'fail', 'role-no-createrole-createdb', 'role ' || name,
       concat_ws(', ', CASE WHEN rolcreaterole THEN 'CREATEROLE' END, CASE WHEN rolcreatedb THEN 'CREATEDB' END)
  FROM me WHERE rolcreaterole OR rolcreatedb
UNION ALL
SELECT 'fail', 'role-no-privileged-membership', 'role ' || (SELECT name FROM me),
       'member of ' || r.name
  FROM my_roles r
 WHERE r.name <> current_user
   AND (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolcreatedb
        OR r.name IN ('pg_read_all_data', 'pg_write_all_data', 'pg_read_server_files',
                      'pg_write_server_files', 'pg_execute_server_program',
                      'pg_database_owner', 'rds_superuser', 'azure_pg_admin', 'cloudsqlsuperuser'))
UNION ALL
SELECT 'fail', 'role-owns-nothing', 'role ' || (SELECT name FROM me), 'owns ' || o.what
  FROM (
    SELECT pg_describe_object('pg_class'::regclass, c.oid, 0) AS what, c.relowner AS owner
      FROM pg_class c JOIN user_schemas n ON n.oid = c.relnamespace
     WHERE c.oid NOT IN (SELECT oid FROM tenant_tables)
       AND c.relkind NOT IN ('i', 'I', 't')  -- indexes and TOAST follow their table's owner
    UNION ALL
    SELECT pg_describe_object('pg_proc'::regclass, p.oid, 0), p.proowner
      FROM pg_proc p JOIN user_schemas n ON n.oid = p.pronamespace
    UNION ALL
    SELECT pg_describe_object('pg_namespace'::regclass, n.oid, 0), n.nspowner
      FROM pg_namespace n
    UNION ALL
    SELECT pg_describe_object('pg_database'::regclass, d.oid, 0), d.datdba
      FROM pg_database d WHERE d.datname = current_database()
  ) o
 WHERE o.owner IN (SELECT oid FROM my_roles)
UNION ALL
SELECT 'fail', 'role-no-create', s.what, NULL
  FROM (SELECT 'database ' || current_database() AS what
         WHERE has_database_privilege(current_database(), 'CREATE')
        UNION ALL
        SELECT 'schema ' || quote_ident(n.nspname) FROM user_schemas n
         WHERE has_schema_privilege(n.oid, 'CREATE')) s
UNION ALL
SELECT 'fail', 'no-default-tenant',
       CASE WHEN s.setrole = 0 THEN 'database ' || current_database()
            ELSE 'role ' || (SELECT rolname FROM pg_roles WHERE oid = s.setrole) END,
       c
  FROM pg_db_role_setting s, unnest(s.setconfig) c
 WHERE (s.setdatabase = 0 OR s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))
   AND (s.setrole = 0 OR s.setrole = (SELECT oid FROM me))
   AND c LIKE 'app.current\_tenant=%'
UNION ALL
SELECT 'fail', 'no-default-tenant', 'session',
       format('app.current_tenant is %L before any transaction set it', current_setting('app.current_tenant', true))
 WHERE coalesce(current_setting('app.current_tenant', true), '') <> ''
   AND NOT EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c
                    WHERE (s.setdatabase = 0 OR s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()))
                      AND (s.setrole = 0 OR s.setrole = (SELECT oid FROM me))
                      AND c LIKE 'app.current\_tenant=%')
UNION ALL
SELECT 'fail', 'table-rls-enabled', 'table ' || name, NULL FROM tenant_tables WHERE NOT relrowsecurity
UNION ALL
SELECT 'fail', 'table-rls-forced', 'table ' || name, NULL FROM tenant_tables WHERE NOT relforcerowsecurity
UNION ALL
SELECT 'fail', 'table-not-owned', 'table ' || name, NULL FROM tenant_tables
 WHERE relowner IN (SELECT oid FROM my_roles)
UNION ALL
SELECT 'fail', 'table-no-truncate-references-trigger', 'table ' || name,
       concat_ws(', ', CASE WHEN has_table_privilege(oid, 'TRUNCATE') THEN 'TRUNCATE' END,
                       CASE WHEN has_table_privilege(oid, 'REFERENCES') THEN 'REFERENCES' END,
                       CASE WHEN has_table_privilege(oid, 'TRIGGER') THEN 'TRIGGER' END)
  FROM tenant_tables
 WHERE relowner NOT IN (SELECT oid FROM my_roles)  -- an owner is table-not-owned's finding
   AND (has_table_privilege(oid, 'TRUNCATE') OR has_table_privilege(oid, 'REFERENCES')
        OR has_table_privilege(oid, 'TRIGGER'))
UNION ALL
SELECT 'fail', 'table-tenant-policy', 'table ' || t.name,
       CASE
         WHEN p.polname IS NULL THEN
           CASE WHEN EXISTS (SELECT 1 FROM pg_policy q WHERE q.polrelid = t.oid AND q.polname = $1)
                THEN $1 || ' does not apply to this role'
                ELSE 'no ' || $1 END
         WHEN NOT p.polpermissive THEN $1 || ' is RESTRICTIVE'
         WHEN p.polcmd <> '*' THEN $1 || ' is not FOR ALL'
         WHEN p.using_expr IS NULL
              OR p.using_expr NOT IN (SELECT expr FROM canonical c WHERE c.oid = t.oid)
           THEN format('USING %s does not isolate tenants', coalesce(p.using_expr, '(none)'))
         ELSE format('WITH CHECK %s does not isolate tenants', p.check_expr)
       END
  FROM tenant_tables t
  LEFT JOIN applying_policies p ON p.polrelid = t.oid AND p.polname = $1
 WHERE p.polname IS NULL OR NOT p.polpermissive OR p.polcmd <> '*'
    OR p.using_expr IS NULL
    OR p.using_expr NOT IN (SELECT expr FROM canonical c WHERE c.oid = t.oid)
    OR (p.check_expr IS NOT NULL AND p.check_expr NOT IN (SELECT expr FROM canonical c WHERE c.oid = t.oid))
UNION ALL
SELECT 'fail', 'table-one-permissive-policy', 'table ' || p.table_name, 'also ' || p.polname
  FROM applying_policies p WHERE p.polpermissive AND p.polname <> $1
UNION ALL
SELECT 'fail', 'no-rls-bypassing-view', pg_describe_object('pg_class'::regclass, c.oid, 0), NULL
  FROM pg_class c
 WHERE c.oid IN (SELECT oid FROM exposing)
   AND has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')
UNION ALL
SELECT 'fail', 'no-rls-bypassing-function', pg_describe_object('pg_proc'::regclass, p.oid, 0),
       'SECURITY DEFINER, owned by ' || o.rolname
  FROM pg_proc p
  JOIN user_schemas n ON n.oid = p.pronamespace
  JOIN pg_roles o ON o.oid = p.proowner
 WHERE p.prosecdef AND (o.rolsuper OR o.rolbypassrls)
   AND has_function_privilege(p.oid, 'EXECUTE')
UNION ALL
SELECT 'fail', 'fk-includes-tenant', 'table ' || t.name,
       format('foreign key %I references %s without tenant_id', k.conname, r.name)
  FROM pg_constraint k
  JOIN tenant_tables t ON t.oid = k.conrelid
  JOIN tenant_tables r ON r.oid = k.confrelid
 WHERE k.contype = 'f'
   AND NOT EXISTS (SELECT 1 FROM generate_subscripts(k.conkey, 1) i
                    WHERE k.conkey[i] = t.tenant_att AND k.confkey[i] = r.tenant_att)
UNION ALL
SELECT 'fail', 'unique-includes-tenant', 'table ' || t.name,
       format('unique index %s does not include tenant_id', i.indexrelid::regclass)
  FROM pg_index i JOIN tenant_tables t ON t.oid = i.indrelid
 WHERE i.indisunique AND NOT (t.tenant_att = ANY (i.indkey::int2[]))
