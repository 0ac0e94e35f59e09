-- Argo CD health of a palisade.dev Tenant, from its kstatus conditions.
local hs = { status = "Progressing", message = "Waiting for the Palisade controller" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local gen = obj.metadata.generation
local seen = obj.status.observedGeneration
if gen ~= nil and (seen == nil or seen < gen) then
  hs.message = "The controller has not observed generation " .. gen .. " yet"
  return hs
end
local c = {}
for _, cond in ipairs(obj.status.conditions) do
  c[cond.type] = cond
end
if c.Stalled ~= nil and c.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = c.Stalled.reason .. ": " .. (c.Stalled.message or "")
  return hs
end
if c.Ready ~= nil and c.Ready.status == "True" then
  if obj.spec ~= nil and obj.spec.cordoned == true then
    hs.status = "Suspended"
    hs.message = "Tenant is cordoned: no new pods start"
    return hs
  end
  hs.status = "Healthy"
  hs.message = c.Ready.message or ""
  return hs
end
if c.Ready ~= nil then
  hs.message = c.Ready.reason .. ": " .. (c.Ready.message or "")
end
return hs
