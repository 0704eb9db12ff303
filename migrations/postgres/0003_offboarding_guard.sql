-- The mass-offboarding guard: when people were offboarded, and the last release per tenant.
CREATE TABLE offboardings (
    tenant  TEXT NOT NULL,
    at_us   BIGINT NOT NULL
);
CREATE INDEX offboardings_by_tenant_time ON offboardings (tenant, at_us);

CREATE TABLE offboarding_releases (
    tenant  TEXT PRIMARY KEY,
    value   TEXT NOT NULL,       -- the usher.dev/allow-mass-offboarding value it answered
    at_us   BIGINT NOT NULL     -- deletions requested before this moment may proceed
);
