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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The `helm test` pod's selector: the NetworkPolicy lets it reach the metrics port. */}}
{{- define "edgefleet.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end -}}

{{/* A pod's labels: its selector labels, commonLabels and podLabels. */}}
{{- define "edgefleet.podLabels" -}}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
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

{{/* The namespaces that may have retraining Jobs, as a JSON list: retraining.namespaces,
with "*" meaning every namespace the operator serves (all, when clusterWide). */}}
{{- define "edgefleet.retrainingNamespaces" -}}
{{- $wanted := (.Values.retraining | default dict).namespaces | default list -}}
{{- if and (has "*" $wanted) (not .Values.clusterWide) -}}
{{- include "edgefleet.namespaces" . -}}
{{- else -}}
{{- $wanted | toJson -}}
{{- end -}}
{{- end -}}

{{/* "true" when cert-manager owns the gateway CA: asked for, or auto and the cluster
serves cert-manager.io/v1. */}}
{{- define "edgefleet.certManager" -}}
{{- $wanted := .Values.gateway.ca.certManager.enabled -}}
{{- if eq (toString $wanted) "auto" -}}
{{- .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}
{{- else -}}
{{- $wanted -}}
{{- end -}}
{{- end -}}

{{/* The DNS names of the gateway's serving certificate, as a JSON list: the gateway
Service's own names, then gateway.dnsNames. */}}
{{- define "edgefleet.gatewayDnsNames" -}}
{{- $svc := printf "%s-gateway" (include "edgefleet.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- concat (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns)) .Values.gateway.dnsNames | uniq | toJson -}}
{{- end -}}

{{/* gateway.deviceCertValidity as ISO 8601: a number of seconds becomes PT<n>S. */}}
{{- define "edgefleet.deviceCertValidity" -}}
{{- $v := .Values.gateway.deviceCertValidity -}}
{{- if kindIs "string" $v -}}
{{- $v -}}
{{- else -}}
{{- printf "PT%dS" (int64 $v) -}}
{{- end -}}
{{- end -}}

{{/* "true" when the fleet gateway runs in pods of its own (gateway.replicas > 0): the
operator then runs --role controller and the gateway Deployment --role gateway. */}}
{{- define "edgefleet.gateways" -}}
{{- gt (int .Values.gateway.replicas) 0 -}}
{{- end -}}

{{/* The gateway pods' selector. Its name differs from the operator's, whose Deployment
selector (immutable) must never match a gateway pod. */}}
{{- define "edgefleet.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "edgefleet.gatewayLabels" -}}
{{ include "edgefleet.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgefleet
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The pods that serve devices: the gateway pods, or the operator's in the single
process layout. */}}
{{- define "edgefleet.servingSelectorLabels" -}}
{{- if eq (include "edgefleet.gateways" .) "true" -}}
{{ include "edgefleet.gatewaySelectorLabels" . }}
{{- else -}}
{{ include "edgefleet.selectorLabels" . }}
{{- end -}}
{{- end -}}
