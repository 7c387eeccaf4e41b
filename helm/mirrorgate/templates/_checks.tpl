{{/*
Combinations the chart refuses, each with the reason and the way out. Included once, by the ConfigMap.
*/}}
{{- define "mirrorgate.checks" -}}
{{- $multi := include "mirrorgate.multiReplica" . -}}

{{- $sources := list -}}
{{- if .Values.certManager.enabled }}{{ $sources = append $sources "certManager.enabled" }}{{ end -}}
{{- if .Values.tls.existingSecret }}{{ $sources = append $sources "tls.existingSecret" }}{{ end -}}
{{- if .Values.tls.acme.enabled }}{{ $sources = append $sources "tls.acme.enabled" }}{{ end -}}
{{- if gt (len $sources) 1 -}}
{{- fail (printf "certificates: choose one of certManager.enabled, tls.existingSecret and tls.acme.enabled (got %s)" (join ", " $sources)) -}}
{{- end -}}

{{- if and .Values.tls.acme.enabled $multi -}}
{{- fail "tls.acme.enabled needs exactly one replica (replicaCount: 1, autoscaling.enabled: false): every replica would run its own ACME account and orders, answer only the challenges it started, and keep certificates in its own storage. For several replicas use certManager.enabled (recommended) or tls.existingSecret." -}}
{{- end -}}
{{- if and .Values.tls.acme.enabled (eq .Values.tls.acme.challenge "http-01") (not .Values.ports.http) -}}
{{- fail "tls.acme.challenge http-01 needs the plain-HTTP listener: set ports.http (and service.ports.http)" -}}
{{- end -}}
{{- if and .Values.tls.persistence.enabled $multi -}}
{{- fail "tls.persistence.enabled needs exactly one replica: the state volume is ReadWriteOnce and holds one replica's ACME/self-signed material" -}}
{{- end -}}
{{- if and .Values.certManager.enabled (not .Values.certManager.issuerRef.name) -}}
{{- fail "certManager.enabled needs certManager.issuerRef.name (an Issuer or ClusterIssuer that can issue for every route host)" -}}
{{- end -}}

{{- if and .Values.auth.token.enabled $multi (not (include "mirrorgate.tokenSecretName" .)) -}}
{{- fail "auth.token with several replicas needs auth.token.privateKey or auth.token.existingSecret: a generated key would differ per replica, so a token from one replica would be refused by the others" -}}
{{- end -}}
{{- if and .Values.auth.token.privateKey .Values.auth.token.existingSecret -}}
{{- fail "auth.token: give privateKey or existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.auth.htpasswd .Values.auth.existingSecret -}}
{{- fail "auth: give htpasswd or existingSecret, not both" -}}
{{- end -}}

{{- with .Values.auth.ldap -}}
{{- if .enabled -}}
{{- if not (and .url .bind_dn .user_base) -}}
{{- fail "auth.ldap.enabled needs url, bind_dn and user_base" -}}
{{- end -}}
{{- if not (or .bindPassword .existingSecret) -}}
{{- fail "auth.ldap needs bindPassword or existingSecret: the service bind needs a password (an empty simple bind is anonymous)" -}}
{{- end -}}
{{- if and .bindPassword .existingSecret -}}
{{- fail "auth.ldap: give bindPassword or existingSecret, not both" -}}
{{- end -}}
{{- $cas := list -}}
{{- if .caCert }}{{ $cas = append $cas "caCert" }}{{ end -}}
{{- if .caConfigMap }}{{ $cas = append $cas "caConfigMap" }}{{ end -}}
{{- if .caSecret }}{{ $cas = append $cas "caSecret" }}{{ end -}}
{{- if gt (len $cas) 1 -}}
{{- fail (printf "auth.ldap: give one of caCert, caConfigMap and caSecret (got %s)" (join ", " $cas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $i, $t := .Values.tenants -}}
{{- if and $t.ldap_groups (not $.Values.auth.ldap.enabled) -}}
{{- fail (printf "tenants[%d].ldap_groups needs auth.ldap.enabled: without a directory no user has groups" $i) -}}
{{- end -}}
{{- end -}}

{{- with .Values.audit -}}
{{- if .enabled -}}
{{- if not .file -}}
{{- fail "audit.file: \"-\" for standard output, or a file name on the audit volume" -}}
{{- end -}}
{{- if and (ne .file "-") (contains "/" .file) -}}
{{- fail (printf "audit.file %q: a file name, not a path (it is written on the audit volume at /var/log/mirrorgate)" .file) -}}
{{- end -}}
{{- if and (eq .file "-") (or (not (empty .max_size)) (not (empty .keep))) -}}
{{- fail "audit.max_size and audit.keep rotate a file: standard output (audit.file \"-\") is not rotated; leave them empty or name a file" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- if and .Values.redis.enabled .Values.limits.redis -}}
{{- fail "limits.redis names an external redis while redis.enabled bundles one: choose one" -}}
{{- end -}}

{{- if and .Values.podDisruptionBudget.enabled (not (empty .Values.podDisruptionBudget.maxUnavailable)) (not (empty .Values.podDisruptionBudget.minAvailable)) -}}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable, not both" -}}
{{- end -}}

{{- if not .Values.routes -}}
{{- fail "routes: at least one route is needed, or the gateway serves nothing" -}}
{{- end -}}
{{- $hosts := list -}}
{{- range $i, $r := .Values.routes -}}
{{- if not $r.host -}}
{{- fail (printf "routes[%d]: host is required" $i) -}}
{{- end -}}
{{- $hosts = append $hosts $r.host -}}
{{- with $r.upstreamCredentials -}}
{{- if not (or .existingSecret (and .username .password)) -}}
{{- fail (printf "routes[%d].upstreamCredentials: give username and password, or existingSecret" $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- $names := list -}}
{{- range $i, $c := .Values.backendCaches -}}
{{- if not (and $c.name $c.route $c.remoteurl) -}}
{{- fail (printf "backendCaches[%d]: name, route and remoteurl are required" $i) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $c.name) -}}
{{- fail (printf "backendCaches[%d].name %q: lower-case letters, digits and '-' (it names Kubernetes objects)" $i $c.name) -}}
{{- end -}}
{{- if has $c.name $names -}}
{{- fail (printf "backendCaches[%d].name %q is used twice" $i $c.name) -}}
{{- end -}}
{{- $names = append $names $c.name -}}
{{- if not (has $c.route $hosts) -}}
{{- fail (printf "backendCaches[%d].route %q is not the host of any route (%s)" $i $c.route (join ", " $hosts)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
