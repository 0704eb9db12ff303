-- PostgreSQL twin of ../sqlite/ (same tables and columns; BIGINT for microsecond times,
-- SMALLINT 0/1 for flags, so that one set of queries serves both).
-- Tenants, accounts and invitations. Times are microseconds since the Unix epoch (UTC).
CREATE TABLE tenants (
    key          TEXT PRIMARY KEY,           -- <namespace>/<name> of the Tenant
    display_name TEXT NOT NULL,
    updated_us   BIGINT NOT NULL
);

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,              -- tenants.key
    external_id  TEXT NOT NULL UNIQUE,       -- <namespace>/<name> of the SystemUser
    email        TEXT NOT NULL,
    email_lower  TEXT NOT NULL,
    profile      TEXT NOT NULL,              -- JSON: names, phone, address, locations, ...
    active       SMALLINT NOT NULL DEFAULT 0,
    activated_us BIGINT,
    created_us   BIGINT NOT NULL,
    updated_us   BIGINT NOT NULL
);
CREATE INDEX users_by_tenant_email ON users (tenant, email_lower);

-- Only the SHA-256 of a token is stored. One row per attempt; a resend adds a row.
CREATE TABLE invitations (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    trigger      TEXT,                       -- the resend annotation value it answered
    created_us   BIGINT NOT NULL,
    expires_us   BIGINT NOT NULL,
    sent_us      BIGINT,
    used_us      BIGINT,
    revoked_us   BIGINT
);
CREATE UNIQUE INDEX invitations_by_user_attempt ON invitations (user_id, attempt);
