{{- define "hotload.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hotload.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "hotload.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "hotload.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "hotload.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hotload.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hotload.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "hotload.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hotload
{{- end }}

{{- define "hotload.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hotload.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the ServiceAccount to bind when serviceAccount.create is false (never the namespace's default one)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Cluster-scoped names carry the namespace, so two installs never collide. */}}
{{- define "hotload.clusterName" -}}
{{- printf "%s-%s" (include "hotload.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hotload.tlsSecret" -}}
{{- printf "%s-tls" (include "hotload.fullname" .) }}
{{- end }}

{{/* Service names are DNS labels (63 characters): the base is cut to leave room. */}}
{{- define "hotload.webhookService" -}}
{{- printf "%s-webhook" (include "hotload.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "hotload.metricsService" -}}
{{- printf "%s-metrics" (include "hotload.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* repository@digest when a digest is given, else repository:tag (default appVersion). */}}
{{- define "hotload.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default .appVersion .tag) }}
{{- end }}
{{- end }}

{{/* Injection settings, read by the operator as JSON (inject.rs InjectConfig). */}}
{{- define "hotload.injectConfig" -}}
{{- $s := .Values.sidecar -}}
{{- dict
  "image" (include "hotload.image" (dict "repository" $s.image.repository "tag" $s.image.tag "digest" $s.image.digest "appVersion" .Chart.AppVersion))
  "imagePullPolicy" $s.image.pullPolicy
  "operatorAddr" (printf "https://%s.%s.svc:%d" (include "hotload.fullname" .) .Release.Namespace (int .Values.channel.port))
  "adminPort" $s.adminPort
  "args" $s.args
  "resources" $s.resources
  "securityContext" $s.securityContext
  "tokenExpirationSeconds" $s.tokenExpirationSeconds
  | toPrettyJson }}
{{- end }}
