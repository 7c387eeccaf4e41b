#!/usr/bin/env python3
"""Reads `helm template` output for tests/helm/run.

  inspect.py split RENDERED OUTDIR       core objects → OUTDIR/core.yaml, CRD-based ones → OUTDIR/crds.yaml
  inspect.py tree RENDERED DIR CERT KEY  rebuild the pod's /etc/mirrorgate from the Deployment's projected volume
  inspect.py assert RENDERED CASE ROOT   structural rules of the chart; prints `PASS name` / `FAIL name: why`

`tree` writes every file the projected volume would hold: ConfigMap keys and chart-rendered Secrets with their
real content, Secrets the chart only references (cert-manager's, existingSecret) as stand-ins (CERT/KEY for
tls.*). It also writes DIR.env with a placeholder for every env var the gateway reads from a Secret. So
`mirrorgate check` on DIR/mirrorgate.toml passes only if the TOML's relative paths and env names match what
the Deployment really provides.
"""

import base64
import os
import subprocess
import sys

import yaml

# API groups whose schemas kubernetes-validate does not ship (CRDs): checked here by rule, not by schema.
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    out = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return out


def one(docs, kind, name=None):
    found = find(docs, kind, name)
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def gateway(docs):
    return [d for d in find(docs, "Deployment")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"][0]


def split(rendered, outdir):
    docs = load(rendered)
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    crds = [d for d in docs if d["apiVersion"].startswith(CRD_GROUPS)]
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "core.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    with open(os.path.join(outdir, "crds.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump_all(crds, f, sort_keys=False)
    print(" ".join(f"{d['kind']}/{d['metadata']['name']}" for d in crds))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)


def tree(rendered, root, cert, key):
    docs = load(rendered)
    dep = gateway(docs)
    spec = dep["spec"]["template"]["spec"]
    container = spec["containers"][0]
    mount = [m for m in container["volumeMounts"] if m["name"] == "config"][0]["mountPath"]
    args = container["args"]
    config_path = args[args.index("-c") + 1]
    if os.path.dirname(config_path) != mount:
        raise SystemExit(f"the config {config_path} is not in the config mount {mount}")
    volume = [v for v in spec["volumes"] if v["name"] == "config"][0]
    stand_ins = {
        "tls.crt": open(cert, encoding="utf-8").read(),
        "tls.key": open(key, encoding="utf-8").read(),
        "htpasswd": "stand-in:$2y$10$/yd8nTDjJd2IVmVPpBtsyuTkSWgaj/oKuB5fTlZzrp/nxkLbGQbyq\n",
    }
    for src in volume["projected"]["sources"]:
        if "configMap" in src:
            rendered_cm = find(docs, "ConfigMap", src["configMap"]["name"])
            if not rendered_cm:
                # a ConfigMap the chart only references (e.g. auth.ldap.caConfigMap): a CA stand-in
                for it in src["configMap"]["items"]:
                    write(os.path.join(root, it["path"]), stand_ins["tls.crt"])
                continue
            cm = rendered_cm[0]
            items = src["configMap"].get("items") or [{"key": k, "path": k} for k in cm["data"]]
            for it in items:
                write(os.path.join(root, it["path"]), cm["data"][it["key"]])
        elif "secret" in src:
            name = src["secret"]["name"]
            rendered_secret = find(docs, "Secret", name)
            for it in src["secret"]["items"]:
                if rendered_secret:
                    data = base64.b64decode(rendered_secret[0]["data"][it["key"]])
                else:
                    base = os.path.basename(it["path"])
                    data = stand_ins.get(base, stand_ins.get(it["key"], "stand-in\n"))
                write(os.path.join(root, it["path"]), data)
    with open(root.rstrip("/") + ".env", "w", encoding="utf-8") as f:
        for e in container.get("env", []):
            if "valueFrom" in e:
                f.write(f"{e['name']}=stand-in-{e['name'].lower()}\n")
            else:
                f.write(f"{e['name']}={e['value']}\n")
    print(config_path)


class Checks:
    def __init__(self):
        self.failed = 0

    def rule(self, name, ok, why=""):
        if ok:
            print(f"PASS {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {why}")


def toml_of(docs, dep):
    name = [s["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
            for s in v["projected"]["sources"] if "configMap" in s][0]
    return one(docs, "ConfigMap", name)["data"]["mirrorgate.toml"]


def routes_of(toml_text):
    import tomllib
    return tomllib.loads(toml_text).get("route", [])


def assert_rules(rendered, case, root):
    docs = load(rendered)
    c = Checks()
    dep = gateway(docs)
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    ctr = spec["containers"][0]
    psc, sc = spec.get("securityContext", {}), ctr.get("securityContext", {})

    c.rule("pod runs as non-root with RuntimeDefault seccomp",
           psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
           str(psc))
    c.rule("container drops ALL caps, no privilege escalation, read-only root",
           sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("allowPrivilegeEscalation") is False
           and sc.get("readOnlyRootFilesystem") is True, str(sc))
    c.rule("readiness is /readyz and liveness /healthz on the admin port",
           ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
           and ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"},
           f"{ctr.get('readinessProbe')} {ctr.get('livenessProbe')}")
    strategy = dep["spec"]["strategy"]
    c.rule("rolling update never lowers capacity",
           strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
           or strategy["type"] == "Recreate" and case == "acme", str(strategy))
    annotations = pod["metadata"].get("annotations", {})
    c.rule("no checksum annotation for the live-reloaded ConfigMap",
           not any(k.startswith("checksum/config") for k in annotations), str(annotations))
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    cfg_volume = [v for v in spec["volumes"] if v["name"] == "config"][0]
    c.rule("config volume is mounted without subPath (kubelet refreshes it in place)",
           "subPath" not in mounts["config"] and "projected" in cfg_volume, str(mounts["config"]))
    c.rule("state folder is writable", mounts["state"].get("readOnly") is not True, str(mounts["state"]))

    svc = [s for s in find(docs, "Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"][0]
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    c.rule("Service maps 443 → https and 80 → http",
           ports["https"]["port"] == 443 and ports["https"]["targetPort"] == "https"
           and ports.get("http", {}).get("port") == 80 and ports["http"]["targetPort"] == "http", str(ports))
    c.rule("the admin port is not on the public Service", "admin" not in ports, str(ports))

    routes = routes_of(toml_of(docs, dep))
    by_host = {r["host"]: r for r in routes}
    env_names = {e["name"] for e in ctr.get("env", [])}
    for r in routes:
        for k in ("upstream_username_env", "upstream_password_env"):
            if k in r:
                c.rule(f"route {r['host']}: {k} is set in the pod", r[k] in env_names, f"{r[k]} not in {env_names}")

    for sts in find(docs, "StatefulSet"):
        name = sts["metadata"]["name"]
        cache_svc = find(docs, "Service", name)
        cfg = yaml.safe_load(one(docs, "ConfigMap", name)["data"]["config.yml"])
        port = cache_svc[0]["spec"]["ports"][0]["port"] if cache_svc else None
        url = f"http://{name}:{port}"
        owners = [h for h, r in by_host.items() if r.get("endpoints", [None])[0] == url]
        c.rule(f"cache {name} is the first endpoint of a route", len(owners) == 1, f"{url} in no route's endpoints[0]")
        c.rule(f"cache {name} proxies with delete enabled",
               bool(cfg["proxy"]["remoteurl"]) and cfg["storage"]["delete"]["enabled"] is True, str(cfg))
        c.rule(f"cache {name} keeps its data on a PVC",
               sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data", "no data claim")

    toml_all = __import__("tomllib").loads(toml_of(docs, dep))
    cache_toml = toml_all.get("cache")
    volumes = {v["name"]: v for v in spec["volumes"]}
    c.rule("[cache] is on and its dir is the mount of a writable volume of its own",
           cache_toml is not None and "cache" in mounts and mounts["cache"]["mountPath"] == cache_toml["dir"]
           and mounts["cache"].get("readOnly") is not True and "cache" in volumes,
           f"{cache_toml} {mounts.get('cache')}")
    cache_volume = volumes.get("cache", {})
    if case == "full":
        claim = cache_volume.get("ephemeral", {}).get("volumeClaimTemplate", {}).get("spec", {})
        c.rule("cache.volume.persistentVolumeClaim gives each replica a PVC of its size and class",
               claim.get("resources", {}).get("requests", {}).get("storage") == "50Gi"
               and claim.get("storageClassName") == "fast-ssd" and claim.get("accessModes") == ["ReadWriteOnce"],
               str(cache_volume))
        c.rule("cache values and the routes' cache/tag_ttl reach the TOML",
               cache_toml and cache_toml.get("max_size") == "40GiB" and cache_toml.get("tag_ttl") == "5m"
               and by_host["hub-pool.example"].get("cache") is False and by_host["gcr.example"].get("tag_ttl") == "1m",
               f"{cache_toml} {by_host.get('hub-pool.example')}")
    else:
        c.rule("the cache volume is an emptyDir with a sizeLimit by default",
               cache_volume.get("emptyDir", {}).get("sizeLimit") == "10Gi", str(cache_volume))

    ldap_toml = toml_all.get("auth", {}).get("ldap")
    audit_toml = toml_all.get("audit")
    read_at_start = "checksum/read-at-start" in annotations
    if case == "full":
        ldap_secret = find(docs, "Secret", dep["metadata"]["name"] + "-ldap")
        ldap_src = [s["secret"] for s in cfg_volume["projected"]["sources"]
                    if "secret" in s and any(i["path"] == "ldap/bind-password" for i in s["secret"]["items"])]
        cm = one(docs, "ConfigMap", dep["metadata"]["name"])
        c.rule("[auth.ldap] reaches the TOML, its bind password read from the chart Secret mounted at "
               "ldap/bind-password, its inline CA from the ConfigMap",
               ldap_toml is not None and ldap_toml.get("url") == "ldap://ldap.corp.example"
               and ldap_toml.get("starttls") is True
               and ldap_toml.get("user_filter") == "(&(objectClass=person)(uid={user}))"
               and ldap_toml.get("bind_password_file") == "ldap/bind-password"
               and "bind_password" not in ldap_toml and "bind_password_env" not in ldap_toml
               and ldap_toml.get("ca") == "ldap-ca.pem" and "BEGIN CERTIFICATE" in cm["data"].get("ldap-ca.pem", "")
               and len(ldap_secret) == 1 and len(ldap_src) == 1 and ldap_src[0]["name"] == ldap_secret[0]["metadata"]["name"]
               and base64.b64decode(ldap_secret[0]["data"]["bind-password"]).decode() == 'bind secret with "quotes"',
               f"{ldap_toml} {ldap_src}")
        c.rule("no LDAP secret in the ConfigMap", "bind secret" not in toml_of(docs, dep), "bind password in the TOML")
        c.rule("tenant ldap_groups reach the TOML",
               toml_all["tenant"][0].get("ldap_groups") == ["cn=dev,ou=groups,dc=corp,dc=example"],
               str(toml_all["tenant"][0]))
        audit_mount = mounts.get("audit", {})
        c.rule("[audit] file mode writes on the audit claim, one folder per pod, with rotation keys",
               audit_toml == {"file": "/var/log/mirrorgate/audit.jsonl", "max_size": "50MiB", "keep": 5}
               and audit_mount.get("mountPath") == "/var/log/mirrorgate" and audit_mount.get("readOnly") is not True
               and audit_mount.get("subPathExpr") == "$(POD_NAME)"
               and {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in ctr.get("env", [])
               and volumes.get("audit", {}).get("persistentVolumeClaim", {}).get("claimName") == "mirrorgate-audit",
               f"{audit_toml} {audit_mount} {volumes.get('audit')}")
        c.rule("[usage] retention reaches the TOML; with redis the ledger is shared (no file)",
               {k: v for k, v in toml_all.get("usage", {}).items() if k != "export_token_env"} == {"retention": "90d"}
               and "redis" in toml_all["limits"]
               and "shared through redis" in toml_of(docs, dep), str(toml_all.get("usage")))
        c.rule("/usage's export token comes from the existing Secret through an env var, never from values",
               toml_all.get("usage", {}).get("export_token_env") == "MIRRORGATE_USAGE_EXPORT_TOKEN"
               and {"name": "MIRRORGATE_USAGE_EXPORT_TOKEN", "valueFrom": {"secretKeyRef": {
                   "name": "mirrorgate-usage-export", "key": "token"}}} in ctr.get("env", []),
               f"{toml_all.get('usage')} {ctr.get('env')}")
        c.rule("pods roll when read-at-start settings ([auth.ldap], [usage]) change", read_at_start, str(annotations))
    elif case == "acme":
        c.rule("[auth.ldap] from existing Secrets: bind password key and CA Secret mounted under ldap/",
               ldap_toml is not None and ldap_toml.get("ca") == "ldap/ca.pem"
               and ldap_toml.get("bind_password_file") == "ldap/bind-password"
               and any(s.get("secret", {}).get("name") == "corp-ldap"
                       and s["secret"]["items"] == [{"key": "password", "path": "ldap/bind-password"}]
                       for s in cfg_volume["projected"]["sources"])
               and any(s.get("secret", {}).get("name") == "corp-ca"
                       and s["secret"]["items"] == [{"key": "ca.crt", "path": "ldap/ca.pem"}]
                       for s in cfg_volume["projected"]["sources"])
               and not find(docs, "Secret", dep["metadata"]["name"] + "-ldap"),
               f"{ldap_toml} {cfg_volume['projected']['sources']}")
        c.rule("[audit] on by default goes to standard output, with no audit volume",
               audit_toml == {"file": "-"} and "audit" not in mounts and "audit" not in volumes, str(audit_toml))
        state_claim = volumes["state"].get("persistentVolumeClaim")
        c.rule("[usage] store without redis is on the persistent state volume",
               toml_all.get("usage", {}).get("store") == "ledger.db" and "redis" not in toml_all["limits"]
               and state_claim is not None and mounts["state"]["mountPath"] + "/certs" == toml_all["tls"]["storage"]
               and "/var/lib/mirrorgate/certs/ledger.db" in toml_of(docs, dep),
               f"{toml_all.get('usage')} {volumes['state']}")
    else:
        c.rule("no [auth.ldap], [audit] or [usage] by default, and no read-at-start checksum",
               ldap_toml is None and audit_toml is None and "usage" not in toml_all and not read_at_start
               and "audit" not in volumes, str(toml_all.keys()))
        c.rule("the state emptyDir holds a usage ledger (sizeLimit 256Mi)",
               volumes["state"].get("emptyDir", {}).get("sizeLimit") == "256Mi", str(volumes["state"]))

    hpa = find(docs, "HorizontalPodAutoscaler")
    if case == "full":
        c.rule("HPA targets the Deployment and replicas are left to it",
               len(hpa) == 1 and hpa[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
               and "replicas" not in dep["spec"], str(dep["spec"].get("replicas")))
        cert = one(docs, "Certificate")
        tls_src = [s["secret"] for s in cfg_volume["projected"]["sources"]
                   if "secret" in s and any(i["path"].startswith("tls/") for i in s["secret"]["items"])]
        wanted = {r["host"] for r in routes}
        c.rule("Certificate covers every route host", wanted <= set(cert["spec"]["dnsNames"]),
               f"{wanted - set(cert['spec']['dnsNames'])}")
        c.rule("the Certificate's Secret is what the pods mount at tls/",
               len(tls_src) == 1 and tls_src[0]["name"] == cert["spec"]["secretName"], str(tls_src))
        sm = one(docs, "ServiceMonitor")
        msvc = [s for s in find(docs, "Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == "metrics"]
        c.rule("ServiceMonitor selects the metrics Service and scrapes its admin port",
               len(msvc) == 1 and all(msvc[0]["metadata"]["labels"].get(k) == v
                                      for k, v in sm["spec"]["selector"]["matchLabels"].items())
               and sm["spec"]["endpoints"][0]["port"] == "admin", str(sm["spec"]))
        dash = [d for d in find(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
        with open(os.path.join(root, "config/grafana/mirrorgate.json"), encoding="utf-8") as f:
            source = f.read()
        c.rule("dashboard ConfigMap carries config/grafana/mirrorgate.json with the datasource filled in",
               len(dash) == 1 and dash[0]["data"]["mirrorgate.json"].strip()
               == source.replace("${DS_PROMETHEUS}", "prometheus-main").strip(), "content differs")
        redis = find(docs, "Service", dep["metadata"]["name"] + "-redis")
        limits_redis = __import__("tomllib").loads(toml_of(docs, dep))["limits"].get("redis", "")
        c.rule("limits.redis points at the bundled redis Service",
               len(redis) == 1 and limits_redis == f"redis://{redis[0]['metadata']['name']}:{redis[0]['spec']['ports'][0]['port']}",
               limits_redis)
        toml = __import__("tomllib").loads(toml_of(docs, dep))
        c.rule("every [server] and [[tenant]] key of the values reaches the TOML (metrics_user_labels, "
               "tenant_concurrent_requests included)",
               toml["server"].get("metrics_user_labels") is True
               and toml["server"].get("idle_timeout") == "90s"
               and toml["server"].get("max_connections") == 30000
               and toml["server"].get("max_connections_per_ip") == 512
               and toml["server"].get("allow_missing_sni") is False
               and toml["tenant"][0].get("tenant_concurrent_requests") == 256,
               f"server={toml['server']}, tenant[0]={toml['tenant'][0]}")
        c.rule("tenant and route deny lists reach the TOML",
               toml["tenant"][0].get("deny") == ["docker.example/*:latest"]
               and toml["route"][0].get("deny") == ["docker.example/evil/*"],
               f"tenant[0]={toml['tenant'][0]}, route[0]={toml['route'][0]}")
        c.rule("outbound proxy keys reach the TOML",
               toml["server"].get("upstream_proxy") == "http://proxy.corp.example:3128"
               and toml["server"].get("upstream_proxy_password_env") == "PROXY_PASS"
               and toml["server"].get("no_proxy") == ["*.corp.example", "10.0.0.0/8"]
               and toml["route"][0].get("upstream_proxy") == "none",
               f"server={toml['server']}, route[0]={toml['route'][0]}")
        c.rule("PDB guards the gateway pods",
               one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items()
               <= pod["metadata"]["labels"].items(), "selector mismatch")
        pool = [r for r in toml["route"] if r["host"] == "hub-pool.example"][0].get("upstream_credentials", [])
        c.rule("routes[].upstreamCredentialPool reaches the TOML as [[route.upstream_credentials]], members "
               "with secrets read from env vars the pod sets, anonymous without",
               [m["name"] for m in pool] == ["hub-1", "hub-2", "anonymous"]
               and all(m[k] in env_names for m in pool[:2] for k in ("username_env", "password_env"))
               and "username_env" not in pool[2], str(pool))
        c.rule("pods roll when chart-managed upstream credentials change",
               "checksum/upstream-credentials" in annotations, str(annotations))
        token = find(docs, "Secret", dep["metadata"]["name"] + "-token-key")
        if token:
            key = base64.b64decode(token[0]["data"]["token-key.pem"])
            crt = base64.b64decode(token[0]["data"]["token-key.crt"])
            pub_k = subprocess.run(["openssl", "pkey", "-pubout"], input=key, capture_output=True).stdout
            pub_c = subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=crt, capture_output=True).stdout
            days = subprocess.run(["openssl", "x509", "-noout", "-checkend", str(60 * 86400)], input=crt,
                                  capture_output=True).returncode
            c.rule("token Secret's certificate is for its key and valid past the gateway's renewal window",
                   pub_k and pub_k == pub_c and days == 0, "public keys differ or certificate expires soon")
        else:
            c.rule("token Secret is rendered", False, "missing")
    else:
        c.rule("no HPA unless enabled", not hpa, str(hpa))
    print(f"{c.failed} rule(s) failed")
    return 1 if c.failed else 0


def main():
    cmd = sys.argv[1]
    if cmd == "split":
        split(sys.argv[2], sys.argv[3])
    elif cmd == "tree":
        tree(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif cmd == "assert":
        sys.exit(assert_rules(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
