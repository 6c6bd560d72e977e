{{- define "rustlayer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rustlayer.fullname" -}}
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

{{- define "rustlayer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rustlayer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rustlayer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rustlayer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: snapshotter
{{- end }}

{{- define "rustlayer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rustlayer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rustlayer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The name containerd knows this release's daemon by (its proxy plugin and
snapshotter), which every node-level default derives from, so that a second
release with another name runs beside the first on the same nodes.
*/}}
{{- define "rustlayer.pluginName" -}}
{{- $name := toString .Values.containerdConfig.patch.pluginName }}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" $name) }}
{{- fail (printf "containerdConfig.patch.pluginName %q is not a bare TOML key (letters, digits, '_' and '-' only): containerd's config names the proxy plugin by it" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* The daemon's root on the host: config.root, or /var/lib/<pluginName>. */}}
{{- define "rustlayer.root" -}}
{{- .Values.config.root | default (printf "/var/lib/%s" (include "rustlayer.pluginName" .)) }}
{{- end }}

{{/* The daemon's socket: config.address, or /run/<pluginName>/<pluginName>.sock. */}}
{{- define "rustlayer.address" -}}
{{- $name := include "rustlayer.pluginName" . }}
{{- $address := .Values.config.address | default (printf "/run/%s/%s.sock" $name $name) }}
{{- if gt (len $address) 107 }}
{{- fail (printf "the daemon's socket %q is longer than a unix socket path may be (107 bytes): set config.address, or a shorter containerdConfig.patch.pluginName" $address) }}
{{- end }}
{{- $address }}
{{- end }}

{{/* The socket's directory, shared with the host so containerd can dial it. */}}
{{- define "rustlayer.socketDir" -}}
{{- dir (include "rustlayer.address" .) }}
{{- end }}

{{/*
containerd's runtime handler (runtimeClass.handler, or the plugin name) and the
RuntimeClass naming it (runtimeClass.name, or the handler). Kubernetes wants
both as lowercase RFC 1123 labels.
*/}}
{{- define "rustlayer.runtimeHandler" -}}
{{- $handler := .Values.runtimeClass.handler | default (include "rustlayer.pluginName" .) }}
{{- if and .Values.runtimeClass.enabled (not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $handler)) }}
{{- fail (printf "runtime handler %q is no lowercase RFC 1123 label, as a RuntimeClass needs: set runtimeClass.handler (and runtimeClass.name), or a containerdConfig.patch.pluginName that is one" $handler) }}
{{- end }}
{{- $handler }}
{{- end }}

{{- define "rustlayer.runtimeClassName" -}}
{{- .Values.runtimeClass.name | default (include "rustlayer.runtimeHandler" .) }}
{{- end }}

{{/*
The label the daemon sets on its Node while it serves: nodeIntegration.readyLabel,
or rustlayer.io/ready for the plugin name rustlayer (what installs of one release
have always selected on) and rustlayer.io/ready-<pluginName> for any other, so
that one release's daemon stopping does not unlabel a node where another serves.
The daemon checks it again when it reads its config.
*/}}
{{- define "rustlayer.readyLabel" -}}
{{- $name := include "rustlayer.pluginName" . }}
{{- $derived := ternary "rustlayer.io/ready" (printf "rustlayer.io/ready-%s" $name) (eq $name "rustlayer") }}
{{- $label := toString (.Values.nodeIntegration.readyLabel | default $derived) }}
{{- $prefix := "" }}
{{- $labelName := $label }}
{{- if contains "/" $label }}
{{- $prefix = regexReplaceAll "/.*$" $label "" }}
{{- $labelName = regexReplaceAll "^[^/]*/" $label "" }}
{{- end }}
{{- $prefixOk := or (not (contains "/" $label)) (and (le (len $prefix) 253) (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" $prefix)) }}
{{- $nameOk := regexMatch "^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$" $labelName }}
{{- if not (and $prefixOk $nameOk) }}
{{- if .Values.nodeIntegration.readyLabel }}
{{- fail (printf "nodeIntegration.readyLabel %q is no Kubernetes label key: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit" $label) }}
{{- else }}
{{- fail (printf "the node label %q derived from containerdConfig.patch.pluginName is no Kubernetes label key (at most 63 characters after the '/', beginning and ending with a letter or digit): set nodeIntegration.readyLabel" $label) }}
{{- end }}
{{- end }}
{{- $label }}
{{- end }}

{{/*
The daemon's config.toml. Keys are exactly those of the daemon's Config struct,
which rejects unknown ones (values.schema.json checks them first). Strings and
lists of strings go through toJson: JSON strings and arrays of them are valid
TOML. Numbers arrive from YAML as floats; the schema allows integers only.
*/}}
{{- define "rustlayer.configToml" -}}
# Rendered by the rustlayer chart from its values; edit the values, not this file.
root = {{ include "rustlayer.root" . | toJson }}
address = {{ include "rustlayer.address" . | toJson }}
backend = {{ .Values.config.backend | toJson }}
metrics_address = {{ printf "%s:%d" (include "rustlayer.hostForAddress" .Values.metrics.bindAddress) (int .Values.metrics.port) | toJson }}
log_format = {{ .Values.config.logFormat | toJson }}
{{- if not (kindIs "invalid" .Values.config.socketGroup) }}
socket_group = {{ int64 .Values.config.socketGroup }}
{{- end }}
{{- range $table := list "overlay" "devmapper" }}
{{- with index $.Values.config $table }}

[{{ $table }}]
{{- range $key, $value := . }}
{{- if or (kindIs "string" $value) (kindIs "slice" $value) }}
{{ $key }} = {{ $value | toJson }}
{{- else if kindIs "bool" $value }}
{{ $key }} = {{ $value }}
{{- else }}
{{ $key }} = {{ int64 $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $readyLabel := include "rustlayer.readyLabel" . }}
{{- /* Only a label other than the daemon's default is written: the default release's file stays as it was. */}}
{{- if ne $readyLabel "rustlayer.io/ready" }}

[node]
ready_label = {{ $readyLabel | toJson }}
{{- end }}
{{- end }}

{{/* An IPv6 literal needs brackets in host:port. */}}
{{- define "rustlayer.hostForAddress" -}}
{{- if contains ":" . }}{{ printf "[%s]" (trimAll "[]" .) }}{{ else }}{{ . }}{{ end }}
{{- end }}
