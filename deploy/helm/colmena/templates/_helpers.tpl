{{/* Names, labels, images and the pieces every Colmena pod shares. */}}

{{- define "colmena.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "colmena.fullname" -}}
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

{{- define "colmena.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "colmena.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: colmena
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "colmena.selectorLabels" -}}
app.kubernetes.io/name: {{ include "colmena.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "colmena.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "colmena.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image of a Colmena component: (dict "root" $ "component" "gateway" "override" "") */}}
{{- define "colmena.image" -}}
{{- if .override }}
{{- .override }}
{{- else }}
{{- printf "%s/%s:%s" .root.Values.image.repository .component (default .root.Chart.AppVersion .root.Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Whether the in-chart broker is a cluster of several nodes. */}}
{{- define "colmena.brokerClustered" -}}
{{- if and .Values.broker.enabled (gt (int .Values.broker.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "colmena.brokerName" -}}
{{- printf "%s-rabbitmq" (include "colmena.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret and key holding the broker URL the services use. */}}
{{- define "colmena.brokerUrlSecret" -}}
{{- if .Values.broker.enabled }}
{{- default (include "colmena.brokerName" .) .Values.broker.auth.existingSecret }}
{{- else }}
{{- default (printf "%s-broker-url" (include "colmena.fullname" .)) .Values.externalBroker.existingSecret }}
{{- end }}
{{- end }}

{{- define "colmena.brokerUrlKey" -}}
{{- if .Values.broker.enabled }}url{{ else }}{{ .Values.externalBroker.existingSecretKey }}{{ end }}
{{- end }}

{{/* Whether the chart makes the broker's users: one per service kind (files/definitions.json). */}}
{{- define "colmena.brokerUsers" -}}
{{- if and .Values.broker.enabled (not .Values.broker.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/* Key of the broker URL of one service kind: (dict "root" $ "kind" "thinker") */}}
{{- define "colmena.brokerUrlKeyFor" -}}
{{- if include "colmena.brokerUsers" .root }}url-{{ .kind }}{{ else }}{{ include "colmena.brokerUrlKey" .root }}{{ end }}
{{- end }}

{{/* Password of the broker user of one service kind, derived from the broker's password. */}}
{{- define "colmena.brokerPasswordFor" -}}
{{- sha256sum (printf "colmena broker user %s:%s" .kind .root.Values.broker.auth.password) }}
{{- end }}

{{/* The campaign secret the services sign their messages with. */}}
{{- define "colmena.campaignSecret" -}}
{{- if .Values.campaignSecret }}
{{- .Values.campaignSecret }}
{{- else if and .Values.broker.enabled .Values.broker.auth.password }}
{{- sha256sum (printf "colmena campaign secret:%s" .Values.broker.auth.password) }}
{{- else if and (not .Values.broker.enabled) .Values.externalBroker.url }}
{{- sha256sum (printf "colmena campaign secret:%s" .Values.externalBroker.url) }}
{{- end }}
{{- end }}

{{/* The Secret holding a CA the services trust for amqps, if any. */}}
{{- define "colmena.brokerCaSecret" -}}
{{- if and .Values.broker.enabled .Values.broker.tls.enabled }}
{{- .Values.broker.tls.secretName }}
{{- else if not .Values.broker.enabled }}
{{- .Values.externalBroker.caSecretName }}
{{- end }}
{{- end }}

{{/* Refuse to render without credentials: the chart has no default secrets. */}}
{{- define "colmena.validate" -}}
{{- if .Values.broker.enabled }}
{{- if and (not .Values.broker.auth.existingSecret) (not .Values.broker.auth.password) }}
{{- fail "broker.auth.password is required: the chart has no default credentials. Set it (--set broker.auth.password=...) or name a Secret with keys username, password and url in broker.auth.existingSecret." }}
{{- end }}
{{- if and .Values.broker.tls.enabled (not .Values.broker.tls.secretName) }}
{{- fail "broker.tls.enabled needs broker.tls.secretName: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt." }}
{{- end }}
{{- $replicas := int .Values.broker.replicas }}
{{- if and (gt $replicas 1) (eq (mod $replicas 2) 0) }}
{{- fail "broker.replicas must be 1 or odd (3, 5, 7): quorum queues need a majority of the nodes, and an even number of nodes survives no more failures than one node fewer." }}
{{- end }}
{{- if and (gt $replicas 1) (not .Values.broker.auth.existingSecret) (not .Values.broker.auth.erlangCookie) }}
{{- fail "broker.replicas > 1 makes a cluster, whose nodes share a secret: set broker.auth.erlangCookie (a long random string) or the key erlang-cookie in broker.auth.existingSecret." }}
{{- end }}
{{- if .Values.externalBroker.url }}
{{- fail "externalBroker.url is set but broker.enabled is true: set broker.enabled=false to use the external broker." }}
{{- end }}
{{- else if and (not .Values.externalBroker.url) (not .Values.externalBroker.existingSecret) }}
{{- fail "broker.enabled is false, so externalBroker.url (amqp[s]://user:password@host:port/vhost) or externalBroker.existingSecret is required." }}
{{- end }}
{{- if and (not .Values.existingCampaignSecret) (not (include "colmena.campaignSecret" .)) }}
{{- fail "campaignSecret or existingCampaignSecret is required when the broker credentials come from an existing Secret: the services sign their messages with it (at least 16 characters; see docs/security.md)." }}
{{- end }}
{{- if and .Values.gateway.enabled (not .Values.gateway.auth.existingSecret) (not .Values.gateway.auth.tokens) }}
{{- fail "gateway.auth.tokens is required: the gateway refuses clients without a token. Set gateway.auth.tokens[0].token and gateway.auth.tokens[0].clientId, or name a Secret in gateway.auth.existingSecret." }}
{{- end }}
{{- end }}

{{/* Environment every Colmena container gets: (dict "root" $ "kind" "thinker") */}}
{{- define "colmena.commonEnv" -}}
- name: COLMENA_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "colmena.brokerUrlSecret" .root }}
      key: {{ include "colmena.brokerUrlKeyFor" . }}
- name: COLMENA_CAMPAIGN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ default (printf "%s-campaign" (include "colmena.fullname" .root)) .root.Values.existingCampaignSecret }}
      key: secret
{{- with .root }}
- name: COLMENA_CAMPAIGN
  value: {{ .Values.campaign | quote }}
- name: COLMENA_MAX_MESSAGE_SIZE
  value: {{ int64 .Values.maxMessageSize | quote }}
{{- if include "colmena.brokerCaSecret" . }}
- name: SSL_CERT_FILE
  value: /etc/colmena/broker-ca/ca.crt
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes every Colmena pod gets: scratch space on a read-only root, the broker CA. */}}
{{- define "colmena.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratchSizeLimit }}
- name: work
  emptyDir:
    sizeLimit: {{ .Values.scratchSizeLimit }}
{{- with include "colmena.brokerCaSecret" . }}
- name: broker-ca
  secret:
    secretName: {{ . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{- define "colmena.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: work
  mountPath: /var/lib/colmena
{{- if include "colmena.brokerCaSecret" . }}
- name: broker-ca
  mountPath: /etc/colmena/broker-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod-level settings every Colmena pod shares. */}}
{{- define "colmena.podSpec" -}}
serviceAccountName: {{ include "colmena.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Annotations that restart the pods when the credentials they read change. */}}
{{- define "colmena.podAnnotations" -}}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
