{{/*
Object names are fixed: the server's defaults (Secret secure-defaults-tls, Lease
secure-defaults-certificates, MutatingWebhookConfiguration secure-defaults, Service secure-defaults) and
the RBAC restricted to those names must agree, and several objects are cluster-scoped.
*/}}

{{/* Labels on every object: the manifests' own, plus Helm's. */}}
{{- define "secure-defaults.labels" -}}
app.kubernetes.io/name: secure-defaults
app.kubernetes.io/part-of: secure-defaults
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The webhook's pods: the Deployment's selector, the Service's, the PodDisruptionBudget's. */}}
{{- define "secure-defaults.selectorLabels" -}}
app.kubernetes.io/name: secure-defaults
app.kubernetes.io/component: webhook
{{- end }}

{{- define "secure-defaults.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}:{{ $tag }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{- define "secure-defaults.priorityClassName" -}}
{{ .Values.priorityClassName | default "secure-defaults-critical" }}
{{- end }}

{{/*
The namespaces the webhook serves, and the backstop binding with it: never the system namespaces nor the
webhook's own, the mode's expression, then the user's additions.
*/}}
{{- define "secure-defaults.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [kube-system, kube-public, kube-node-lease, {{ .Release.Namespace }}]
  {{- if eq .Values.mode "opt-in" }}
  - {key: secure-defaults.io/inject, operator: In, values: [enabled, report]}
  {{- else if eq .Values.mode "cluster-wide" }}
  - {key: secure-defaults.io/inject, operator: NotIn, values: [disabled]}
  {{- else }}
  {{- fail (printf "mode must be opt-in or cluster-wide, not %q" .Values.mode) }}
  {{- end }}
  {{- with .Values.webhook.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The policy file, from the values (empty settings left out: the server's defaults are the same). */}}
{{- define "secure-defaults.policy" -}}
{{- $p := .Values.policy -}}
{{- $policy := dict "apiVersion" "secure-defaults.io/v1alpha1" "kind" "Policy" "mode" .Values.mode -}}
{{- range $key := list "exemptNamespaces" "profile" "followPodSecurityLabels" "podExceptions" "defaults" "namespaces" "images" }}
{{- $value := index $p $key }}
{{- if $value }}{{ $_ := set $policy $key $value }}{{ end }}
{{- end }}
{{- if and $p.images .Values.registry.secretName (not (hasKey $p.images "credentials")) }}
{{- $_ := set $policy "images" (merge (dict "credentials" "/etc/secure-defaults/registry/.dockerconfigjson") $p.images) }}
{{- end }}
{{- toYaml $policy }}
{{- end }}

{{/* The process configuration (read once at start; its checksum rolls the Deployment when it changes). */}}
{{- define "secure-defaults.config" -}}
# secure-defaults process configuration (read at start; the Deployment rolls when it changes).
# Keys are snake_case and unknown keys are rejected; every key can also be set as SECURE_DEFAULTS_<KEY>.
listen: 0.0.0.0:8443
admin_listen: 0.0.0.0:8080
policy: /etc/secure-defaults/policy/policy.yaml
log_format: {{ .Values.logFormat }}
log_level: {{ .Values.logLevel }}
# Shutdown: the pod's preStop sleep (5s) runs first, while the endpoint leaves the Service; that is the drain,
# so the server's own drain after SIGTERM is 0. Then in-flight requests get up to 10s.
# 5 + 0 + 10 = 15s, well under terminationGracePeriodSeconds (30).
drain_seconds: 0
shutdown_timeout_seconds: 10
{{- with .Values.clientAuth.caConfigMap }}
# Only callers presenting a client certificate from this CA are served (the API server's AdmissionConfiguration
# must give it one); reloaded when the ConfigMap changes.
tls_client_ca: /etc/secure-defaults/client-ca/{{ $.Values.clientAuth.caKey }}
{{- end }}
{{- end }}

{{- define "secure-defaults.validate" -}}
{{- $source := .Values.certificates.source -}}
{{- if not (has $source (list "self-managed" "cert-manager" "secret")) -}}
{{- fail (printf "certificates.source must be self-managed, cert-manager or secret, not %q" $source) -}}
{{- end -}}
{{- if and (eq $source "secret") (or (not .Values.certificates.secret.name) (not .Values.certificates.secret.caCertificate)) -}}
{{- fail "certificates.source=secret needs certificates.secret.name and certificates.secret.caCertificate" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.controlPlaneCIDRs) -}}
{{- fail "networkPolicy.enabled needs networkPolicy.controlPlaneCIDRs (where the API server calls the webhook from)" -}}
{{- end -}}
{{- end }}
