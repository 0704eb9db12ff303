-- Sets usher.dev/allow-mass-offboarding to a new value, the time now: the deletions held by
-- the guard and asked for before now proceed; later ones count against the budget again.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["usher.dev/allow-mass-offboarding"] = os.date("!%Y-%m-%dT%XZ")
return obj
