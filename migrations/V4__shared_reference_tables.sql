-- Tables without tenant_id that every tenant may read are declared, not
-- assumed: a comment starting with "shared:" says the table holds no
-- tenant's data. `migrate` grants the application role SELECT on exactly
-- these (and the tenant tables, found by their tenant_id column), and the
-- self-audit's `role-reads-only-tenant-tables` fails for any other table
-- without tenant_id that the role can read or write.
COMMENT ON TABLE tenant_tiers IS
    'shared: the tiers and their limits, the same for every tenant; no tenant data';
