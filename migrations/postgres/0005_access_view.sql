-- PostgreSQL twin of ../sqlite/0005_access_view.sql: the same view, the same columns (see there).
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
       loc.value ->> 'id' AS location,
       perm.value AS permission
  FROM reach
  JOIN users u ON u.id = reach.user_id AND u.active = 1
  JOIN roles r ON r.tenant = u.tenant AND r.name = reach.role
  LEFT JOIN LATERAL jsonb_array_elements_text(r.permissions::jsonb) AS perm(value) ON true
  LEFT JOIN location_groups g ON g.key = reach.scope_group
  LEFT JOIN LATERAL jsonb_array_elements(COALESCE(g.locations, '[]')::jsonb) AS loc(value) ON true;
