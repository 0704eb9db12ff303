-- Argo CD health of a usher.dev Tenant, from its status.
--   Healthy      Ready: written to the user store, its people counted in the message
--   Progressing  no status yet, or a spec usher has not observed yet
--   Degraded     OffboardingThrottled: the mass-offboarding guard holds deletions back (a bad
--                commit, or an intended mass deletion to release with the release-offboarding
--                action); any Ready=False
-- The message is the Ready condition's, or the guard's while it holds deletions back. Lua 5.1
-- in Argo CD's sandbox: no string library.
local hs = {status = "Progressing", message = "waiting for usher to report a status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local ready, stalled, reconciling, throttled
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.type == "Stalled" and c.status == "True" then
    stalled = c
  elseif c.type == "Reconciling" and c.status == "True" then
    reconciling = c
  elseif c.type == "OffboardingThrottled" and c.status == "True" then
    throttled = c
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
if throttled ~= nil then
  hs.status = "Degraded"
  hs.message = throttled.message
  return hs
end
if reconciling ~= nil then
  hs.message = reconciling.message
  return hs
end
hs.message = ready.message
if ready.status == "True" then
  hs.status = "Healthy"
else
  hs.status = "Degraded"
end
return hs
