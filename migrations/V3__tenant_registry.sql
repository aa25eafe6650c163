-- The tenant registry: which tenants exist, whether they may be served, and
-- the limits of their tier. Checked inside every request's one round trip by
-- app_enter_tenant below: an unknown, suspended or offboarded tenant is
-- refused before any query runs, and the tier's rate, concurrency, statement
-- timeout and work_mem apply to the transaction.

-- A tier's limits. Not tenant data (no tenant_id): every role that may read
-- it sees the same price list.
CREATE TABLE tenant_tiers (
    tier                 text    PRIMARY KEY CHECK (tier ~ '^[a-z0-9-]{1,32}$'),
    -- Sustained requests per second across every execution environment, and
    -- the bucket's depth; both NULL: no rate limit.
    requests_per_second  numeric CHECK (requests_per_second > 0),
    burst                integer CHECK (burst >= 1),
    -- Transactions of one tenant running at once; NULL: no cap.
    max_concurrent       integer CHECK (max_concurrent BETWEEN 1 AND 1000),
    statement_timeout_ms integer NOT NULL CHECK (statement_timeout_ms > 0),
    work_mem_kb          integer NOT NULL CHECK (work_mem_kb BETWEEN 64 AND 2097151),
    CHECK ((requests_per_second IS NULL) = (burst IS NULL))
);

INSERT INTO tenant_tiers VALUES
    ('basic',     10,  20,  2,  2000,  4096),
    ('standard',  50, 100,  4,  5000,  8192),
    ('premium',  200, 400, 10, 10000, 32768),
    -- The operator's own tenants (and tests, benchmarks): no rate or cap.
    ('unlimited', NULL, NULL, NULL, 10000, 8192);

-- One row per tenant, kept after offboarding as its tombstone.
CREATE TABLE tenants (
    tenant_id  text        PRIMARY KEY CHECK (tenant_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    name       text        CHECK (length(name) BETWEEN 1 AND 200),
    status     text        NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'suspended', 'offboarded')),
    tier       text        NOT NULL DEFAULT 'standard' REFERENCES tenant_tiers (tier),
    -- The tenant's advisory-lock key for the concurrency cap: an integer,
    -- so no two tenants can share one (a hash of the id could collide).
    lock_key   integer     GENERATED ALWAYS AS IDENTITY,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Each tenant's token bucket, shared by every execution environment. An
-- environment takes tokens from it in batches (leases), so a hot tenant's row
-- is written once per batch, not once per request. Half-empty pages keep
-- those updates HOT (no index write).
CREATE TABLE tenant_rate (
    tenant_id   text             PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    refilled_at timestamptz      NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 50);

-- Both hold tenant data: the same isolation as users (the self-audit finds
-- them by their tenant_id column and holds them to the same rules).
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_policy ON tenants
    FOR ALL
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));

ALTER TABLE tenant_rate ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_rate FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_policy ON tenant_rate
    FOR ALL
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));

-- A new tenant starts with a full bucket.
CREATE FUNCTION public.tenant_rate_on_register()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO public.tenant_rate (tenant_id, tokens)
    SELECT NEW.tenant_id, coalesce(t.burst, 0)
      FROM public.tenant_tiers t WHERE t.tier = NEW.tier;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_rate_on_register AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION public.tenant_rate_on_register();

-- Every tenant that already has rows is registered, standard tier, so an
-- upgrade serves existing tenants as before. FORCEd RLS would hide every row
-- from the migrating role (the table owner, not a superuser on RDS); it is
-- lifted for this transaction only, and no other session sees it lifted.
ALTER TABLE users NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tenant_rate NO FORCE ROW LEVEL SECURITY;
ALTER TABLE users DISABLE ROW LEVEL SECURITY;
ALTER TABLE tenants DISABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_rate DISABLE ROW LEVEL SECURITY;
INSERT INTO tenants (tenant_id) SELECT DISTINCT tenant_id FROM users;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_rate ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE tenant_rate FORCE ROW LEVEL SECURITY;

-- The one way the application enters a tenant's scope. In one call, inside
-- the request's one round trip and before its statement runs:
--   1. the tenant is set transaction-locally (set_config(.., true), i.e. SET
--      LOCAL, inside a function so RDS Proxy sees no SET and does not pin);
--   2. the registry is read under that scope (RLS shows only this tenant's
--      row): unknown or offboarded -> SQLSTATE TU001, suspended -> TU002;
--   3. the tier's statement timeout (capped by the caller's) and work_mem
--      are set transaction-locally;
--   4. when the caller asks for `want` tokens (its local lease ran out), up
--      to that many are taken from the tenant's bucket; none left -> TU429,
--      DETAIL the milliseconds until one is. A concurrent lease of the same
--      tenant is never waited for: the last committed level decides;
--   5. the concurrency cap: one of the tier's max_concurrent transaction
--      advisory locks, released at COMMIT/ROLLBACK (nothing outlives the
--      transaction); all taken -> TU003, and a lease taken in step 4 is
--      rolled back with the rest.
-- Any refusal raises, so the transaction is aborted and the statement that
-- follows in the pipeline does not run. Returns the tokens granted (0 when
-- none were asked for; -1: the tier has no rate limit).
CREATE FUNCTION public.app_enter_tenant(tenant text, timeout_ms integer, want integer)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t_status  text;
    t_key     integer;
    rate      numeric;
    depth     integer;
    slots     integer;
    stmt_ms   integer;
    mem_kb    integer;
    have      double precision;
    at        timestamptz;
    now_      timestamptz;
    granted   integer;
    slot      integer;
    locked    boolean := false;
    contended boolean;
BEGIN
    IF tenant IS NULL OR tenant !~ '^[A-Za-z0-9._-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid tenant id' USING ERRCODE = '22023';
    END IF;
    IF timeout_ms IS NULL OR timeout_ms < 0 OR want IS NULL OR want < 0 THEN
        RAISE EXCEPTION 'invalid scope argument' USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('app.current_tenant', tenant, true);

    SELECT n.status, n.lock_key, t.requests_per_second, t.burst, t.max_concurrent,
           t.statement_timeout_ms, t.work_mem_kb
      INTO t_status, t_key, rate, depth, slots, stmt_ms, mem_kb
      FROM public.tenants n JOIN public.tenant_tiers t ON t.tier = n.tier
     WHERE n.tenant_id = tenant;
    IF NOT FOUND OR t_status = 'offboarded' THEN
        RAISE EXCEPTION 'tenant is not registered' USING ERRCODE = 'TU001';
    END IF;
    IF t_status <> 'active' THEN
        RAISE EXCEPTION 'tenant is suspended' USING ERRCODE = 'TU002';
    END IF;

    -- 0 means no timeout to PostgreSQL: the tier's applies then.
    IF timeout_ms > 0 THEN
        stmt_ms := least(stmt_ms, timeout_ms);
    END IF;
    PERFORM set_config('statement_timeout', stmt_ms::text, true);
    PERFORM set_config('work_mem', mem_kb::text || 'kB', true);

    -- The rate first: a refused lease must not hold one of the tenant's
    -- concurrency slots, however briefly.
    granted := 0;
    IF want > 0 AND rate IS NULL THEN
        granted := -1;
    ELSIF want > 0 THEN
        -- Never wait for another environment's lease of this tenant (its row
        -- lock lasts until its transaction ends, and a wait would hold a
        -- pooled connection everyone shares). Meanwhile the last committed
        -- level decides: with tokens to spare this request goes ahead
        -- without a lease (its environment asks again next time); without,
        -- it is refused.
        SELECT r.tokens, r.refilled_at INTO have, at
          FROM public.tenant_rate r WHERE r.tenant_id = tenant
           FOR UPDATE SKIP LOCKED;
        contended := NOT FOUND;
        IF contended THEN
            SELECT r.tokens, r.refilled_at INTO have, at
              FROM public.tenant_rate r WHERE r.tenant_id = tenant;
        END IF;
        IF have IS NULL THEN
            RAISE EXCEPTION 'tenant has no rate bucket' USING ERRCODE = 'TU001';
        END IF;
        now_ := clock_timestamp();
        have := least(depth::double precision,
                      have + greatest(extract(epoch FROM now_ - at)::double precision, 0)
                             * rate::double precision);
        IF have < 1 OR (contended AND have < want + 1) THEN
            RAISE EXCEPTION 'tenant is over its request rate'
                USING ERRCODE = 'TU429',
                      DETAIL = ceil(greatest(1 - have, 1) * 1000 / rate::double precision)::text;
        END IF;
        IF NOT contended THEN
            granted := least(want, floor(have)::integer);
            UPDATE public.tenant_rate SET tokens = have - granted, refilled_at = now_
             WHERE tenant_id = tenant;
        END IF;
    END IF;

    IF slots IS NOT NULL THEN
        FOR slot IN 0 .. slots - 1 LOOP
            IF pg_try_advisory_xact_lock(t_key, slot) THEN
                locked := true;
                EXIT;
            END IF;
        END LOOP;
        IF NOT locked THEN
            RAISE EXCEPTION 'tenant has too many transactions running'
                USING ERRCODE = 'TU003', DETAIL = '100';
        END IF;
    END IF;
    RETURN granted;
END
$$;

REVOKE ALL ON FUNCTION public.app_enter_tenant(text, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.tenant_rate_on_register() FROM PUBLIC;

-- The old entry point stays for functions deployed before this migration (a
-- deployment runs the migration before it updates the API function), now
-- through the registry too: one token per request, no lease.
CREATE OR REPLACE FUNCTION public.app_set_tenant(tenant text, timeout_ms integer)
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    PERFORM public.app_enter_tenant(tenant, timeout_ms, 1);
END
$$;
