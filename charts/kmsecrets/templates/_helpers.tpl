{{/* Chart name. */}}
{{- define "kmsecrets.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-based prefix for every object (63-char DNS label). */}}
{{- define "kmsecrets.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kmsecrets.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment selector is immutable). */}}
{{- define "kmsecrets.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmsecrets.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "kmsecrets.labels" -}}
helm.sh/chart: {{ include "kmsecrets.chart" . }}
{{ include "kmsecrets.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kmsecrets
{{- end }}

{{- define "kmsecrets.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kmsecrets.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is pinned. */}}
{{- define "kmsecrets.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Leader election is forced on with more than one replica. */}}
{{- define "kmsecrets.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "kmsecrets.localKeySecretName" -}}
{{- default (printf "%s-local-key" (include "kmsecrets.fullname" .)) .Values.localKey.existingSecret }}
{{- end }}

{{/* The ClusterRole / per-namespace Role rules (kept identical to deploy/rbac.yaml). */}}
{{- define "kmsecrets.controllerRules" -}}
# Watch the source objects. `patch` adds/removes the controller's finalizer
# (only used for deletionPolicy: Retain); the controller never writes spec.
- apiGroups: ["kmsecrets.dev"]
  resources: ["encryptedsecrets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kmsecrets.dev"]
  resources: ["encryptedsecrets/status"]
  verbs: ["patch", "update"]
# ownerReferences with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["kmsecrets.dev"]
  resources: ["encryptedsecrets/finalizers"]
  verbs: ["update"]
# Secrets: metadata-only list/watch, get, server-side apply (patch; create is
# also checked when an apply creates). No update. delete only replaces an
# `immutable: true` Secret whose content changed (after a successful decrypt);
# the controller never deletes a Secret because KMS or decryption fails.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rolloutRestart.enabled }}
# rolloutRestartTargets (opt-in): a merge patch of the pod template's
# kmsecrets.dev/restartedAt annotation, as `kubectl rollout restart` does.
# patch only: no get, list, create or delete of workloads.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["patch"]
{{- end }}
{{- end }}

{{/* Fail early on value combinations that would render a broken install. */}}
{{- define "kmsecrets.validate" -}}
{{- if and .Values.rbac.namespaced (empty .Values.watchNamespaces) }}
{{- fail "rbac.namespaced=true needs watchNamespaces: the controller gets a Role in each watched namespace and no cluster-wide access" }}
{{- end }}
{{- if and .Values.localKey.enabled (not .Values.localKey.existingSecret) (not .Values.localKey.key) }}
{{- fail "localKey.enabled=true needs localKey.existingSecret (recommended) or localKey.key (create one with `kmsecrets keygen local.key`)" }}
{{- end }}
{{- end }}
