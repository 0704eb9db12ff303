-- The read model a product signs people in with: who may do what, where. One row per active
-- account × role × group the role reaches (a grant on a group reaches every group below it) ×
-- location of that group × permission of the role. `tenant_wide` is 1 for a role granted on the
-- whole tenant (then `scope_group` and `location` are NULL: everywhere). Accounts that are not
-- active (Pending, Suspended, offboarded) have no rows: no access.
--
-- "May this person open pricing at fresno-01?":
--   SELECT 1 FROM access WHERE person = 'acme/dana' AND permission = 'pricing'
--     AND (tenant_wide = 1 OR location = 'fresno-01') LIMIT 1;
-- Stable: columns are only ever added.
CREATE VIEW access AS
WITH RECURSIVE reach (user_id, role, scope_group) AS (
    SELECT user_id, role, group_key FROM role_assignments
    UNION
    SELECT reach.user_id, reach.role, g.key
      FROM reach JOIN location_groups g ON g.parent = reach.scope_group
)
SELECT u.id AS user_id,
       u.external_id AS person,
       u.email AS email,
       u.tenant AS tenant,
       reach.role AS role,
       reach.scope_group AS scope_group,
       CASE WHEN reach.scope_group IS NULL THEN 1 ELSE 0 END AS tenant_wide,
       json_extract(loc.value, '$.id') AS location,
       perm.value AS permission
  FROM reach
  JOIN users u ON u.id = reach.user_id AND u.active = 1
  JOIN roles r ON r.tenant = u.tenant AND r.name = reach.role
  LEFT JOIN json_each(r.permissions) perm
  LEFT JOIN location_groups g ON g.key = reach.scope_group
  LEFT JOIN json_each(COALESCE(g.locations, '[]')) loc;
