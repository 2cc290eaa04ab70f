{{/* The chart name, or nameOverride. */}}
{{- define "pollen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The resource name prefix; also the headless Service's name, used for bootstrap. */}}
{{- define "pollen.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "pollen.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pollen.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels shared by every Pollen pod (agents and seeds): the headless Service selects these. */}}
{{- define "pollen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pollen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pollen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pollen.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pollen.image" -}}
{{- $repo := required "image.repository is required: no Pollen image is published yet; build deploy/docker/Dockerfile, push it, and set image.repository" .Values.image.repository -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The bootstrap list: every address of the headless Service, then extraBootstrap. */}}
{{- define "pollen.bootstrap" -}}
{{- $dns := printf "dns:%s.%s.svc.%s:%d" (include "pollen.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.ports.p2p) -}}
{{- prepend .Values.agent.extraBootstrap $dns | join ";" -}}
{{- end -}}

{{/* The admin address: the pod's IP (POD_IP, declared first) unless adminHost is set.
     Called with (dict "ctx" $ "adminHost" HOST), as are commonEnv and probes. */}}
{{- define "pollen.adminAddr" -}}
{{- include "pollen.hostPort" (dict "ctx" .ctx "host" (default "$(POD_IP)" .adminHost) "port" .ctx.Values.ports.admin) -}}
{{- end -}}

{{/* HOST:PORT, with the host in brackets in an IPv6 cluster (unless it is an IPv4 literal
     such as 127.0.0.1). Called with (dict "ctx" $ "host" HOST "port" PORT). */}}
{{- define "pollen.hostPort" -}}
{{- if and (eq (include "pollen.ipFamily" .ctx) "IPv6") (not (regexMatch "^[0-9.]+$" .host)) -}}
{{- printf "[%s]:%d" .host (int .port) -}}
{{- else -}}
{{- printf "%s:%d" .host (int .port) -}}
{{- end -}}
{{- end -}}

{{/* The validated ipFamily value. */}}
{{- define "pollen.ipFamily" -}}
{{- if not (has .Values.ipFamily (list "IPv4" "IPv6")) -}}
{{- fail (printf "ipFamily must be IPv4 or IPv6, not %v" .Values.ipFamily) -}}
{{- end -}}
{{- .Values.ipFamily -}}
{{- end -}}

{{/* Environment shared by agents and seeds; the caller adds roles, cache size and extras. */}}
{{- define "pollen.commonEnv" -}}
{{- $admin := include "pollen.adminAddr" . -}}
{{- with .ctx -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POLLEN_DATA_DIR
  value: /var/lib/pollen
- name: POLLEN_METRICS_LISTEN
  value: {{ $admin | quote }}
- name: POLLEN_P2P_LISTEN
  value: {{ printf "%s/tcp/%d" (ternary "/ip6/::" "/ip4/0.0.0.0" (eq (include "pollen.ipFamily" .) "IPv6")) (int .Values.ports.p2p) | quote }}
- name: POLLEN_BOOTSTRAP
  value: {{ include "pollen.bootstrap" . | quote }}
- name: POLLEN_SWARM_KEY
  value: /etc/pollen/swarm/swarm.key
- name: POLLEN_LOG_FORMAT
  value: {{ .Values.agent.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.agent.logLevel | quote }}
{{- with .Values.agent.upstreams }}
- name: POLLEN_UPSTREAM
  value: {{ join ";" . | quote }}
{{- end }}
{{- with .Values.agent.registries }}
- name: POLLEN_REGISTRY
  value: {{ include "pollen.registries" . | quote }}
{{- end }}
{{- with .Values.agent.uploadLimit }}
- name: POLLEN_UPLOAD_LIMIT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.agent.downloadLimit }}
- name: POLLEN_DOWNLOAD_LIMIT
  value: {{ . | quote }}
{{- end }}
{{- if .Values.agent.configFile }}
- name: POLLEN_CONFIG
  value: /etc/pollen/pollen.toml
{{- end }}
{{- if .Values.agent.caConfigMap }}
- name: POLLEN_CA_FILE
  value: /etc/pollen/ca/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* agent.registries as POLLEN_REGISTRY: HOST=URL,URL;HOST=URL (hosts sorted). */}}
{{- define "pollen.registries" -}}
{{- $entries := list -}}
{{- range $host, $urls := . -}}
{{- $entries = append $entries (printf "%s=%s" $host (join "," $urls)) -}}
{{- end -}}
{{- join ";" $entries -}}
{{- end -}}

{{/* A map of extra environment variables, sorted by name. */}}
{{- define "pollen.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* The Secret holding the swarm key: the user's, or the one the chart makes once. */}}
{{- define "pollen.swarmKeySecret" -}}
{{- .Values.swarmKey.existingSecret | default (printf "%s-swarm-key" (include "pollen.fullname" .)) -}}
{{- end -}}

{{/* Volumes for the optional config file, credentials and CA bundle (agents and seeds). */}}
{{- define "pollen.configVolumeMounts" -}}
- name: swarm-key
  mountPath: /etc/pollen/swarm
  readOnly: true
{{- if .Values.agent.configFile }}
- name: config
  mountPath: /etc/pollen/pollen.toml
  subPath: pollen.toml
  readOnly: true
{{- end }}
{{- if .Values.agent.credentialsSecret }}
- name: credentials
  mountPath: /etc/pollen/credentials
  readOnly: true
{{- end }}
{{- if .Values.agent.caConfigMap }}
- name: ca
  mountPath: /etc/pollen/ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "pollen.configVolumes" -}}
# The swarm key: only pods holding it can join the swarm. 0440: root (the agents) and the
# seeds' fsGroup read it, no one else.
- name: swarm-key
  secret:
    secretName: {{ include "pollen.swarmKeySecret" . }}
    defaultMode: 0440
{{- if .Values.agent.configFile }}
- name: config
  configMap:
    name: {{ include "pollen.fullname" . }}
{{- end }}
{{- if .Values.agent.credentialsSecret }}
- name: credentials
  secret:
    secretName: {{ .Values.agent.credentialsSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.agent.caConfigMap }}
- name: ca
  configMap:
    name: {{ .Values.agent.caConfigMap }}
{{- end }}
{{- end -}}

{{/* Probes on the admin port; with adminHost set they dial it (127.0.0.1 with hostNetwork). */}}
{{- define "pollen.probes" -}}
{{- $host := .adminHost -}}
startupProbe:
  httpGet:
    path: /healthz
    port: admin
    {{- with $host }}
    host: {{ . }}
    {{- end }}
  periodSeconds: 2
  failureThreshold: 150
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
    {{- with $host }}
    host: {{ . }}
    {{- end }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
    {{- with $host }}
    host: {{ . }}
    {{- end }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}
