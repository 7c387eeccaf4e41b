{{/*
Names, labels, and the small renderers the ConfigMap uses to turn values into the TOML contract
(/work/shared/docs/config.md is the contract; `mirrorgate check` is its judge).
*/}}

{{- define "mirrorgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mirrorgate.fullname" -}}
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

{{- define "mirrorgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mirrorgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mirrorgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mirrorgate.labels" -}}
helm.sh/chart: {{ include "mirrorgate.chart" . }}
{{ include "mirrorgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mirrorgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mirrorgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the projected config volume is mounted; every relative path in the TOML is relative to it. */}}
{{- define "mirrorgate.configDir" -}}/etc/mirrorgate{{- end -}}

{{/* The writable folder (emptyDir or PVC) for self-signed and ACME material and a generated token key. */}}
{{- define "mirrorgate.stateDir" -}}/var/lib/mirrorgate{{- end -}}

{{/* The built-in cache's store, on a volume of its own (emptyDir with sizeLimit, or a per-pod PVC). */}}
{{- define "mirrorgate.cacheDir" -}}/var/cache/mirrorgate{{- end -}}

{{/* Where a file-mode audit trail is written: the audit volume (emptyDir or an existing claim). */}}
{{- define "mirrorgate.auditDir" -}}/var/log/mirrorgate{{- end -}}

{{/* The audit trail goes to a file (and so needs the audit volume) rather than standard output. */}}
{{- define "mirrorgate.auditToFile" -}}
{{- if and .Values.audit.enabled (ne .Values.audit.file "-") -}}true{{- end -}}
{{- end -}}

{{/* Where the usage ledger lives, for the rendered config's comment and NOTES. */}}
{{- define "mirrorgate.usageStore" -}}
{{- if include "mirrorgate.redisUrl" . -}}
shared through redis; no file is written
{{- else -}}
{{- $store := .Values.usage.store | default "usage.db" -}}
{{ ternary $store (printf "%s/certs/%s" (include "mirrorgate.stateDir" .) $store) (hasPrefix "/" $store) }}
{{- end -}}
{{- end -}}

{{/* The source of the LDAP CA: "inline", "configMap", "secret", or empty. */}}
{{- define "mirrorgate.ldapCaSource" -}}
{{- with .Values.auth.ldap -}}
{{- if .enabled -}}
{{- if .caCert }}inline{{ else if .caConfigMap }}configMap{{ else if .caSecret }}secret{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the LDAP bind password: the chart's or an existing one. */}}
{{- define "mirrorgate.ldapSecretName" -}}
{{- if .Values.auth.ldap.enabled -}}
{{- .Values.auth.ldap.existingSecret | default (printf "%s-ldap" (include "mirrorgate.fullname" .)) -}}
{{- end -}}
{{- end -}}

{{/* Replicas that may run at once: several when replicaCount > 1 or when the HPA may scale out. */}}
{{- define "mirrorgate.multiReplica" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the serving certificate (cert-manager's or an existing one); empty for self-signed/ACME. */}}
{{- define "mirrorgate.tlsSecretName" -}}
{{- if .Values.certManager.enabled -}}
{{- default (printf "%s-tls" (include "mirrorgate.fullname" .)) .Values.certManager.secretName -}}
{{- else if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "mirrorgate.htpasswdSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if .Values.auth.htpasswd -}}
{{- printf "%s-htpasswd" (include "mirrorgate.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "mirrorgate.tokenSecretName" -}}
{{- if .Values.auth.token.existingSecret -}}
{{- .Values.auth.token.existingSecret -}}
{{- else if .Values.auth.token.privateKey -}}
{{- printf "%s-token-key" (include "mirrorgate.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The redis URL the replicas share limits through: bundled, external, or none. */}}
{{- define "mirrorgate.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:%d" (include "mirrorgate.fullname" .) (int .Values.redis.port) -}}
{{- else if .Values.limits.redis -}}
{{- .Values.limits.redis -}}
{{- end -}}
{{- end -}}

{{/* A host or name as an environment-variable fragment: docker.example → DOCKER_EXAMPLE. */}}
{{- define "mirrorgate.envName" -}}
{{- regexReplaceAll "[^A-Za-z0-9]" . "_" | upper -}}
{{- end -}}

{{/* A host or name as a Kubernetes key/name fragment: *.docker.example → wildcard-docker-example. */}}
{{- define "mirrorgate.keyName" -}}
{{- regexReplaceAll "[^a-z0-9-]" (replace "*" "wildcard" (lower .)) "-" | trimAll "-" -}}
{{- end -}}

{{/* The Service name of one backend cache; the route's first endpoint points at it. */}}
{{- define "mirrorgate.cacheName" -}}
{{- printf "%s-cache-%s" (include "mirrorgate.fullname" .root) .cache.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mirrorgate.cacheLabels" -}}
{{ include "mirrorgate.labels" .root }}
app.kubernetes.io/component: backend-cache
mirrorgate.example/cache: {{ .cache.name | quote }}
{{- end -}}

{{- define "mirrorgate.cacheSelectorLabels" -}}
{{ include "mirrorgate.selectorLabels" .root }}
app.kubernetes.io/component: backend-cache
mirrorgate.example/cache: {{ .cache.name | quote }}
{{- end -}}

{{/*
One value as TOML. Strings go through toJson: a JSON string is a valid TOML basic string (Go's encoder never
emits `\/`), so quotes, backslashes and newlines are escaped correctly. Numbers are float64 inside helm;
toJson prints whole numbers without exponent below 1e21. Lists become arrays, maps inline tables with sorted
keys (Go templates range over maps in key order).
*/}}
{{- define "mirrorgate.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- toJson $v -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "mirrorgate.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ toJson $k }} = {{ include "mirrorgate.tomlValue" (get $v $k) }}{{ end }} }
{{- else -}}
{{- fail (printf "cannot write %v (a %s) into the TOML config" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/*
`key = value` lines for the keys of .v listed in .keys, in that order, skipping unset ones (null or "").
Any key of .v not in .keys ∪ .chartKeys fails the render naming .at, so a typo is caught by `helm template`
rather than by the gateway at start.
*/}}
{{- define "mirrorgate.tomlKeys" -}}
{{- $v := .v | default dict -}}
{{- $known := concat .keys (.chartKeys | default list) -}}
{{- range $k, $_ := $v -}}
{{- if not (has $k $known) -}}
{{- fail (printf "%s: unknown key %q (known: %s)" $.at $k (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- range $k := .keys -}}
{{- if hasKey $v $k -}}
{{- $x := get $v $k -}}
{{- if not (or (kindIs "invalid" $x) (and (kindIs "string" $x) (eq $x ""))) }}
{{ $k }} = {{ include "mirrorgate.tomlValue" $x }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
