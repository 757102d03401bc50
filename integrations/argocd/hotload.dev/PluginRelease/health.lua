-- Argo CD health check for hotload.dev/PluginRelease.
--
-- Install it under resource.customizations.health.hotload.dev_PluginRelease in argocd-cm
-- (see README.md next to this directory). It reads only the status the operator writes:
-- observedGeneration, phase, message and the kstatus conditions.
local hs = {}
local status = obj.status
if status == nil or obj.metadata == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the release"
  return hs
end
if status.observedGeneration == nil or status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local function condition(kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local message = status.message or status.progress or ""
local degraded = condition("Degraded")
local ready = condition("Ready")

if status.phase == "Degraded" or status.phase == "RolledBack"
    or (degraded ~= nil and degraded.status == "True") then
  -- A rollback is a failed release even though the fleet serves the stable revision.
  hs.status = "Degraded"
  hs.message = message
  if hs.message == "" and degraded ~= nil then
    hs.message = degraded.message or ""
  end
  return hs
end
if status.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = message
  return hs
end
if status.phase == "Completed" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end
hs.status = "Progressing"
hs.message = message
return hs
