-- Argo CD health of a usher.dev RoleBinding, from its status.
--   Healthy      Bound: the role is written to the user store
--   Suspended    Expired: spec.expiresAt has passed and nothing is granted, as git declares;
--                remove the binding or move the date
--   Progressing  no status yet, a spec usher has not observed yet, or Waiting: the user, the
--                tenant or the group does not exist (yet) or is not Ready
--   Degraded     Conflict (an older binding holds an exclusive role), Invalid (unknown role,
--                group of another tenant), any other Ready=False
-- The message is the Ready condition's. Lua 5.1 in Argo CD's sandbox: no string library.
local hs = {status = "Progressing", message = "waiting for usher to report a status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local ready, stalled, reconciling
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.type == "Stalled" and c.status == "True" then
    stalled = c
  elseif c.type == "Reconciling" and c.status == "True" then
    reconciling = c
  end
end
if ready == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = ready.observedGeneration or obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "usher has not observed generation " .. tostring(generation) .. " yet"
  return hs
end
if stalled ~= nil then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end
if reconciling ~= nil then
  hs.message = reconciling.message
  return hs
end
hs.message = ready.message
if obj.status.phase == "Expired" then
  hs.status = "Suspended"
elseif ready.status == "True" then
  hs.status = "Healthy"
elseif obj.status.phase == "Waiting" then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
return hs
