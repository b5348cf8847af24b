{{/* Names, labels and the settings every template shares. */}}

{{- define "paceline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paceline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "paceline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: include "paceline.selectorLabels" (list . "server") */}}
{{- define "paceline.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "paceline.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component: include "paceline.labels" (list . "server") */}}
{{- define "paceline.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "paceline.chart" $root }}
{{ include "paceline.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: paceline
{{- end -}}

{{- define "paceline.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "paceline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "paceline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "paceline.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "paceline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paceline.redis.fullname" -}}
{{- printf "%s-redis" (include "paceline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "hook", "initContainer" or "none": how the schema is migrated. */}}
{{- define "paceline.migrationMode" -}}
{{- $mode := .Values.migrations.mode -}}
{{- if eq $mode "auto" -}}
{{- ternary "initContainer" "hook" .Values.postgresql.enabled -}}
{{- else if and (eq $mode "hook") .Values.postgresql.enabled -}}
{{- fail "migrations.mode=hook cannot work with postgresql.enabled: the bundled database does not exist yet when pre-install hooks run; use auto or initContainer" -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}

{{/* Fails early on settings the chart cannot turn into a working deployment. */}}
{{- define "paceline.validate" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.database.url) (not .Values.database.existingSecret) -}}
{{- fail "no database: set database.url or database.existingSecret, or postgresql.enabled=true" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled (or .Values.database.url .Values.database.existingSecret) -}}
{{- fail "database.url / database.existingSecret are for an external database: set postgresql.enabled=false to use them" -}}
{{- end -}}
{{- if and .Values.redis.enabled (or .Values.redis.url .Values.redis.existingSecret) -}}
{{- fail "redis.url / redis.existingSecret are for an external Redis: set redis.enabled=false to use them" -}}
{{- end -}}
{{- range $key := list "database_url" "api_tokens" "redis_url" "host" "port" "grpc_port" -}}
{{- if hasKey $.Values.settings $key -}}
{{- fail (printf "settings.%s is managed by the chart; use the chart's own values for it" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The API token map as JSON: given, else kept from the installed Secret, else new. */}}
{{- define "paceline.apiTokens" -}}
{{- if .Values.auth.tokens -}}
{{- toJson .Values.auth.tokens -}}
{{- else -}}
{{- $existing := "" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "paceline.fullname" .) -}}
{{- if $secret -}}
{{- if hasKey (default dict $secret.data) "api-tokens" -}}
{{- $existing = index $secret.data "api-tokens" | b64dec -}}
{{- end -}}
{{- end -}}
{{- if $existing -}}
{{- $existing -}}
{{- else -}}
{{- dict (randAlphaNum 40) "write" (randAlphaNum 40) "read" | toJson -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The bundled PostgreSQL's password: given, else kept from its Secret, else new. */}}
{{- define "paceline.postgresql.password" -}}
{{- if .Values.postgresql.auth.password -}}
{{- .Values.postgresql.auth.password -}}
{{- else -}}
{{- $existing := "" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "paceline.postgresql.fullname" .) -}}
{{- if $secret -}}
{{- if hasKey (default dict $secret.data) "password" -}}
{{- $existing = index $secret.data "password" | b64dec -}}
{{- end -}}
{{- end -}}
{{- default (randAlphaNum 32) $existing -}}
{{- end -}}
{{- end -}}

{{/* Does the chart's own Secret have anything to hold? */}}
{{- define "paceline.ownSecret" -}}
{{- if or (and .Values.auth.enabled (not .Values.auth.existingSecret)) .Values.database.url .Values.redis.url -}}
true
{{- end -}}
{{- end -}}

{{/* PACELINE_DATABASE_URL (and what it is built from) as container env entries. */}}
{{- define "paceline.databaseEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "paceline.postgresql.fullname" . }}
      key: password
- name: PACELINE_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(POSTGRES_PASSWORD)@%s:5432/%s" .Values.postgresql.auth.username (include "paceline.postgresql.fullname" .) .Values.postgresql.auth.database | quote }}
{{- else }}
- name: PACELINE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "paceline.fullname" .) .Values.database.existingSecret }}
      key: {{ ternary .Values.database.existingSecretKey "database-url" (ne .Values.database.existingSecret "") }}
{{- end }}
{{- end -}}

{{/* Shared container env of the service and the migration init container. */}}
{{- define "paceline.env" -}}
{{- include "paceline.databaseEnv" . }}
{{- if .Values.auth.enabled }}
- name: PACELINE_API_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ default (include "paceline.fullname" .) .Values.auth.existingSecret }}
      key: {{ ternary .Values.auth.existingSecretKey "api-tokens" (ne .Values.auth.existingSecret "") }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: PACELINE_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "paceline.redis.fullname" .) | quote }}
{{- else if or .Values.redis.url .Values.redis.existingSecret }}
- name: PACELINE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "paceline.fullname" .) .Values.redis.existingSecret }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-url" (ne .Values.redis.existingSecret "") }}
{{- end }}
{{- end -}}
