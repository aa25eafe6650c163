-- The operator trail: one row per control-plane action (onboard, suspend,
-- resume, tier change, export, offboard), written in the same transaction as
-- the change it records, and kept after the tenant is gone (an offboarding's
-- receipt lives here). It is the operators' record, not tenant data: it has
-- no tenant_id column (offboarding must not purge it, and no tenant may
-- read it), and it lives in a schema of its own.
--
-- Append-only: `migrate` grants the control plane's role USAGE on the schema
-- and INSERT on the table, nothing else; the application role gets nothing
-- here, and the self-audit (rule `trail-out-of-reach-or-append-only`)
-- proves both on every connection. The triggers below refuse UPDATE, DELETE
-- and TRUNCATE to every role but a superuser that drops them first.
CREATE SCHEMA control;
REVOKE ALL ON SCHEMA control FROM PUBLIC;

CREATE TABLE control.operator_trail (
    entry_id    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The IAM principal API Gateway verified (SigV4), e.g. an assumed role's ARN.
    operator    text        NOT NULL CHECK (length(operator) BETWEEN 1 AND 2048),
    action      text        NOT NULL CHECK (action IN
                              ('onboard', 'suspend', 'resume', 'update', 'export', 'offboard')),
    -- The tenant acted on (not `tenant_id`: this is not the tenant's data).
    tenant      text        NOT NULL CHECK (tenant ~ '^[A-Za-z0-9._-]{1,64}$'),
    request_id  text        NOT NULL CHECK (length(request_id) BETWEEN 1 AND 256),
    outcome     text        NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'compensated')),
    detail      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX operator_trail_tenant ON control.operator_trail (tenant, at);

COMMENT ON TABLE control.operator_trail IS
    'trail: control-plane actions, append-only; no tenant data, out of the application role''s reach';

CREATE FUNCTION control.operator_trail_append_only()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'control.operator_trail is append-only (% refused)', TG_OP
        USING ERRCODE = '42501';
END
$$;
REVOKE ALL ON FUNCTION control.operator_trail_append_only() FROM PUBLIC;

CREATE TRIGGER operator_trail_no_update_or_delete
    BEFORE UPDATE OR DELETE ON control.operator_trail
    FOR EACH ROW EXECUTE FUNCTION control.operator_trail_append_only();
CREATE TRIGGER operator_trail_no_truncate
    BEFORE TRUNCATE ON control.operator_trail
    FOR EACH STATEMENT EXECUTE FUNCTION control.operator_trail_append_only();
