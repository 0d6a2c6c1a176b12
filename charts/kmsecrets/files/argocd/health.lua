-- Argo CD health check for kmsecrets.dev/EncryptedSecret.
-- Healthy: Ready=True at the current generation. Progressing: not yet
-- observed (a new resource reads status.observedGeneration 0). Degraded:
-- Ready=False (reason: message), or a synced Secret whose KMS keys are
-- unhealthy (KeysHealthy=False: disabled, pending deletion, gone).
-- Argo CD's Lua has no string library: only base, table and a safe os.
local hs = {}
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local function text(c)
  local reason = c.reason or "Unknown"
  if c.message == nil or c.message == "" then
    return reason
  end
  return reason .. ": " .. c.message
end
local generation = obj.metadata.generation
local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end
local ready = condition("Ready")
if ready == nil or observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kmsecrets controller to sync generation " .. tostring(generation)
  return hs
end
if ready.status == "True" then
  local keys = condition("KeysHealthy")
  if keys ~= nil and keys.status == "False" then
    hs.status = "Degraded"
    hs.message = "Secret synced, but KeysHealthy=False (" .. text(keys) .. ")"
    return hs
  end
  hs.status = "Healthy"
  hs.message = ready.message or "Secret is up to date"
  if keys ~= nil and keys.reason == "RedundancyLost" then
    hs.message = hs.message .. "; " .. text(keys)
  end
  return hs
end
if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = text(ready)
  return hs
end
hs.status = "Progressing"
hs.message = text(ready)
return hs
