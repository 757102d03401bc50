-- Argo CD health check for hotload.dev/PluginRelease.
--
-- Install it under resource.customizations.health.hotload.dev_PluginRelease in argocd-cm
-- (see README.md next to this directory). It reads only the status the operator writes:
-- observedGeneration, phase, message, the kstatus conditions and the analysis.
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

-- The analysis of the revision being rolled out (an older revision's is history).
local analysis = status.analysis
if analysis ~= nil and status.targetRevision ~= nil and analysis.revision ~= status.targetRevision then
  analysis = nil
end

-- Why the newest judged window has the verdict `verdict`: its first check with it.
local function window_reason(verdict)
  if analysis == nil or analysis.windows == nil or analysis.windows[1] == nil then
    return ""
  end
  for _, check in ipairs(analysis.windows[1].checks or {}) do
    if check.verdict == verdict then
      return (check.name or "") .. ": " .. (check.message or "")
    end
  end
  return ""
end

-- The operator's message, or failing that the analysis's own words.
local function analysis_message(verdict, lead)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return lead .. window_reason(verdict)
end

if analysis ~= nil and analysis.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = analysis_message("Fail", "analysis failed: ")
  return hs
end
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
-- Too little data to judge holds the rollout until data comes (or the deadline passes), as
-- an inconclusive AnalysisRun pauses an Argo Rollout, which Argo CD shows as Suspended.
if analysis ~= nil and analysis.phase == "Inconclusive" then
  hs.status = "Suspended"
  hs.message = analysis_message("Inconclusive", "analysis inconclusive: ")
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
