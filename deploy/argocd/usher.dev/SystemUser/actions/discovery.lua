-- Offers resend-invitation where usher answers it: a person who is Pending or Expired, not
-- suspended and not being deleted. Elsewhere (Active, Suspended, Failed, no status yet) the
-- annotation would change nothing, so the action is shown disabled.
local actions = {}
local offered = false
if obj.metadata.deletionTimestamp == nil and obj.status ~= nil
    and (obj.spec == nil or obj.spec.suspended ~= true) then
  offered = obj.status.phase == "Pending" or obj.status.phase == "Expired"
end
actions["resend-invitation"] = {
  ["disabled"] = not offered,
  ["displayName"] = "Resend invitation",
  ["iconClass"] = "fa fa-fw fa-envelope",
}
return actions
