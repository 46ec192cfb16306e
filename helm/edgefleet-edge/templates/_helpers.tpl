{{- define "edgefleet-edge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edgefleet-edge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The `helm test` pod's own labels, which the NetworkPolicy admits to the
inference ports whatever inferenceFrom narrows them to. */}}
{{- define "edgefleet-edge.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end -}}

{{- define "edgefleet-edge.labels" -}}
{{ include "edgefleet-edge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgefleet
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "edgefleet-edge.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* "true" when the servers bind a loopback address, which the kubelet's probes
cannot reach: they then run inside the container. */}}
{{- define "edgefleet-edge.loopback" -}}
{{- or (hasPrefix "127." .Values.listenHost) (eq .Values.listenHost "::1") -}}
{{- end -}}

{{/* A probe of a health path on the metrics port, which stays plain HTTP without a
token whatever the inference ports require (TLS, client certificates, a token). */}}
{{- define "edgefleet-edge.probe" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
{{- if eq (include "edgefleet-edge.loopback" $root) "true" -}}
{{- $host := ternary "[::1]" $root.Values.listenHost (eq $root.Values.listenHost "::1") -}}
exec:
  command: [python, -c, {{ printf "import urllib.request; urllib.request.urlopen('http://%s:%d%s', timeout=3)" $host (int $root.Values.ports.metrics) $path | quote }}]
{{- else -}}
httpGet: {path: {{ $path }}, port: metrics}
{{- end -}}
{{- end -}}
