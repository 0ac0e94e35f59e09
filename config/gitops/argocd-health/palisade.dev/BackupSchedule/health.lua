-- Argo CD health of a palisade.dev BackupSchedule: kstatus conditions plus
-- the outcome of the last backup and the last restore test.
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
for _, t in ipairs({ "Stalled", "LastBackupSucceeded", "LastRestoreTestSucceeded" }) do
  local cond = c[t]
  local bad = cond ~= nil and ((t == "Stalled" and cond.status == "True") or (t ~= "Stalled" and cond.status == "False"))
  if bad then
    hs.status = "Degraded"
    hs.message = cond.reason .. ": " .. (cond.message or "")
    return hs
  end
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: no runs start"
  return hs
end
if c.Ready ~= nil and c.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = c.Ready.message or ""
  return hs
end
if c.Ready ~= nil then
  hs.message = c.Ready.reason .. ": " .. (c.Ready.message or "")
end
return hs
