-- Offers release-offboarding while the mass-offboarding guard holds deletions back (the
-- OffboardingThrottled condition is True); otherwise it is shown disabled.
local actions = {}
local throttled = false
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "OffboardingThrottled" and c.status == "True" then
      throttled = true
    end
  end
end
actions["release-offboarding"] = {
  ["disabled"] = not throttled,
  ["displayName"] = "Release held offboardings",
  ["iconClass"] = "fa fa-fw fa-unlock",
}
return actions
