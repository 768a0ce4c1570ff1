{{/* ballast.image: the image of a binary, (list $ "ballast-control"). */}}
{{- define "ballast.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $tag := $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- with $root.Values.image.registry }}{{ trimSuffix "/" . }}/{{ end }}{{ $name }}:{{ $tag }}
{{- end -}}

{{/* ballast.labels: the labels of a component's objects. */}}
{{- define "ballast.labels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: ballast
{{- end -}}

{{/* ballast.scheduling: a component's nodeSelector, tolerations and affinity. */}}
{{- define "ballast.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* ballast.injectHosts: the names and addresses the webhook's certificate is for. */}}
{{- define "ballast.injectDNSNames" -}}
{{- $names := list (printf "ballast-inject.%s.svc" .Release.Namespace) -}}
{{- concat $names .Values.inject.certificate.extraDNSNames | toJson -}}
{{- end -}}

{{/* ballast.controlTLS: "true" when the control plane serves xDS over TLS
with the certificates it issues itself (control.tls.enabled, and not the
insecure demo mode, which is plaintext). */}}
{{- define "ballast.controlTLS" -}}
{{- if and .Values.control.tls.enabled (not .Values.control.insecure) }}true{{ end -}}
{{- end -}}
