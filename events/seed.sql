-- Rows the fixtures refer to by id (loaded by the fixture tests as the
-- superuser, which RLS does not restrict).
INSERT INTO users (tenant_id, user_id, email, name) VALUES
    ('acme',   '6f1c2a3e-8d4b-4c5a-9e7f-0a1b2c3d4e5f', 'ada@acme.test',    'Ada Lovelace'),
    ('acme',   '7a2d3b4f-9e5c-4d6b-8f80-1b2c3d4e5f60', 'alan@acme.test',   'Alan Turing'),
    ('acme',   '9c4f5d61-b07e-4f8d-a1a2-3d4e5f607182', 'grace@acme.test',  'Grace Hopper'),
    ('globex', '8b3e4c50-af6d-4e7c-9091-2c3d4e5f6071', 'hank@globex.test', 'Hank Scorpio');

-- The registry: acme and globex are served; initech is suspended (its users
-- get 403); umbrella was never registered (403 too, a different problem).
INSERT INTO tenants (tenant_id, tier, status) VALUES
    ('acme',    'standard', 'active'),
    ('globex',  'standard', 'active'),
    ('initech', 'standard', 'suspended')
ON CONFLICT (tenant_id) DO UPDATE SET tier = EXCLUDED.tier, status = EXCLUDED.status;

-- The control plane's fixtures (events/control/) re-tier vandelay, a tenant
-- no API fixture uses.
INSERT INTO tenants (tenant_id, name, tier, status) VALUES
    ('vandelay', 'Vandelay Industries', 'standard', 'active')
ON CONFLICT (tenant_id) DO NOTHING;
