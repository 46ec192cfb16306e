{{/* Names, labels and the switches computed from values. */}}

{{- define "edgefleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edgefleet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgefleet.labels" -}}
{{ include "edgefleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgefleet
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "edgefleet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* "true" when leader election runs: asked for, or auto with several replicas. */}}
{{- define "edgefleet.leaderElection" -}}
{{- if eq (toString .Values.leaderElection) "auto" -}}
{{- gt (int .Values.replicas) 1 -}}
{{- else -}}
{{- .Values.leaderElection -}}
{{- end -}}
{{- end -}}

{{/* "true" when a Prometheus Operator object should render: asked for, or auto and
the cluster serves monitoring.coreos.com/v1. */}}
{{- define "edgefleet.monitoring" -}}
{{- $wanted := index . 0 -}}
{{- $root := index . 1 -}}
{{- if eq (toString $wanted) "auto" -}}
{{- $root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
{{- else -}}
{{- $wanted -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator serves and may read Secrets in, as a JSON list:
watchNamespaces, or the release namespace alone; "[]" (all) only with clusterWide. */}}
{{- define "edgefleet.namespaces" -}}
{{- if .Values.clusterWide -}}
[]
{{- else -}}
{{- .Values.watchNamespaces | default (list .Release.Namespace) | toJson -}}
{{- end -}}
{{- end -}}
