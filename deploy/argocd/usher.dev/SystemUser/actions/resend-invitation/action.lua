-- Sets usher.dev/resend-invitation to a new value, the time now: usher revokes the open
-- token, issues the next attempt and mails it.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["usher.dev/resend-invitation"] = os.date("!%Y-%m-%dT%XZ")
return obj
