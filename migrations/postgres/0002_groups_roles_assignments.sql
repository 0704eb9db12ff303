-- Location groups, role catalogues and role assignments.
CREATE TABLE location_groups (
    key          TEXT PRIMARY KEY,           -- <namespace>/<name> of the LocationGroup
    tenant       TEXT NOT NULL,              -- tenants.key
    parent       TEXT,                       -- location_groups.key, NULL at the top level
    display_name TEXT NOT NULL,
    path         TEXT NOT NULL,              -- names from the top down, joined by '/'
    locations    TEXT NOT NULL,              -- JSON [{id, name}]
    updated_us   BIGINT NOT NULL
);
CREATE INDEX location_groups_by_parent ON location_groups (parent);

CREATE TABLE roles (
    tenant       TEXT NOT NULL,              -- tenants.key
    name         TEXT NOT NULL,
    description  TEXT,
    exclusive    SMALLINT NOT NULL,
    permissions  TEXT NOT NULL,              -- JSON ["pricing", ...]
    PRIMARY KEY (tenant, name)
);

-- Only Bound RoleBindings are here. group_key NULL = tenant-wide.
CREATE TABLE role_assignments (
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         TEXT NOT NULL,
    group_key    TEXT,
    binding      TEXT NOT NULL,              -- <namespace>/<name> of the RoleBinding
    PRIMARY KEY (user_id, binding)
);
