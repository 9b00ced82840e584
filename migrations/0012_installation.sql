-- The installation's identity: one uuid, made once. Workers label every container with it
-- (`granda.installation`) and sweep only their own installation's containers, so installations
-- sharing one Docker engine never remove each other's runs. It lives in the database because the
-- database is what makes an installation: every process of it reads the same value, however it
-- spells the database's URL.
INSERT INTO installation (key, value)
VALUES ('installation_id', replace(gen_random_uuid()::text, '-', ''))
ON CONFLICT (key) DO NOTHING;
