{{/*
Names and labels.
*/}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "switchboard.operator.fullname" -}}
{{- printf "%s-operator" (include "switchboard.fullname" .) }}
{{- end }}

{{- define "switchboard.mediaNode.fullname" -}}
{{- printf "%s-media-node" (include "switchboard.fullname" .) }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "switchboard.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "switchboard.mediaNode.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: media-node
{{- end }}

{{- define "switchboard.operator.labels" -}}
{{ include "switchboard.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "switchboard.mediaNode.labels" -}}
{{ include "switchboard.labels" . }}
app.kubernetes.io/component: media-node
{{- end }}

{{- define "switchboard.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "switchboard.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.mediaNode.serviceAccountName" -}}
{{- if .Values.mediaNode.serviceAccount.create }}
{{- default (include "switchboard.mediaNode.fullname" .) .Values.mediaNode.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.mediaNode.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "switchboard.mediaNode.image" -}}
{{- printf "%s:%s" .Values.mediaNode.image.repository (default .Chart.AppVersion .Values.mediaNode.image.tag) }}
{{- end }}

{{- define "switchboard.controlTLS.secretName" -}}
{{- default (printf "%s-control-tls" (include "switchboard.fullname" .)) .Values.controlTLS.existingSecret }}
{{- end }}

{{- define "switchboard.routingConfig.name" -}}
{{- default (printf "%s-routing" (include "switchboard.mediaNode.fullname" .)) .Values.mediaNode.routingConfig.existingSecret }}
{{- end }}

{{/*
Where the control-channel TLS material and token are mounted in both containers.
*/}}
{{- define "switchboard.controlTLS.mountPath" -}}
/etc/switchboard/control-tls
{{- end }}

{{- define "switchboard.controlToken.mountPath" -}}
/etc/switchboard/control-token
{{- end }}

{{- define "switchboard.callApiToken.secretName" -}}
{{- default (printf "%s-call-api-token" (include "switchboard.fullname" .)) .Values.callApiToken.existingSecret }}
{{- end }}

{{- define "switchboard.callApiToken.mountPath" -}}
/etc/switchboard/call-api-token
{{- end }}

{{- define "switchboard.adminToken.secretName" -}}
{{- default (printf "%s-admin-token" (include "switchboard.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{- define "switchboard.adminToken.mountPath" -}}
/etc/switchboard/admin-token
{{- end }}

{{- define "switchboard.controlToken.secretName" -}}
{{- default (printf "%s-control-token" (include "switchboard.fullname" .)) .Values.controlToken.existingSecret }}
{{- end }}

{{- define "switchboard.controlTLS.serverName" -}}
{{- default (include "switchboard.mediaNode.fullname" .) .Values.controlTLS.serverName }}
{{- end }}

{{/*
==========================================================================
MEDIA-NODE FLAGS: the one place that names the command-line flags of
`switchboard-media-node` (media-node/src/main.rs). When a flag is renamed
there, rename it here. An empty name means the binary has no such flag
yet: the chart then does not pass it (the value stays documented).
==========================================================================
*/}}
{{- define "switchboard.mediaNode.flags" -}}
# --config FILE: an optional routing configuration (proto3 JSON) the node
# starts with; without it the node is not ready until the operator has
# programmed it over the control channel.
config: --config
# --sip-bind ADDR:PORT (UDP and TCP).
sipBind: --sip-bind
# --advertise HOST[:PORT]: written into Via, Contact and SDP.
advertise: --advertise
# --http-bind ADDR:PORT: /metrics /healthz /readyz, POST /drain.
httpBind: --http-bind
# --admin-token-file FILE: the bearer token POST /drain needs from outside
# the pod's loopback.
adminTokenFile: --admin-token-file
# --send-drain: the preStop hook's client (POST /drain with the admin token
# to the node at $SWITCHBOARD_HTTP_BIND, then exit).
sendDrain: --send-drain
# --egress-allow CIDR (repeatable): networks agent URLs and webhooks may
# reach although the egress guard refuses them by default.
egressAllow: --egress-allow
# --rtp-ports START-END.
rtpPorts: --rtp-ports
# --max-calls N: 503 above it.
maxCalls: --max-calls
# --log-json: log lines as JSON.
logJson: --log-json
# --drain-grace-secs N: how long a drain waits before hanging up.
drainGrace: --drain-grace-secs
# The control channel the operator programs the node through (gRPC).
controlBind: --control-bind
controlCert: --control-cert
controlKey: --control-key
controlTokenFile: --control-token-file
controlInsecure: --control-insecure
# The call API (HTTP/JSON under /v1/calls and gRPC CallService) and its
# bearer token.
callApiBind: --api-bind
callApiTokenFile: --api-token-file
# A separate address for SDP (media), for loadBalancer mode where SIP goes
# through the load balancer but RTP must reach the pod directly.
mediaAdvertise: --media-advertise
# SIP over TLS: the listener address and its certificate (reloaded on change).
tlsBind: --tls-bind
tlsCert: --tls-cert
tlsKey: --tls-key
{{- end }}

{{/*
Operator flags (operator/src/main.rs), the same way.
*/}}
{{- define "switchboard.operator.flags" -}}
namespace: --namespace
leaseName: --lease-name
leaseDurationSeconds: --lease-duration-seconds
noLeaderElection: --no-leader-election
logJson: --log-json
mediaNodeSelector: --media-node-selector
controlPort: --control-port
controlCA: --control-ca
controlServerName: --control-server-name
controlTokenFile: --control-token-file
controlInsecure: --control-insecure
noDeletionCost: --no-deletion-cost
{{- end }}

{{/*
The namespaces the operator is limited to (Roles there instead of a
ClusterRole), as a JSON list: operator.rbac.watchNamespaces, else
operator.watchNamespace, else none (cluster-wide).
*/}}
{{- define "switchboard.operator.watchNamespaces" -}}
{{- $op := .Values.operator }}
{{- if $op.rbac.watchNamespaces }}
{{- toJson $op.rbac.watchNamespaces }}
{{- else if $op.watchNamespace }}
{{- toJson (list $op.watchNamespace) }}
{{- else }}
{{- toJson (list) }}
{{- end }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express; each names the values.
*/}}
{{- define "switchboard.validate" -}}
{{- $op := .Values.operator }}
{{- if and (not $op.leaderElection.enabled) (gt (int $op.replicas) 1) }}
{{- fail (printf "operator.replicas is %d but operator.leaderElection.enabled is false: more than one replica needs leader election" (int $op.replicas)) }}
{{- end }}
{{- $mn := .Values.mediaNode }}
{{- if ge (int $mn.rtp.portMin) (int $mn.rtp.portMax) }}
{{- fail (printf "mediaNode.rtp.portMin (%d) must be below mediaNode.rtp.portMax (%d)" (int $mn.rtp.portMin) (int $mn.rtp.portMax)) }}
{{- end }}
{{- $rbac := .Values.operator.rbac }}
{{- if and $op.watchNamespace $rbac.watchNamespaces }}
{{- fail "set operator.watchNamespace or operator.rbac.watchNamespaces, not both" }}
{{- end }}
{{- if gt (len $rbac.watchNamespaces) 1 }}
{{- fail (printf "operator.rbac.watchNamespaces lists %d namespaces, but switchboard-operator watches one namespace (--namespace) or all of them: list one namespace, or leave it empty for cluster-wide access" (len $rbac.watchNamespaces)) }}
{{- end }}
{{- $ports := list (int $mn.sip.port) (int $mn.adminPort) (int $mn.callApiPort) (int $mn.controlPort) }}
{{- range $p := $ports }}
{{- if and (ge $p (int $mn.rtp.portMin)) (le $p (int $mn.rtp.portMax)) }}
{{- fail (printf "port %d (mediaNode.sip.port, adminPort, callApiPort or controlPort) lies inside mediaNode.rtp.portMin-portMax (%d-%d)" $p (int $mn.rtp.portMin) (int $mn.rtp.portMax)) }}
{{- end }}
{{- end }}
{{- if ne (len (uniq $ports)) (len $ports) }}
{{- fail "mediaNode.sip.port, adminPort, callApiPort and controlPort must all differ" }}
{{- end }}
{{- if and (eq $mn.networking.mode "loadBalancer") (not $mn.networking.advertiseAddress) }}
{{- fail "mediaNode.networking.advertiseAddress is required with mediaNode.networking.mode loadBalancer: the load balancer's address, written into Via/Contact/SDP" }}
{{- end }}
{{- if le (int $mn.terminationGracePeriodSeconds) 30 }}
{{- fail "mediaNode.terminationGracePeriodSeconds must be above 30 (the node hangs up remaining calls 30 s before it)" }}
{{- end }}
{{- $as := .Values.autoscaling }}
{{- if $as.enabled }}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) }}
{{- end }}
{{- if not (or $as.activeCalls.enabled $as.cpu.enabled) }}
{{- fail "autoscaling.enabled needs a metric: set autoscaling.activeCalls.enabled or autoscaling.cpu.enabled" }}
{{- end }}
{{- if and (eq $as.provider "keda") (or $as.activeCalls.enabled $as.campaigns.enabled) (not $as.keda.prometheusAddress) }}
{{- fail "autoscaling.keda.prometheusAddress is required with autoscaling.provider keda and autoscaling.activeCalls.enabled or autoscaling.campaigns.enabled" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod annotations that restart both workloads when generated control-channel
material changes (on upgrades it is looked up, so it stays the same).
*/}}
{{- define "switchboard.control.checksums" -}}
{{- if and .Values.controlTLS.enabled (not .Values.controlTLS.existingSecret) }}
checksum/control-tls: {{ include "switchboard.controlTLS.data" . | sha256sum }}
{{- end }}
{{- if not .Values.controlToken.existingSecret }}
checksum/control-token: {{ include "switchboard.controlToken.data" . | sha256sum }}
{{- end }}
{{- end }}
