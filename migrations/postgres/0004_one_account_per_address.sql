-- PostgreSQL twin of ../sqlite/0004_one_account_per_address.sql.
-- At most one account per (tenant, address), case-insensitive, enforced by the store itself so
-- that no race between two reconciles can create a second one.
--
-- Accounts that already share an address (made before this rule, by two objects created in the
-- same second) are kept, not deleted: one of each group holds the address (the active one, else
-- the oldest), the others get NULL, which a unique index never compares equal. usher reports
-- those at start; every account created or re-addressed from now on holds its address.
ALTER TABLE users ADD COLUMN holds_address SMALLINT DEFAULT 1;
UPDATE users SET holds_address = NULL
 WHERE EXISTS (
    SELECT 1 FROM users o
     WHERE o.tenant = users.tenant AND o.email_lower = users.email_lower AND o.id <> users.id
       AND (o.active > users.active
            OR (o.active = users.active AND o.created_us < users.created_us)
            OR (o.active = users.active AND o.created_us = users.created_us AND o.id < users.id)));
CREATE UNIQUE INDEX users_one_account_per_address ON users (tenant, email_lower, holds_address);
DROP INDEX users_by_tenant_email;
