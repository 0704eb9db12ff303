-- PostgreSQL twin of ../sqlite/0008_store_limits.sql.
-- What a SCIM product was seen not to keep of a person (a SystemUser spec field such as
-- `phone`), so that it is not taken for drift, also after a restart. Used by the local store of
-- a SCIM store; empty otherwise.
CREATE TABLE store_limits (
    field       TEXT PRIMARY KEY,
    noticed_us  BIGINT NOT NULL
);
