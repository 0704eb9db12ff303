-- PostgreSQL twin of ../sqlite/0009_shared_identities.sql.
-- One SCIM User for a person in several tenants that share one SCIM server: each tenant's account
-- (a SystemUser) keeps its own row, invitations and assignments here, and `scim_id` names the
-- SCIM User they share. NULL: the row's own `id` is its SCIM User's id (every account made before
-- this, and the account that created the SCIM User). Used by the local store of a SCIM store;
-- NULL otherwise.
ALTER TABLE users ADD COLUMN scim_id TEXT;
CREATE INDEX users_by_scim_id ON users (scim_id);
