{{/* Chart name, overridable. */}}
{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name when it already contains the chart name. */}}
{{- define "palisade.fullname" -}}
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

{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "palisade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "palisade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "palisade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: palisade
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "palisade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "palisade.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "palisade.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The operator's RBAC, generated from src/operator_rbac.rs by `make generate`. */}}
{{- define "palisade.rbac" -}}
{{- $rbac := .Files.Get "files/rbac.json" | fromJson }}
{{- if not $rbac.clusterRole }}
{{- fail "files/rbac.json is missing or empty: run `make generate`" }}
{{- end }}
{{- toJson $rbac }}
{{- end }}

{{/* The ClusterRole Palisade binds to itself in each namespace it manages. */}}
{{- define "palisade.tenantNamespaceRole" -}}
{{- printf "%s-tenant-namespace" (include "palisade.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The garbage-collection allow-list as PALISADE_GC_KINDS (group/resource,...). */}}
{{- define "palisade.gcKinds" -}}
{{- $kinds := list }}
{{- if .Values.rbac.garbageCollection }}
{{- range .Values.rbac.garbageCollectionKinds }}
{{- $kinds = append $kinds (printf "%s/%s" .apiGroup .resource) }}
{{- end }}
{{- end }}
{{- join "," $kinds }}
{{- end }}

{{/* One PolicyRule with its reason as a comment. A rule limited to names
     (`bind`) names the chart's per-namespace ClusterRole: pass
     (dict "rule" . "tenantRole" NAME). */}}
{{- define "palisade.rule" -}}
# {{ .rule.why }}
- apiGroups: {{ .rule.apiGroups | toJson }}
  resources: {{ .rule.resources | toJson }}
  verbs: {{ .rule.verbs | toJson }}
{{- if .rule.resourceNames }}
  resourceNames: {{ list .tenantRole | toJson }}
{{- end }}
{{- end }}
