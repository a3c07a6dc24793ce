-- Accounts erased by the admin API (`POST /_synapse/admin/v1/deactivate` with `erase`): their
-- profile is removed and the admin API reports them as erased.
ALTER TABLE users ADD COLUMN erased BIGINT NOT NULL DEFAULT 0;
