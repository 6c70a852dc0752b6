{{/*
Shared names, labels and container specs. Object names start with the release name, as in
serviceaccounts.yaml and rbac.yaml (which the Rust tests render by plain string replacement,
so they cannot call these helpers).
*/}}

{{/* Labels on every object. */}}
{{- define "s2s.labels" -}}
app.kubernetes.io/name: s2s-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of one component: include "s2s.selectorLabels" (list . "controller"). */}}
{{- define "s2s.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: s2s-operator
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The component whose Pods run the token server: the controller's in the sidecar layout. */}}
{{- define "s2s.tokenServerComponent" -}}
{{- if .Values.tokenServer.sidecar -}}controller{{- else -}}token-server{{- end -}}
{{- end }}

{{- define "s2s.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* "true" when the token server serves HTTPS: tls.mode operator or secret. */}}
{{- define "s2s.tls" -}}
{{- if ne .Values.tls.mode "none" -}}true{{- end -}}
{{- end }}

{{/* "true" when the controller issues the TLS Secrets (tls.mode operator). */}}
{{- define "s2s.operatorTls" -}}
{{- if eq .Values.tls.mode "operator" -}}true{{- end -}}
{{- end }}

{{/*
"true" when the injection webhook runs. It needs TLS (the API server calls webhooks over
HTTPS only): refused with tls.mode none, so the combination never renders half a webhook.
*/}}
{{- define "s2s.webhook" -}}
{{- if .Values.webhook.enabled -}}
{{- if not (include "s2s.tls" .) -}}
{{- fail "webhook.enabled needs TLS (the API server calls webhooks over HTTPS only): set tls.mode to operator or secret, or webhook.enabled=false" -}}
{{- end -}}
true
{{- end -}}
{{- end }}

{{/* The names in the token server's certificate, comma-separated (tls.mode operator). */}}
{{- define "s2s.tokenServerTlsNames" -}}
{{- $svc := printf "%s-token-server.%s.svc" .Release.Name .Release.Namespace -}}
{{- concat (list $svc (printf "%s.cluster.local" $svc)) .Values.tls.extraNames | join "," -}}
{{- end }}

{{/* The token server's container port: 8443 with TLS, 8080 for plain HTTP. */}}
{{- define "s2s.tokenServerPort" -}}
{{- if include "s2s.tls" . -}}8443{{- else -}}8080{{- end -}}
{{- end }}

{{- define "s2s.tokenServerPortName" -}}
{{- if include "s2s.tls" . -}}https{{- else -}}http{{- end -}}
{{- end }}

{{/*
The issuer URL: `iss` of every token and the base of the token URL written into Secrets.
By default the token Service's cluster address; `http://` when the token server has no TLS,
so the token URL in the Secrets is one that answers.
*/}}
{{- define "s2s.issuer" -}}
{{- if .Values.issuer -}}
{{ .Values.issuer }}
{{- else -}}
{{ if include "s2s.tls" . }}https{{ else }}http{{ end }}://{{ .Release.Name }}-token-server.{{ .Release.Namespace }}.svc
{{- end -}}
{{- end }}

{{/* Hardened security contexts; tests/chart/check_chart.py checks them on every container. */}}
{{- define "s2s.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "s2s.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment both modes read: which Pod this is, the operator namespace, common flags. */}}
{{- define "s2s.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: S2S_LOG
  value: {{ .Values.logLevel | quote }}
- name: S2S_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* host:port to listen on: include "s2s.listen" (list . PORT); IPv6 in brackets. */}}
{{- define "s2s.listen" -}}
{{- $addr := (index . 0).Values.listenAddress -}}
{{- if contains ":" $addr -}}[{{ $addr }}]{{- else -}}{{ $addr }}{{- end -}}:{{ index . 1 }}
{{- end }}

{{/* The probes' host: empty (the Pod IP) unless the processes listen on one address only. */}}
{{- define "s2s.probeHost" -}}
{{- if not (has .Values.listenAddress (list "0.0.0.0" "::")) -}}
{{ .Values.listenAddress }}
{{- end -}}
{{- end }}

{{- define "s2s.controllerContainer" -}}
- name: controller
  image: {{ include "s2s.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - controller
    - --issuer={{ include "s2s.issuer" . }}
    - --max-token-lifetime={{ .Values.maxTokenLifetime }}
    - --signing-algorithm={{ .Values.signingAlgorithm }}
    - --key-rotation={{ .Values.keyRotation }}
    - --key-publish-ahead={{ .Values.keyPublishAhead }}
    - --concurrency={{ .Values.controller.concurrency }}
    - --health-listen={{ include "s2s.listen" (list . 8081) }}
    {{- if include "s2s.operatorTls" . }}
    - --tls-ca-secret={{ .Release.Name }}-ca
    - --tls-certificate={{ .Release.Name }}-token-server-tls={{ include "s2s.tokenServerTlsNames" . }}
    {{- if include "s2s.webhook" . }}
    - --tls-certificate={{ .Release.Name }}-webhook-tls={{ .Release.Name }}-webhook.{{ .Release.Namespace }}.svc{{ with .Values.webhook.url.host }},{{ (urlParse (printf "https://%s" .)).hostname }}{{ end }}
    - --webhook-configuration={{ .Release.Name }}-inject
    {{- end }}
    - --tls-ca-lifetime={{ .Values.tls.caLifetime }}
    - --tls-cert-lifetime={{ .Values.tls.certificateLifetime }}
    - --tls-propagation={{ .Values.tls.propagation }}
    {{- end }}
  env:
    {{- include "s2s.commonEnv" . | nindent 4 }}
  ports:
    - name: metrics
      containerPort: 8081
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: metrics
      {{- with include "s2s.probeHost" . }}
      host: {{ . | quote }}
      {{- end }}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: metrics
      {{- with include "s2s.probeHost" . }}
      host: {{ . | quote }}
      {{- end }}
    periodSeconds: 5
    failureThreshold: 3
  securityContext:
    {{- include "s2s.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- toYaml .Values.controller.resources | nindent 4 }}
{{- end }}

{{- define "s2s.tokenServerContainer" -}}
{{- $tls := include "s2s.tls" . -}}
{{- $port := include "s2s.tokenServerPort" . -}}
{{- $portName := include "s2s.tokenServerPortName" . -}}
{{- $webhook := include "s2s.webhook" . -}}
- name: token-server
  image: {{ include "s2s.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - token-server
    - --issuer={{ include "s2s.issuer" . }}
    - --max-token-lifetime={{ .Values.maxTokenLifetime }}
    - --listen={{ include "s2s.listen" (list . $port) }}
    {{- if $tls }}
    - --tls-secret={{ .Release.Name }}-token-server-tls
    {{- end }}
    {{- if $webhook }}
    - --webhook-listen={{ include "s2s.listen" (list . .Values.webhook.port) }}
    - --webhook-tls-secret={{ .Release.Name }}-webhook-tls
    - --agent-image={{ include "s2s.image" . }}
    - --agent-image-pull-policy={{ .Values.image.pullPolicy }}
    {{- end }}
    - --audit-log={{ .Values.auditLog }}
    {{- if .Values.allowUnclaimedAudiences }}
    - --allow-unclaimed-audiences
    {{- end }}
  env:
    {{- include "s2s.commonEnv" . | nindent 4 }}
  ports:
    - name: {{ $portName }}
      containerPort: {{ $port }}
      protocol: TCP
    {{- if $webhook }}
    - name: webhook
      containerPort: {{ .Values.webhook.port }}
      protocol: TCP
    {{- end }}
  # /healthz, /readyz and /metrics are served on the token port (HTTPS when TLS is on; the
  # kubelet does not verify the certificate). The TLS Secrets are read through the API
  # (a watch), not mounted, so a renewed certificate is served at once.
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $portName }}
      scheme: {{ $portName | upper }}
      {{- with include "s2s.probeHost" . }}
      host: {{ . | quote }}
      {{- end }}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $portName }}
      scheme: {{ $portName | upper }}
      {{- with include "s2s.probeHost" . }}
      host: {{ . | quote }}
      {{- end }}
    periodSeconds: 5
    failureThreshold: 3
  securityContext:
    {{- include "s2s.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- toYaml .Values.tokenServer.resources | nindent 4 }}
{{- end }}

{{/*
The Deployments' update strategy. On the node's network the Pods hold the node's ports (the
scheduler counts them as host ports), so a surge Pod could never be scheduled beside the
old one and a rollout would stall: replace one Pod at a time instead.
*/}}
{{- define "s2s.strategy" -}}
{{- if .Values.hostNetwork -}}
strategy:
  type: RollingUpdate
  rollingUpdate:
    maxSurge: 0
    maxUnavailable: 1
{{- end -}}
{{- end }}

{{/* Pod-level settings shared by both Deployments. */}}
{{- define "s2s.podScheduling" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
# The node's resolver, and cluster DNS names still resolve if the cluster has DNS.
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
