{{/* Names and labels shared by every object of the chart. */}}

{{- define "ckq.controller" -}}{{ .Release.Name }}-controller{{- end }}
{{- define "ckq.agent" -}}{{ .Release.Name }}-agent{{- end }}

{{/*
The ConfigMap the programs read: queue_controller/wire.py CONFIG_NAMESPACE / CONFIG_MAP. The code
fixes both names, so the chart does too (tests/unit/test_helm_chart.py checks them against wire.py).
*/}}
{{- define "ckq.configNamespace" -}}ckq-system{{- end }}
{{- define "ckq.configName" -}}ckq-config{{- end }}

{{- define "ckq.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "ckq.labels" -}}
app.kubernetes.io/name: ckq
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "ckq.agentEnabled" -}}
{{- if and .Values.agent.enabled .Values.checkpoint.storeHostPath }}true{{ end }}
{{- end }}
