{{/*
The gateway's TOML config. Relative paths are relative to this file's folder (/etc/mirrorgate), where the
projected volume in the Deployment puts the Secrets: htpasswd, tls/tls.crt + tls/tls.key, token/token-key.pem
(+ .crt), ldap/bind-password (+ ldap/ca.pem), and the upstream and LDAP CA files of the ConfigMap.
*/}}
{{- define "mirrorgate.configToml" -}}
{{- $fullname := include "mirrorgate.fullname" . -}}
{{- $tlsSecret := include "mirrorgate.tlsSecretName" . -}}
{{- $redisUrl := include "mirrorgate.redisUrl" . -}}
{{- $bind := .Values.server.bindAddress -}}
{{- $bindFmt := ternary (printf "[%s]" $bind) $bind (contains ":" $bind) -}}
# Rendered by the mirrorgate chart from its values; edit the values, not this file.
[server]
https = {{ printf "%s:%d" $bindFmt (int .Values.ports.https) | toJson }}
{{- if .Values.ports.http }}
http = {{ printf "%s:%d" $bindFmt (int .Values.ports.http) | toJson }}
{{- end }}
admin = {{ printf "%s:%d" $bindFmt (int .Values.ports.admin) | toJson }}
{{- include "mirrorgate.tomlKeys" (dict "v" .Values.server "at" "server" "keys" (list "trusted_proxies" "hsts" "upstream_timeout" "connect_timeout" "client_header_timeout" "shutdown_grace" "log_format" "metrics_user_labels" "idle_timeout" "max_connections" "max_connections_per_ip" "allow_missing_sni" "upstream_proxy" "upstream_proxy_username_env" "upstream_proxy_password_env" "upstream_proxy_username_file" "upstream_proxy_password_file" "no_proxy") "chartKeys" (list "bindAddress")) }}

[tls]
storage = {{ printf "%s/certs" (include "mirrorgate.stateDir" .) | toJson }}
{{- if $tlsSecret }}
# {{ ternary "cert-manager's" "an existing" .Values.certManager.enabled }} Secret {{ $tlsSecret }}, watched and reloaded when it is renewed
cert = "tls/tls.crt"
key = "tls/tls.key"
{{- else if .Values.tls.acme.enabled }}

[tls.acme]
directory = {{ .Values.tls.acme.directory | toJson }}
contact = {{ include "mirrorgate.tomlValue" (.Values.tls.acme.contact | default list) }}
challenge = {{ .Values.tls.acme.challenge | toJson }}
{{- else }}
# no cert/key and no ACME: a self-signed certificate for every route host, made at start
{{- end }}
{{- $htpasswd := include "mirrorgate.htpasswdSecretName" . }}
{{- if or $htpasswd .Values.auth.token.enabled .Values.auth.apiTokensSecret .Values.auth.ldap.enabled }}

[auth]
{{- if $htpasswd }}
htpasswd = "htpasswd"
{{- end }}
{{- if .Values.auth.apiTokensSecret }}
api_tokens = "api-tokens.json"
{{- end }}
{{- if .Values.auth.token.enabled }}

[auth.token]
{{- if include "mirrorgate.tokenSecretName" . }}
key = "token/token-key.pem"
{{- else }}
# generated at first start; one replica only (the chart refuses several without a key Secret)
key = {{ printf "%s/token-key.pem" (include "mirrorgate.stateDir" .) | toJson }}
{{- end }}
issuer = {{ .Values.auth.token.issuer | toJson }}
service = {{ .Values.auth.token.service | toJson }}
ttl = {{ .Values.auth.token.ttl | toJson }}
{{- end }}
{{- with .Values.auth.ldap }}
{{- if .enabled }}

[auth.ldap]
{{- include "mirrorgate.tomlKeys" (dict "v" . "at" "auth.ldap" "keys" (list "url" "starttls" "bind_dn" "user_base" "user_filter" "group_attribute") "chartKeys" (list "enabled" "bindPassword" "existingSecret" "existingSecretKey" "caCert" "caConfigMap" "caSecret" "caKey")) }}
{{- with include "mirrorgate.ldapCaSource" $ }}
ca = {{ ternary "ldap-ca.pem" "ldap/ca.pem" (eq . "inline") | toJson }}
{{- end }}
bind_password_file = "ldap/bind-password"
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.audit }}
{{- if .enabled }}

[audit]
{{- if eq .file "-" }}
# standard output: the container log, collected with the others
file = "-"
{{- else }}
file = {{ printf "%s/%s" (include "mirrorgate.auditDir" $) .file | toJson }}
{{- end }}
{{- include "mirrorgate.tomlKeys" (dict "v" . "at" "audit" "keys" (list "max_size" "keep") "chartKeys" (list "enabled" "file" "volume")) }}
{{- end }}
{{- end }}
{{- if or .Values.usage.store .Values.usage.retention .Values.usage.exportTokenSecret }}

[usage]
# the ledger: {{ include "mirrorgate.usageStore" . }}
{{- include "mirrorgate.tomlKeys" (dict "v" .Values.usage "at" "usage" "keys" (list "store" "retention") "chartKeys" (list "exportTokenSecret" "exportTokenSecretKey")) }}
{{- if .Values.usage.exportTokenSecret }}
export_token_env = "MIRRORGATE_USAGE_EXPORT_TOKEN"
{{- end }}
{{- end }}
{{- if .Values.cache.enabled }}

[cache]
dir = {{ include "mirrorgate.cacheDir" . | toJson }}
{{- include "mirrorgate.tomlKeys" (dict "v" (omit .Values.cache "enabled" "volume") "at" "cache" "keys" (list "max_size" "min_free" "tag_ttl" "stale_if_error")) }}
{{- end }}
{{- range $i, $t := .Values.tenants }}

[[tenant]]
{{- include "mirrorgate.tomlKeys" (dict "v" $t "at" (printf "tenants[%d]" $i) "keys" (list "name" "users" "cidrs" "requests_per_second" "burst" "bytes_per_second" "concurrent_requests" "tenant_requests_per_second" "tenant_bytes_per_second" "tenant_concurrent_requests" "bytes_per_day" "allow" "deny" "ldap_groups")) }}
{{- end }}

[limits]
{{- include "mirrorgate.tomlKeys" (dict "v" (omit .Values.limits "redis") "at" "limits" "keys" (list "requests_per_second" "burst" "bytes_per_second" "concurrent_requests" "redis_fail_open")) }}
{{- if $redisUrl }}
redis = {{ $redisUrl | toJson }}
{{- end }}
{{- range $i, $r := .Values.routes }}
{{- $at := printf "routes[%d]" $i }}
{{- $endpoints := list }}
{{- range $c := $.Values.backendCaches }}
{{- if eq $c.route $r.host }}
{{- $endpoints = append $endpoints (printf "http://%s:%d" (include "mirrorgate.cacheName" (dict "root" $ "cache" $c)) (int $.Values.backendCache.port)) }}
{{- end }}
{{- end }}
{{- $endpoints = concat $endpoints ($r.endpoints | default list) }}
{{- $plain := omit $r "endpoints" "rewrite" "upstreamCredentials" "upstreamCredentialPool" "upstreamCA" "upstream_username_env" "upstream_password_env" }}

[[route]]
{{- include "mirrorgate.tomlKeys" (dict "v" $plain "at" $at "keys" (list "host" "upstream" "anonymous" "docker_hub_library" "blob_redirects" "danger_allow_private_redirects" "path_prefix" "upstreams" "ns" "deny" "upstream_proxy" "cache" "tag_ttl")) }}
{{- if $endpoints }}
endpoints = {{ include "mirrorgate.tomlValue" $endpoints }}
{{- end }}
{{- with $r.rewrite }}
{{- if kindIs "map" . }}
rewrite = {{ include "mirrorgate.tomlValue" . }}
{{- else }}
rewrite = { {{- range $j, $rw := . }}{{ if $j }},{{ end }} {{ toJson (required (printf "%s.rewrite[%d].from is required" $at $j) $rw.from) }} = {{ toJson (required (printf "%s.rewrite[%d].to is required" $at $j) $rw.to) }}{{ end }} }
{{- end }}
{{- end }}
{{- with $r.upstreamCredentials }}
{{- $env := include "mirrorgate.envName" $r.host }}
upstream_username_env = {{ printf "MIRRORGATE_UPSTREAM_%s_USERNAME" $env | toJson }}
upstream_password_env = {{ printf "MIRRORGATE_UPSTREAM_%s_PASSWORD" $env | toJson }}
{{- else }}
{{- with $r.upstream_username_env }}
upstream_username_env = {{ toJson . }}
{{- end }}
{{- with $r.upstream_password_env }}
upstream_password_env = {{ toJson . }}
{{- end }}
{{- end }}
{{- if $r.upstreamCA }}
upstream_ca = {{ printf "upstream-ca-%s.pem" (include "mirrorgate.keyName" $r.host) | toJson }}
{{- end }}
{{- range $j, $m := $r.upstreamCredentialPool }}
{{- $name := required (printf "%s.upstreamCredentialPool[%d].name is required" $at $j) $m.name }}

[[route.upstream_credentials]]
name = {{ $name | toJson }}
{{- if or $m.username $m.existingSecret }}
{{- $env := printf "%s_POOL_%s" (include "mirrorgate.envName" $r.host) (include "mirrorgate.envName" $name) }}
username_env = {{ printf "MIRRORGATE_UPSTREAM_%s_USERNAME" $env | toJson }}
password_env = {{ printf "MIRRORGATE_UPSTREAM_%s_PASSWORD" $env | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
