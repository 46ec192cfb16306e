{{/* What the operator pod and the gateway pods share: one image and command, the same
settings, security contexts and volumes. Each takes (dict "root" $ ...). */}}

{{/* The settings, as EDGEFLEET_* variables. remoteWrite: false leaves out the
remote-write URL (a controller holds no device session, so it has no samples to send). */}}
{{- define "edgefleet.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $gw := $v.gateway -}}
- {name: EDGEFLEET_IDENTITY, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
- {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
- {name: EDGEFLEET_LEASE_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
- {name: EDGEFLEET_LOG_LEVEL, value: {{ $v.logLevel | quote }}}
- {name: EDGEFLEET_GRPC_PORT, value: {{ $gw.port | quote }}}
- {name: EDGEFLEET_METRICS_PORT, value: {{ $v.metrics.port | quote }}}
- {name: EDGEFLEET_HEARTBEAT_WRITE_SECONDS, value: {{ $gw.heartbeatWriteSeconds | quote }}}
- {name: EDGEFLEET_LAST_SEEN_WRITE_SECONDS, value: {{ $gw.lastSeenWriteSeconds | quote }}}
{{- /* Device health thresholds; a value left unset (an upgrade with --reuse-values from
before they existed) keeps the operator's default. */}}
{{- $health := $v.deviceHealth | default dict }}
{{- range $key, $variable := dict "memoryPressurePercent" "EDGEFLEET_MEMORY_PRESSURE_PERCENT" "diskPressurePercent" "EDGEFLEET_DISK_PRESSURE_PERCENT" "overheatingCelsius" "EDGEFLEET_OVERHEATING_CELSIUS" "clockSkewSeconds" "EDGEFLEET_CLOCK_SKEW_SECONDS" }}
{{- if hasKey $health $key }}
- {name: {{ $variable }}, value: {{ get $health $key | quote }}}
{{- end }}
{{- end }}
- {name: EDGEFLEET_DEVICE_METRIC_LABELS, value: {{ $health.metricLabels | default list | toJson | quote }}}
{{- $builds := $v.variantBuilds | default dict }}
{{- range $key, $variable := dict "concurrency" "EDGEFLEET_VARIANT_BUILD_CONCURRENCY" "timeoutSeconds" "EDGEFLEET_VARIANT_BUILD_TIMEOUT_SECONDS" "memoryBytes" "EDGEFLEET_VARIANT_BUILD_MEMORY_BYTES" }}
{{- if hasKey $builds $key }}
- {name: {{ $variable }}, value: {{ get $builds $key | int64 | quote }}}
{{- end }}
{{- end }}
{{- $dataset := $v.dataset | default dict }}
- {name: EDGEFLEET_DATASET_URI, value: {{ $dataset.uri | default "/var/lib/edgefleet/dataset" | quote }}}
- {name: EDGEFLEET_DATASET_S3_ENDPOINT, value: {{ $dataset.s3Endpoint | default "" | quote }}}
- {name: EDGEFLEET_DATASET_S3_REGION, value: {{ $dataset.s3Region | default "us-east-1" | quote }}}
- {name: EDGEFLEET_DATASET_EXPIRY_SECONDS, value: {{ $dataset.expirySeconds | default 3600 | quote }}}
{{- with $dataset.s3CredentialsSecret }}
- {name: AWS_ACCESS_KEY_ID, valueFrom: {secretKeyRef: {name: {{ . | quote }}, key: AWS_ACCESS_KEY_ID}}}
- {name: AWS_SECRET_ACCESS_KEY, valueFrom: {secretKeyRef: {name: {{ . | quote }}, key: AWS_SECRET_ACCESS_KEY}}}
{{- end }}
{{- $retraining := $v.retraining | default dict }}
- {name: EDGEFLEET_RETRAINING_NAMESPACES, value: {{ include "edgefleet.retrainingNamespaces" $root | quote }}}
- {name: EDGEFLEET_RETRAINING_SERVICE_ACCOUNT, value: {{ $retraining.serviceAccount | default "edgefleet-retrain" | quote }}}
- {name: EDGEFLEET_RETRAINING_POLL_SECONDS, value: {{ $retraining.pollSeconds | default 10 | quote }}}
- {name: EDGEFLEET_ARTIFACT_CACHE_DIR, value: /var/cache/edgefleet}
- {name: EDGEFLEET_ARTIFACT_MAX_BYTES, value: {{ $v.artifacts.maxBytes | int64 | quote }}}
{{- if .remoteWrite }}
{{- with $v.metrics.remoteWriteUrl }}
- {name: EDGEFLEET_METRICS_REMOTE_WRITE_URL, value: {{ . | quote }}}
{{- end }}
{{- end }}
{{- if not $v.clusterWide }}
# The namespaces its Roles cover, and no others (a JSON list, as the setting reads it).
- {name: EDGEFLEET_NAMESPACES, value: {{ include "edgefleet.namespaces" $root | quote }}}
{{- end }}
- {name: EDGEFLEET_ARTIFACT_FILE_ROOTS, value: {{ $v.artifacts.fileRoots | toJson | quote }}}
- {name: EDGEFLEET_ARTIFACT_ALLOW_PRIVATE_NETWORKS, value: {{ $v.artifacts.allowPrivateNetworks | quote }}}
# Device identity: the CA and signing Secrets live in the release namespace
# (EDGEFLEET_LEASE_NAMESPACE above), where the operator creates them if absent.
- {name: EDGEFLEET_INSECURE_PLAINTEXT, value: {{ $gw.insecurePlaintext | quote }}}
- {name: EDGEFLEET_ENROLMENT_PORT, value: {{ $gw.enrolmentPort | quote }}}
- {name: EDGEFLEET_CA_SECRET_NAME, value: {{ $gw.ca.secretName | quote }}}
- {name: EDGEFLEET_SIGNING_SECRET_NAME, value: {{ $gw.signingSecretName | quote }}}
- {name: EDGEFLEET_DEVICE_CERT_VALIDITY, value: {{ include "edgefleet.deviceCertValidity" $root | quote }}}
- {name: EDGEFLEET_GATEWAY_DNS_NAMES, value: {{ include "edgefleet.gatewayDnsNames" $root | quote }}}
{{- end -}}

{{/* The gateway's container ports: sessions, and enrolment unless plaintext. */}}
{{- define "edgefleet.gatewayPorts" -}}
- {name: gateway, containerPort: {{ .Values.gateway.port }}, protocol: TCP}
{{- if not .Values.gateway.insecurePlaintext }}
- {name: enrolment, containerPort: {{ .Values.gateway.enrolmentPort }}, protocol: TCP}
{{- end }}
{{- end -}}

{{- define "edgefleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "edgefleet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/* The artifact cache (each pod its own), the dataset's directory (unless it is on S3),
/tmp, the cert-manager CA and extraVolumeMounts. */}}
{{- define "edgefleet.volumeMounts" -}}
- {name: artifacts, mountPath: /var/cache/edgefleet}
{{- if not (.Values.dataset | default dict).uri }}
- {name: dataset, mountPath: /var/lib/edgefleet/dataset}
{{- end }}
- {name: tmp, mountPath: /tmp}
{{- if eq (include "edgefleet.certManager" .) "true" }}
- {name: gateway-ca, mountPath: /etc/edgefleet/gateway-ca, readOnly: true}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "edgefleet.volumes" -}}
- name: artifacts
  emptyDir: {sizeLimit: {{ .Values.artifacts.cacheSizeLimit }}}
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- $dataset := .Values.dataset | default dict }}
{{- if not $dataset.uri }}
- name: dataset
  {{- if $dataset.existingClaim }}
  persistentVolumeClaim: {claimName: {{ $dataset.existingClaim | quote }}}
  {{- else }}
  emptyDir: {sizeLimit: {{ $dataset.sizeLimit | default "10Gi" }}}
  {{- end }}
{{- end }}
{{- if eq (include "edgefleet.certManager" .) "true" }}
# Not read: the operator reads the Secret through the API. The kubelet starts the
# pod only once the Secret exists, so the operator never creates a CA of its own
# before cert-manager has issued one (only the certificate, never the key).
- name: gateway-ca
  secret:
    secretName: {{ .Values.gateway.ca.secretName }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* imagePullSecrets, priorityClassName, nodeSelector and tolerations of either pod, at
the pod spec's indent. */}}
{{- define "edgefleet.placement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
