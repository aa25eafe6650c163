-- Pooled model: every tenant's users in one table, keyed by tenant first so
-- that indexes (and a future shard key) lead with the tenant.
CREATE TABLE users (
    tenant_id  text        NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    user_id    uuid        NOT NULL DEFAULT gen_random_uuid(),
    email      text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

-- The same address may exist in two tenants, but only once per tenant,
-- whatever its case.
CREATE UNIQUE INDEX users_tenant_email_key ON users (tenant_id, lower(email));

-- Keyset pagination: GET /users walks (created_at, user_id) within a tenant.
CREATE INDEX users_tenant_created_idx ON users (tenant_id, created_at, user_id);

-- Isolation: the database itself hides other tenants' rows. FORCE makes the
-- policy apply to the table owner as well. With no tenant set,
-- current_setting(..., true) yields NULL or '' and nothing matches.
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_policy ON users
    FOR ALL
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));
