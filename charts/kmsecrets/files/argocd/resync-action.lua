-- Argo CD action "resync": stamps an annotation, which makes the kmsecrets
-- controller reconcile the resource now (e.g. after an IAM fix, instead of
-- waiting for --permanent-error-retry). Spec and values are untouched.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kmsecrets.dev/resync-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
