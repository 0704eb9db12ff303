-- Argo CD health of a usher.dev SystemUser, from its status.
--   Healthy      Active, or Pending with the invitation sent: waiting for the person to
--                accept is the normal state of a new person, not a fault
--   Suspended    spec.suspended: deactivated on purpose while kept in git
--   Progressing  no status yet, a spec usher has not observed yet, or a wait that ends by
--                itself (the Tenant does not exist yet or is being deleted, the mail is retried)
--   Degraded     what needs a person: InvitationExpired, DuplicateEmail, EmailDomainNotAllowed,
--                DisposableEmail, EmailUndeliverable, StoreRefused, any reason not listed here
-- The message is the Ready condition's. Lua 5.1 in Argo CD's sandbox: no string library.
local waits = {
  TenantNotFound = true,
  TenantTerminating = true,
  InvitationNotSent = true,
  OffboardingIncomplete = true,
}
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
if obj.status.phase == "Suspended" then
  hs.status = "Suspended"
elseif ready.status == "True" then
  hs.status = "Healthy"
elseif waits[ready.reason] then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
return hs
