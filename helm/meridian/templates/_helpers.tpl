{{/* The chart name, or nameOverride. */}}
{{- define "meridian.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A release-unique name; Kubernetes names are at most 63 characters. */}}
{{- define "meridian.fullname" -}}
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

{{- define "meridian.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object, without the component. */}}
{{- define "meridian.commonLabels" -}}
helm.sh/chart: {{ include "meridian.chart" . }}
app.kubernetes.io/name: {{ include "meridian.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selects one component's pods: api, worker or migrations. Every pod carries its
component, so the API's Service, PDB and ServiceMonitor (which select "api") never
take in a worker or a migration pod. Called with (dict "root" $ "component" "api").
*/}}
{{- define "meridian.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meridian.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ required "meridian.selectorLabels: a component is required" .component }}
{{- end }}

{{/* Labels of one component's objects. Called with (dict "root" $ "component" "worker"). */}}
{{- define "meridian.componentLabels" -}}
{{ include "meridian.commonLabels" .root }}
app.kubernetes.io/component: {{ required "meridian.componentLabels: a component is required" .component }}
{{- end }}

{{/* Labels of the API's objects. */}}
{{- define "meridian.labels" -}}
{{ include "meridian.componentLabels" (dict "root" . "component" "api") }}
{{- end }}

{{- define "meridian.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meridian.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meridian.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
A secretKeyRef to a key of the existing Secret (or of the reference's own secretName).
Called with (dict "root" $ "ref" $ref).
*/}}
{{- define "meridian.secretKeyRef" -}}
secretKeyRef:
  name: {{ .ref.secretName | default .root.Values.secrets.existingSecret | required "secrets.existingSecret (or the reference's secretName) is required" | quote }}
  key: {{ .ref.key | quote }}
{{- end }}

{{/* "secret/key" of a reference, for NOTES. */}}
{{- define "meridian.refText" -}}
{{ .ref.secretName | default .root.Values.secrets.existingSecret }}/{{ .ref.key }}
{{- end }}

{{/*
Non-secret settings as a flat map of MERIDIAN_* names to strings: config.<camelCase>
becomes MERIDIAN_<SNAKE_CASE> (the pydantic-settings names); null or "" keeps the
application's default. toJson prints numbers as written (toString would print
1048576 as 1.048576e+06) and strings come out unchanged.
*/}}
{{- define "meridian.settings" -}}
{{- $out := dict }}
{{- $_ := set $out "MERIDIAN_ISSUER" (required "config.issuer is required: the public base URL tokens are issued for, e.g. https://api.example.com" .Values.config.issuer) }}
{{- range $k, $v := .Values.config }}
{{- if and (ne $k "issuer") (not (kindIs "invalid" $v)) (ne (toString $v) "") }}
{{- $_ := set $out (printf "MERIDIAN_%s" ($k | snakecase | upper)) (ternary $v (toJson $v) (kindIs "string" $v)) }}
{{- end }}
{{- end }}
{{- $_ := set $out "MERIDIAN_REDIS_CLUSTER" (toJson .Values.redis.cluster) }}
{{- range $k, $v := .Values.extraConfig }}
{{- $_ := set $out $k (ternary $v (toJson $v) (kindIs "string" $v)) }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Database and Redis settings, all from Secret references. MERIDIAN_SHARDS is the topology
as JSON; its DSNs are $(VAR) references to variables defined just before it, which
Kubernetes expands when it starts the container, so no credential is written into the
pod spec. Called with (dict "root" $ "admin" bool): admin (the migration Job) gets the
owner DSNs and neither the control plane's app DSN nor Redis, which migrations do not use.
*/}}
{{- define "meridian.databaseEnv" -}}
{{- $root := .root }}
{{- $admin := .admin }}
{{- if $admin }}
- name: MERIDIAN_CONTROL_ADMIN_DSN
  valueFrom:
    {{- include "meridian.secretKeyRef" (dict "root" $root "ref" $root.Values.controlPlane.adminDsn) | nindent 4 }}
{{- else }}
- name: MERIDIAN_CONTROL_DSN
  valueFrom:
    {{- include "meridian.secretKeyRef" (dict "root" $root "ref" $root.Values.controlPlane.dsn) | nindent 4 }}
{{- end }}
{{- if and (not $admin) $root.Values.redis.enabled }}
- name: MERIDIAN_REDIS_URL
  valueFrom:
    {{- include "meridian.secretKeyRef" (dict "root" $root "ref" $root.Values.redis.url) | nindent 4 }}
{{- end }}
{{- $topology := list }}
{{- $seen := dict }}
{{- range $i, $shard := $root.Values.shards }}
{{- if hasKey $seen $shard.id }}
{{- fail (printf "shards: the id %q appears twice" $shard.id) }}
{{- end }}
{{- $_ := set $seen $shard.id true }}
- name: {{ printf "MERIDIAN_SHARD_%d_DSN" $i }}
  valueFrom:
    {{- include "meridian.secretKeyRef" (dict "root" $root "ref" $shard.dsn) | nindent 4 }}
{{- $entry := dict "id" $shard.id "region" $shard.region "capacity" ($shard.capacity | default 1000 | int) "dsn" (printf "$(MERIDIAN_SHARD_%d_DSN)" $i) }}
{{- if $shard.engine }}
{{- $_ := set $entry "engine" $shard.engine }}
{{- end }}
{{- if and $admin $shard.adminDsn }}
- name: {{ printf "MERIDIAN_SHARD_%d_ADMIN_DSN" $i }}
  valueFrom:
    {{- include "meridian.secretKeyRef" (dict "root" $root "ref" $shard.adminDsn) | nindent 4 }}
{{- $_ := set $entry "admin_dsn" (printf "$(MERIDIAN_SHARD_%d_ADMIN_DSN)" $i) }}
{{- end }}
{{- $topology = append $topology $entry }}
{{- end }}
- name: MERIDIAN_SHARDS
  value: {{ toJson $topology | quote }}
{{- range $root.Values.secrets.env }}
- name: {{ .name }}
  valueFrom:
    {{- include "meridian.secretKeyRef" (dict "root" $root "ref" .) | nindent 4 }}
{{- end }}
{{- end }}

{{/* The API, the worker and the migration Job run the same image the same way. */}}
{{- define "meridian.commonEnv" -}}
# Nothing may be written to the read-only root filesystem (no bytecode cache).
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/*
PromQL label matchers of the API's series and of the worker's: the values', else those
the chart's ServiceMonitors give them (Prometheus names a target's job after its Service).
*/}}
{{- define "meridian.apiSeries" -}}
{{- .Values.metrics.prometheusRule.apiSelector | default (printf "namespace=%q, job=%q" .Release.Namespace (include "meridian.fullname" .)) }}
{{- end }}

{{- define "meridian.workerSeries" -}}
{{- .Values.metrics.prometheusRule.workerSelector | default (printf "namespace=%q, job=%q" .Release.Namespace (printf "%s-worker" (include "meridian.fullname" .))) }}
{{- end }}
