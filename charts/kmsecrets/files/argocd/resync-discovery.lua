-- Argo CD action discovery for kmsecrets.dev/EncryptedSecret.
local actions = {}
actions["resync"] = {["disabled"] = false}
return actions
