-- A tenant moved to another tier keeps its bucket, clamped to the new
-- burst. One moved from a tier without a rate limit (unlimited, whose
-- bucket the registry keeps at 0) starts the new tier with a full bucket,
-- as a newly registered tenant does, instead of an empty one.
CREATE FUNCTION public.tenant_rate_on_tier_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE public.tenant_rate r
       SET tokens = CASE WHEN o.burst IS NULL THEN coalesce(n.burst, 0)
                         ELSE least(r.tokens, coalesce(n.burst, 0)) END,
           refilled_at = CASE WHEN o.burst IS NULL THEN clock_timestamp()
                              ELSE r.refilled_at END
      FROM public.tenant_tiers o, public.tenant_tiers n
     WHERE r.tenant_id = NEW.tenant_id AND o.tier = OLD.tier AND n.tier = NEW.tier;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_rate_on_tier_change
    AFTER UPDATE OF tier ON tenants
    FOR EACH ROW WHEN (OLD.tier IS DISTINCT FROM NEW.tier)
    EXECUTE FUNCTION public.tenant_rate_on_tier_change();
