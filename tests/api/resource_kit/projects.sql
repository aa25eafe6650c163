-- A test-only migration: the `projects` resource, as the README's guide
-- ("Add a tenant-scoped resource") says to write one. Constraint names are
-- PostgreSQL's defaults (<table>_<columns>_key, _fkey): the API names the
-- field at fault from them.
CREATE TABLE projects (
    tenant_id     text        NOT NULL,
    project_id    uuid        NOT NULL DEFAULT gen_random_uuid(),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    owner_user_id uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, project_id),
    UNIQUE (tenant_id, name),
    -- The tenant is part of the key: a project can only be owned by a user
    -- of its own tenant. Without ON DELETE, deleting that user is 409.
    FOREIGN KEY (tenant_id, owner_user_id) REFERENCES users (tenant_id, user_id)
);

CREATE INDEX projects_tenant_created_idx ON projects (tenant_id, created_at, project_id);

ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_policy ON projects
    FOR ALL
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));
