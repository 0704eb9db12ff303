{{/*
Names. The fullname is the release name when it contains the chart's name ("usher" installed
as release "usher" gives the names deploy/ uses), else "<release>-usher"; fullnameOverride wins.
*/}}
{{- define "usher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "usher.fullname" -}}
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

{{- define "usher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What selects usher's pods: the Deployment, the Service and the ServiceMonitor. */}}
{{- define "usher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "usher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "usher.labels" -}}
{{ include "usher.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "usher.chart" . }}
{{- end }}

{{- define "usher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "usher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: the ServiceAccount to run as, when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the token key (--token-key-secret); its Role names it. */}}
{{- define "usher.tokenKeySecret" -}}
{{- default (printf "%s-token-key" (include "usher.fullname" .)) .Values.tokenKey.secretName }}
{{- end }}

{{- define "usher.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{- define "usher.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The port of a listen address: 0.0.0.0:8080 and [::]:8080 give 8080. */}}
{{- define "usher.port" -}}
{{- regexReplaceAll "^.*:([0-9]+)$" . "${1}" }}
{{- end }}

{{/* Whether the probes and /metrics share the public port (probes.listen = listen). */}}
{{- define "usher.probesApart" -}}
{{- if ne .Values.probes.listen .Values.listen }}true{{ end }}
{{- end }}

{{/* The container port the kubelet and Prometheus use. */}}
{{- define "usher.probePort" -}}
{{- if include "usher.probesApart" . }}probes{{ else }}http{{ end }}
{{- end }}

{{/* Whether the store URL is known to be a SQLite file (one pod only). */}}
{{- define "usher.sqliteStore" -}}
{{- if and (not .Values.store.existingSecret) (hasPrefix "sqlite:" .Values.store.url) }}true{{ end }}
{{- end }}

{{/* Combinations the schema cannot express, refused with what to change. */}}
{{- define "usher.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without the Lease, every replica would reconcile and send mail" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (include "usher.sqliteStore" .) }}
{{- fail "replicaCount > 1 needs a PostgreSQL or SCIM store: the SQLite file (store.url sqlite://…) allows one pod" }}
{{- end }}
{{- if and (not .Values.store.existingSecret) (hasPrefix "scim+" .Values.store.url) (not .Values.store.token.existingSecret) }}
{{- fail "a SCIM store needs its bearer token: set store.token.existingSecret (and store.token.key) to a Secret holding it" }}
{{- end }}
{{- end }}
