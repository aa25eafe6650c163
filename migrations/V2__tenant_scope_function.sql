-- The one way the application sets its tenant: a function call, so the
-- statement text carries no SET or set_config. RDS Proxy pins a client to
-- its server connection when it sees SET statements (for PostgreSQL, also
-- set_config in the statement text), which would defeat multiplexing; a
-- call of a function does not. Both settings are transaction-local
-- (is_local = true), exactly like SET LOCAL, and vanish at COMMIT/ROLLBACK.
-- The tenant is checked here too, so a bad value fails the transaction
-- before any query runs.
CREATE FUNCTION public.app_set_tenant(tenant text, timeout_ms integer)
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    IF tenant IS NULL OR tenant !~ '^[A-Za-z0-9._-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid tenant id' USING ERRCODE = '22023';
    END IF;
    IF timeout_ms IS NULL OR timeout_ms < 0 THEN
        RAISE EXCEPTION 'invalid statement timeout' USING ERRCODE = '22023';
    END IF;
    PERFORM pg_catalog.set_config('app.current_tenant', tenant, true);
    PERFORM pg_catalog.set_config('statement_timeout', timeout_ms::text, true);
END
$$;

REVOKE ALL ON FUNCTION public.app_set_tenant(text, integer) FROM PUBLIC;
