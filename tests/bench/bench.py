#!/usr/bin/env python3
"""Side-by-side benchmark of mirrorgate against nginx, caddy and haproxy doing the same job.

Every peer terminates TLS with the same ECDSA P-256 certificate, checks HTTP Basic credentials against the same
bcrypt (cost 10) htpasswd file and proxies to the same local `docker-registry`. The peers run one at a time
(except for the skopeo comparison, where hyperfine needs them side by side) and every measurement is repeated
over several rounds, interleaving the peers, so slow drifts of a shared machine spread over all of them.
Two references sit beside the peers: the registry over plain HTTP ("direct") and a second registry process on
the same storage serving TLS with the same certificate ("direct TLS"). Besides rates and latencies the server's
CPU time is read from /proc per answered request and per GiB streamed.

Section 6 measures the built-in cache (issue 17): a second mirrorgate with `[cache]` ("mirrorgate cache") and
Debian's docker-registry in proxy mode ("registry:2 proxy", pull-through with its own TLS, no Basic auth) pull from
a third registry process on the same storage whose access log counts the upstream GETs they let through. Per
round and caching peer: first and second pull of a fresh image, 1 and 8 parallel pulls of the warmed big blob and
manifest-by-digest GETs served from the cache, then 50 clients at once on one uncached blob; the store's disk use
is read once every round is done.

Started by `tests/bench/run`, which installs the tools, builds mirrorgate and enters a mount namespace where
docker.test resolves to 127.0.0.1. Subcommands `hold` and `handshakes` are the two small TLS clients the
standard load generators cannot replace (thousands of idle connections; full handshakes without resumption).

Standard library only, so it runs on a bare Debian python3.
"""

import argparse
import base64
import bisect
import datetime
import gzip
import hashlib
import http.client
import json
import multiprocessing
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import threading
import time

HOST = "docker.test"
USER = "bench"
PASSWORD = "bench-password"
REPO = "library/big"
TAG = "latest"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"

# Fixed high loopback ports, far from the ranges the end-to-end tests pick from.
REGISTRY_PORT = 18400
# A second docker-registry process serving the same storage read-only over TLS with the peers' certificate
# ("direct TLS"): the same pull as through a peer, with the registry doing the encryption.
REGISTRY_TLS_PORT = 18401
PEER_PORTS = {"mirrorgate": 18443, "nginx": 18444, "caddy": 18445, "haproxy": 18446}
PEERS = list(PEER_PORTS)
# The caching column (section 6): a second mirrorgate with `[cache]` and Debian's docker-registry in proxy mode
# (registry:2 pull-through), both in front of a third docker-registry process on the same storage whose access log
# is on, so the upstream GETs a cache lets through can be counted; the other peers' upstream keeps its log off.
MG_CACHE = "mirrorgate cache"
R2_PROXY = "registry:2 proxy"
CACHE_PORTS = {MG_CACHE: 18447, R2_PROXY: 18448}
REGISTRY_LOGGED_PORT = 18402
COLD_CLIENTS = 50

MiB = 1024 * 1024
GiB = 1024 * MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")
DIRECT = "direct"  # plain-HTTP pull from the registry: its sendfile path, no decryption in the client
DIRECT_TLS = "direct TLS"  # the registry itself over TLS, anonymous
# haproxy reserves two descriptors per connection (client + server side) and refuses to start when maxconn
# needs more than the hard open-files limit (20000 here), so it cannot be offered 10,000 idle connections.
HAPROXY_MAXCONN = 9900
HAPROXY_IDLE = 9500


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: certificate, htpasswd, test image in the upstream registry


def make_certs(work):
    """A private CA and one ECDSA P-256 leaf for docker.test, the same files for every peer."""
    d = os.path.join(work, "tls")
    os.makedirs(d, exist_ok=True)
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    key, csr, leaf = os.path.join(d, "site.key"), os.path.join(d, "site.csr"), os.path.join(d, "site.pem")
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key])
    run(["openssl", "req", "-x509", "-new", "-key", ca_key, "-sha256", "-days", "30", "-subj", "/CN=bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-out", ca])
    # PKCS#8 key: every peer (rustls, nginx, caddy, haproxy) reads it.
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
    run(["openssl", "req", "-new", "-key", key, "-subj", f"/CN={HOST}", "-out", csr])
    ext = os.path.join(d, "leaf.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{HOST}\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "30",
         "-sha256", "-extfile", ext, "-out", leaf])
    combined = os.path.join(d, "site-combined.pem")  # haproxy wants cert and key in one file
    with open(combined, "w") as out:
        out.write(open(leaf).read() + open(key).read())
    certdir = os.path.join(d, "certs.d")  # skopeo --src-cert-dir
    os.makedirs(certdir, exist_ok=True)
    shutil.copy(ca, os.path.join(certdir, "ca.crt"))
    return {"ca": ca, "cert": leaf, "key": key, "combined": combined, "certdir": certdir}


def make_htpasswd(work):
    path = os.path.join(work, "htpasswd")
    run(["htpasswd", "-B", "-C", "10", "-b", "-c", path, USER, PASSWORD])
    line = open(path).read().strip()
    return path, line.split(":", 1)[1]


class HashWriter:
    """A write-only file that hashes (and optionally forwards) what passes through it."""

    def __init__(self, inner=None):
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        if self.inner is not None:
            self.inner.write(b)
        return len(b)

    def flush(self):
        if self.inner is not None:
            self.inner.flush()


class RandomReader:
    def __init__(self, n):
        self.left = n

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def make_layer(path, size):
    """A gzip (level 0, so no CPU spent compressing random data) tar holding `size` random bytes.

    Already compressed, so skopeo copies it as it is; the registry stores it under its own digest.
    """
    with open(path, "wb") as raw:
        outer = HashWriter(raw)
        gz = gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=0, mtime=0)
        inner = HashWriter(gz)
        with tarfile.open(fileobj=inner, mode="w|") as tar:
            info = tarfile.TarInfo("blob.bin")
            info.size, info.mode, info.mtime = size, 0o644, 0
            tar.addfile(info, RandomReader(size))
        gz.close()
    return "sha256:" + outer.sha.hexdigest(), os.path.getsize(path), "sha256:" + inner.sha.hexdigest()


def registry_request(method, path, body=None, headers=None, port=REGISTRY_PORT):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def push_blob(digest, body, size, repo=REPO):
    resp, _ = registry_request("POST", f"/v2/{repo}/blobs/uploads/")
    if resp.status != 202:
        raise RuntimeError(f"upload start: {resp.status}")
    loc = resp.getheader("Location")
    loc = re.sub(r"^https?://[^/]+", "", loc)
    sep = "&" if "?" in loc else "?"
    resp, data = registry_request("PUT", f"{loc}{sep}digest={digest}", body=body,
                                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
    if resp.status != 201:
        raise RuntimeError(f"blob PUT {digest}: {resp.status} {data[:200]!r}")


def make_image(work, blob_bytes, repo=REPO):
    """Pushes `repo`:latest (one layer of about `blob_bytes`) to the upstream; returns its facts."""
    layer = os.path.join(work, "layer.tar.gz")
    log(f"making a {blob_bytes / MiB:.0f} MiB layer")
    digest, size, diff_id = make_layer(layer, blob_bytes - 2048)
    with open(layer, "rb") as f:
        push_blob(digest, f, size, repo)
    os.remove(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    push_blob(cdigest, config, len(config), repo)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}],
    }).encode()
    resp, data = registry_request("PUT", f"/v2/{repo}/manifests/{TAG}", body=manifest,
                                  headers={"Content-Type": MANIFEST_TYPE})
    if resp.status != 201:
        raise RuntimeError(f"manifest PUT: {resp.status} {data[:200]!r}")
    log(f"pushed {repo}:{TAG}, layer {digest} ({size} bytes)")
    return {"blob": digest, "blob_size": size, "manifest_size": len(manifest),
            "manifest_digest": "sha256:" + hashlib.sha256(manifest).hexdigest()}


def push_random_blob(work, size, repo):
    """One blob of `size` random bytes in `repo` (no manifest): the uncached blob of the cold many-client pull."""
    path = os.path.join(work, "cold.bin")
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            sha.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    digest = "sha256:" + sha.hexdigest()
    with open(path, "rb") as f:
        push_blob(digest, f, size, repo)
    os.remove(path)
    return digest


# ---------------------------------------------------------------------------------------------------------------
# Processes


class Proc:
    def __init__(self, name, cmd, work, env=None):
        self.name = name
        self.logpath = os.path.join(work, f"{name}.log")
        self.logf = open(self.logpath, "ab")
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=work, start_new_session=True)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()

    def tail(self, n=30):
        try:
            return "".join(open(self.logpath, errors="replace").readlines()[-n:])
        except OSError:
            return ""


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name, so index 0 is field 3 (state); None when the
    process is gone. The name is skipped up to the last ")" because it may itself hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def process_tree(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(entry)
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pid):
    """VmRSS summed over the process and its descendants (nginx: master + workers)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_evt = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop_evt.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            self.stop_evt.wait(0.1)

    def finish(self):
        self.stop_evt.set()
        self.join()
        return self.peak


def cpu_seconds(pids):
    """utime + stime (/proc/<pid>/stat fields 14 and 15, all threads) summed over `pids`, in seconds."""
    ticks = 0
    for p in pids:
        fields = proc_stat(p)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


class CpuSampler(threading.Thread):
    """CPU time of a process tree sampled every 20 ms against the wall clock (which h2load's log uses), so the
    CPU spent inside a measurement window can be read off by interpolation."""

    def __init__(self, pid, period=0.02):
        super().__init__(daemon=True)
        self.pids = process_tree(pid)
        self.period, self.samples, self.stop_evt = period, [], threading.Event()

    def sample(self):
        self.samples.append((time.time(), cpu_seconds(self.pids)))

    def start(self):
        self.sample()
        super().start()

    def run(self):
        while not self.stop_evt.wait(self.period):
            self.sample()

    def finish(self):
        self.stop_evt.set()
        self.join()
        self.sample()

    def total(self):
        return self.samples[-1][1] - self.samples[0][1]

    def at(self, t):
        s = self.samples
        if t <= s[0][0]:
            return s[0][1]
        if t >= s[-1][0]:
            return s[-1][1]
        i = bisect.bisect_left([x[0] for x in s], t)
        (t0, c0), (t1, c1) = s[i - 1], s[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1


def settle(pid, max_seconds=5.0):
    """Waits until the process tree of `pid` is (nearly) idle, so work left over from the previous measurement
    (closing hundreds of connections, a garbage collection) is not charged to the next one."""
    pids = process_tree(pid)
    deadline = time.monotonic() + max_seconds
    last = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pids)
        if now - last <= 0.02:  # at most 8% of one core
            return
        last = now


def start_registry(work, tls=None, logged=False):
    """The upstream registry, plain HTTP on REGISTRY_PORT. With `tls`: the "direct TLS" reference, a second
    process on REGISTRY_TLS_PORT serving the same storage (read-only mode, only pulls go to it) over TLS with the
    peers' certificate; Go's net/http offers h2 and http/1.1 by ALPN. With `logged`: a third read-only process on
    REGISTRY_LOGGED_PORT, plain HTTP with its access log on (one line per request in its log file), the upstream
    of the two caches."""
    storage = os.path.join(work, "registry", "storage")
    os.makedirs(storage, exist_ok=True)
    name = "registry-tls" if tls else "registry-logged" if logged else "registry"
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    port = REGISTRY_TLS_PORT if tls else REGISTRY_LOGGED_PORT if logged else REGISTRY_PORT
    cfg = os.path.join(d, "config.yml")
    maintenance = ""
    tls_block = ""
    if tls or logged:
        maintenance = """  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: true
"""
    if tls:
        tls_block = f"""  tls:
    certificate: {json.dumps(tls["cert"])}
    key: {json.dumps(tls["key"])}
"""
    with open(cfg, "w") as f:
        f.write(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: {"false" if logged else "true"}
storage:
  filesystem:
    rootdirectory: {json.dumps(storage)}
  cache:
    blobdescriptor: inmemory
{maintenance}http:
  addr: 127.0.0.1:{port}
  secret: bench-secret
{tls_block}""")
    proc = Proc(name, ["docker-registry", "serve", cfg], work)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if tls:
                status, _ = https_get(port, "/v2/", auth=False, ca=tls["ca"])
            else:
                status = registry_request("GET", "/v2/", port=port)[0].status
            if status == 200:
                return proc
        except (OSError, http.client.HTTPException):
            pass
        if not proc.alive():
            break
        time.sleep(0.2)
    tail = proc.tail()
    proc.stop()
    raise RuntimeError(f"docker-registry ({name}) did not start:\n" + tail)


def write_mirrorgate_config(d, port, up, tls, htpasswd, extra=""):
    """mirrorgate's benchmark config in folder `d` (listening on `port`, proxying to `up`), with `extra` TOML
    tables (the `[cache]` of section 6) before its route; returns the file's path."""
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "mirrorgate.toml")
    with open(cfg, "w") as f:
        f.write(f"""[server]
https = "127.0.0.1:{port}"
client_header_timeout = "300s"
upstream_timeout = "600s"
# Every load generator connects from 127.0.0.1: the per-address cap (default 256) would stop the idle run.
max_connections_per_ip = 100000

[tls]
storage = "state"
cert = {json.dumps(tls['cert'])}
key = {json.dumps(tls['key'])}

[auth]
htpasswd = {json.dumps(htpasswd)}

[[tenant]]
name = "bench"
users = ["{USER}"]
requests_per_second = 1000000
burst = 1000000
bytes_per_second = "1000GiB"
concurrent_requests = 100000
tenant_requests_per_second = 1000000
tenant_bytes_per_second = "1000GiB"
tenant_concurrent_requests = 100000
allow = ["*/*"]
{extra}
[limits]
requests_per_second = 1000000
burst = 1000000
bytes_per_second = "1000GiB"
concurrent_requests = 100000

[[route]]
host = "{HOST}"
upstream = "http://{up}"
""")
    return cfg


def write_peer_configs(work, tls, htpasswd, bcrypt_hash, conns):
    """One config per peer doing the same job; returns {name: argv}."""
    up = f"127.0.0.1:{REGISTRY_PORT}"
    cmds = {}

    cfg = write_mirrorgate_config(os.path.join(work, "mirrorgate"), PEER_PORTS["mirrorgate"], up, tls, htpasswd)
    cmds["mirrorgate"] = [os.environ.get("MIRRORGATE_BIN", "target/release/mirrorgate"), "run", "-c", cfg]

    d = os.path.join(work, "nginx")
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "nginx.conf")
    os.makedirs(os.path.join(d, "static"), exist_ok=True)
    with open(os.path.join(d, "static", "v2.json"), "w") as f:
        f.write("{}")
    with open(cfg, "w") as f:
        f.write(f"""user root root;
worker_processes auto;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {conns}; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream registry {{ server {up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{PEER_PORTS['nginx']} ssl http2;
    server_name {HOST};
    ssl_certificate {tls['cert']};
    ssl_certificate_key {tls['key']};
    ssl_protocols TLSv1.2 TLSv1.3;
    client_header_timeout 300s;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_max_body_size 0;
    auth_basic "registry";
    auth_basic_user_file {htpasswd};
    # A static file, not `return`: `return` runs in the rewrite phase, before auth_basic would be asked.
    location = /v2/ {{
      root {d}/static;
      try_files /v2.json =404;
      default_type application/json;
      add_header Docker-Distribution-Api-Version registry/2.0 always;
    }}
    location /v2/ {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Proto https;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
""")
    cmds["nginx"] = ["nginx", "-e", os.path.join(d, "error.log"), "-p", d, "-c", cfg, "-g", "daemon off;"]

    d = os.path.join(work, "caddy")
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "Caddyfile")
    b64 = base64.b64encode(bcrypt_hash.encode()).decode()
    with open(cfg, "w") as f:
        f.write(f"""{{
  admin off
  auto_https off
  https_port {PEER_PORTS['caddy']}
  default_sni {HOST}
  servers {{
    protocols h1 h2
    timeouts {{
      read_header 300s
      idle 300s
    }}
  }}
}}
https://{HOST}:{PEER_PORTS['caddy']} {{
  bind 127.0.0.1
  tls {tls['cert']} {tls['key']}
  log {{
    output file {d}/access.log
  }}
  basicauth bcrypt registry {{
    {USER} {b64}
  }}
  handle /v2/ {{
    header Docker-Distribution-Api-Version registry/2.0
    header Content-Type application/json
    respond "{{}}" 200
  }}
  handle {{
    reverse_proxy {up} {{
      flush_interval -1
      header_up X-Forwarded-Proto https
    }}
  }}
}}
""")
    cmds["caddy"] = ["caddy", "run", "--adapter", "caddyfile", "--config", cfg]

    d = os.path.join(work, "haproxy")
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
  maxconn {HAPROXY_MAXCONN}
  log stdout format raw local0 info

userlist registry_users
  user {USER} password {bcrypt_hash}

defaults
  mode http
  log global
  option httplog
  maxconn {HAPROXY_MAXCONN}
  timeout connect 10s
  timeout client 300s
  timeout server 600s
  timeout http-request 300s
  timeout http-keep-alive 300s

frontend registry_tls
  bind 127.0.0.1:{PEER_PORTS['haproxy']} ssl crt {tls['combined']} alpn h2,http/1.1
  http-request auth realm registry unless {{ http_auth(registry_users) }}
  http-request return status 200 content-type application/json string "{{}}" hdr Docker-Distribution-Api-Version registry/2.0 if {{ path /v2/ }}
  http-request set-header X-Forwarded-Proto https
  default_backend registry

backend registry
  http-reuse safe
  server upstream {up}
""")
    cmds["haproxy"] = ["haproxy", "-db", "-f", cfg]
    return cmds


def write_cache_configs(work, tls, htpasswd, max_size):
    """The two caching peers of section 6, both in front of the logged upstream; returns {name: argv}.

    "mirrorgate cache": the benchmark's mirrorgate config plus `[cache]` bounded by `max_size` bytes (smaller
    than what a run pulls through it, so eviction takes part). "registry:2 proxy": docker-registry in proxy mode
    (`proxy.remoteurl`) with TLS by its own `http.tls` and the peers' certificate; it has no Basic auth here (a
    pull-through registry:2 only passes credentials upstream) and no size bound."""
    up = f"127.0.0.1:{REGISTRY_LOGGED_PORT}"
    cmds = {}
    cache = f"""
[cache]
dir = "cache"
max_size = {max_size}
tag_ttl = "10m"
"""
    cfg = write_mirrorgate_config(os.path.join(work, "mirrorgate-cache"), CACHE_PORTS[MG_CACHE], up, tls, htpasswd,
                                  extra=cache)
    cmds[MG_CACHE] = [os.environ.get("MIRRORGATE_BIN", "target/release/mirrorgate"), "run", "-c", cfg]

    d = os.path.join(work, "registry-proxy")
    os.makedirs(os.path.join(d, "storage"), exist_ok=True)
    cfg = os.path.join(d, "config.yml")
    with open(cfg, "w") as f:
        f.write(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {json.dumps(os.path.join(d, "storage"))}
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{CACHE_PORTS[R2_PROXY]}
  secret: bench-secret
  tls:
    certificate: {json.dumps(tls["cert"])}
    key: {json.dumps(tls["key"])}
proxy:
  remoteurl: http://{up}
""")
    cmds[R2_PROXY] = ["docker-registry", "serve", cfg]
    return cmds


def cache_store(work, name):
    """The folder a caching peer keeps its copies in (what `du` measures)."""
    if name == MG_CACHE:
        return os.path.join(work, "mirrorgate-cache", "cache")
    return os.path.join(work, "registry-proxy", "storage")


def disk_mib(path):
    """Bytes allocated under `path` (`du -s`: what the copies cost the filesystem), in MiB."""
    out = run(["du", "-s", "--block-size=1", path]).stdout.split()[0]
    return int(out) / MiB


def upstream_gets(logpath, path):
    """GETs of exactly `path` in the logged registry's access log (combined log format, `"GET <path> HTTP/…"`)."""
    needle = f'"GET {path} '
    try:
        with open(logpath, errors="replace") as f:
            return sum(1 for line in f if needle in line)
    except OSError:
        return 0


def upstream_gets_prefix(logpath, prefix):
    needle = f'"GET {prefix}'
    try:
        with open(logpath, errors="replace") as f:
            return sum(1 for line in f if needle in line)
    except OSError:
        return 0


def skopeo_pull(port, repo, work, tls, auth):
    """One `skopeo copy` of `repo`:latest through the peer on `port` into a fresh dir: folder; seconds."""
    dest = os.path.join(work, "skopeo-cache-dest")
    shutil.rmtree(dest, ignore_errors=True)
    authfile = os.path.join(work, "auth.json")
    with open(authfile, "w") as f:
        f.write("{}")
    cmd = ["skopeo", "--override-os", "linux", "--override-arch", "amd64", "copy", "-q", "--src-cert-dir",
           tls["certdir"]]
    if auth:
        cmd += ["--src-creds", f"{USER}:{PASSWORD}"]
    cmd += [f"docker://{HOST}:{port}/{repo}:{TAG}", f"dir:{dest}"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, text=True, capture_output=True, timeout=1800,
                   env=dict(os.environ, REGISTRY_AUTH_FILE=authfile))
    elapsed = time.monotonic() - t0
    shutil.rmtree(dest, ignore_errors=True)
    return elapsed


def cache_round(p, r, work, tls, image, cold_bytes, uplog, duration, warmup, put):
    """One round of section 6 for a caching peer (its store kept from earlier rounds):

    1. first and second `skopeo copy` of a fresh image (never pulled before by anyone), with the upstream GETs of
       its layer during the second copy;
    2. one `skopeo copy` of library/big warms the cache, then 1 and 8 parallel curl pulls of its blob and h2load
       manifest-by-digest GETs (h1, 16 connections), counting upstream GETs under /v2/library/big/ meanwhile;
    3. the cold pull: COLD_CLIENTS curl clients at once on one fresh blob, the upstream GETs of that blob, the
       wall time and the peer's peak RSS."""
    slug = "mg" if p.name == MG_CACHE else "r2"
    auth = p.name == MG_CACHE
    first_repo = f"library/first-{slug}-{r}"
    cold_repo = f"library/cold-{slug}-{r}"
    first = make_image(work, cold_bytes, first_repo)
    cold_blob = push_random_blob(work, cold_bytes, cold_repo)
    p.start(tls["ca"])
    try:
        t1 = skopeo_pull(p.port, first_repo, work, tls, auth)
        layer_path = f"/v2/{first_repo}/blobs/{first['blob']}"
        before = upstream_gets(uplog, layer_path)
        t2 = skopeo_pull(p.port, first_repo, work, tls, auth)
        time.sleep(0.5)
        second_gets = upstream_gets(uplog, layer_path) - before
        put("cache:first", p.name, t1)
        put("cache:second", p.name, t2)
        put("cache:second:upstream_gets", p.name, second_gets)
        log(f"  first pull {t1:.2f} s, second pull {t2:.2f} s ({second_gets} upstream GETs of its layer)")

        skopeo_pull(p.port, REPO, work, tls, auth)  # the warming pull
        digest_path = f"/v2/{REPO}/manifests/{image['manifest_digest']}"
        status, _ = https_get(p.port, digest_path, auth=auth, ca=tls["ca"])
        if status != 200:
            raise RuntimeError(f"{p.name}: manifest by digest answered {status}")
        time.sleep(0.5)
        before = upstream_gets_prefix(uplog, f"/v2/{REPO}/")
        blob_url = f"https://{HOST}:{p.port}/v2/{REPO}/blobs/{image['blob']}"
        for n in (1, 8):
            mibs, _, (cpu,) = curl_pulls(blob_url, n, tls["ca"], auth, cpu_pids=(p.proc.pid,))
            put(f"cache:stream:{n}", p.name, mibs)
            put(f"cache:stream:{n}:cpu", p.name, cpu)
            log(f"  hit, {n} pull(s): {mibs:,.0f} MiB/s, server CPU {cpu:.2f} s/GiB")
        m = h2load(p.port, digest_path, "h1", 16, duration, warmup, work, 1, auth=auth, cpu_pid=p.proc.pid)
        for f in ("rps", "p50", "p99", "cpu_us"):
            put(f"cache:manifest:{f}", p.name, m[f])
        time.sleep(0.5)
        hit_gets = upstream_gets_prefix(uplog, f"/v2/{REPO}/") - before
        put("cache:hit:upstream_gets", p.name, hit_gets)
        log(f"  manifest by digest h1 c=16: {m['rps']:,.0f} req/s, p99 {m['p99']:.2f} ms; "
            f"{hit_gets} upstream GETs under /v2/{REPO}/ during the hit runs")

        cold_path = f"/v2/{cold_repo}/blobs/{cold_blob}"
        try:
            mibs, peak, _ = curl_pulls(f"https://{HOST}:{p.port}{cold_path}", COLD_CLIENTS, tls["ca"], auth,
                                       sampler_pid=p.proc.pid)
        except (RuntimeError, ValueError) as e:
            # Recorded, not fatal: a peer that cannot serve the job is a result too.
            put("cache:cold:failed", p.name, 1)
            log(f"  cold {COLD_CLIENTS}-client pull failed: {e}")
            mibs = None
        time.sleep(0.5)
        gets = upstream_gets(uplog, cold_path)
        put("cache:cold:upstream_gets", p.name, gets)
        if mibs:
            wall = COLD_CLIENTS * cold_bytes / MiB / mibs
            put("cache:cold:wall", p.name, wall)
            put("cache:cold:rss", p.name, peak)
            log(f"  cold {COLD_CLIENTS}-client pull: {wall:.2f} s, {gets} upstream GETs, peak RSS {peak:.1f} MiB")
    finally:
        p.stop()


def https_get(port, path, auth=True, timeout=5, ca=None):
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=timeout)
    headers = {"Accept": MANIFEST_TYPE}
    if auth:
        headers["Authorization"] = basic_header()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def basic_header():
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class Peer:
    def __init__(self, name, cmd, work, env, port=None):
        self.name, self.cmd, self.work, self.env = name, cmd, work, env
        self.port = port or PEER_PORTS[name]
        self.proc = None

    def start(self, ca):
        self.proc = Proc(self.name, self.cmd, self.work, env=self.env)
        deadline = time.time() + 30
        last = None
        while time.time() < deadline:
            if not self.proc.alive():
                break
            try:
                status, _ = https_get(self.port, "/v2/", ca=ca)
                if status == 200:
                    status, _ = https_get(self.port, f"/v2/{REPO}/manifests/{TAG}", ca=ca)
                    if status == 200:
                        return
                last = status
            except (OSError, ssl.SSLError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.2)
        tail = self.proc.tail()
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready (last: {last}):\n{tail}")

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None
        time.sleep(0.3)


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def h2load(port, path, proto, conns, seconds, warmup, logdir, per_conn, auth=True, cpu_pid=None, upstream_pid=None):
    """GETs (authenticated unless `auth` is false) at a fixed connection count; returns req/s (2xx only), p50
    and p99 in ms, with `cpu_pid` the CPU µs that process tree spent per answer ("cpu_us"), and with
    `upstream_pid` the same for the registry behind the peer ("up_cpu_us").

    Timing mode first (warm-up, then `seconds` of measurement). A server that needs longer than the window to
    answer each connection once (bcrypt on every request at 256 connections) completes almost nothing inside
    it, so then the point is measured again in count mode: `per_conn` requests per connection, all timed.
    """
    try:
        m = _h2load_once(port, path, proto, conns, logdir, ["-D", str(seconds), "--warm-up-time", str(warmup)],
                         seconds, timeout=seconds + warmup + 15, auth=auth, cpu_pid=cpu_pid,
                         upstream_pid=upstream_pid)
    except subprocess.TimeoutExpired:
        # h2load waits for every request still queued when the window closes; with seconds-long queues it
        # may not come back at all.
        m = {"ok": 0}
    if m["ok"] < 4 * conns:
        m = _h2load_once(port, path, proto, conns, logdir, ["-n", str(per_conn * conns), "-N", "120"], None,
                         auth=auth, cpu_pid=cpu_pid, upstream_pid=upstream_pid)
        m["count_mode"] = True
    return m


def _h2load_once(port, path, proto, conns, logdir, mode, seconds, timeout=900, auth=True, cpu_pid=None,
                 upstream_pid=None):
    """One h2load run. CPU per answer: in timing mode the server's CPU between the start of the first logged
    request and the end of the last answer (h2load logs only the measurement window, not the warm-up), in count
    mode over the whole run (TLS handshakes included), divided by the 2xx answers in the log."""
    logf = os.path.join(logdir, f"h2load-{port}.tsv")
    cmd = ["h2load", "-c", str(conns), "-t", "1", "-m", "1", *mode]
    if auth:
        cmd += ["-H", f"authorization: {basic_header()}"]
    cmd += ["-H", f"accept: {MANIFEST_TYPE}", "--log-file", logf]
    if proto == "h1":
        cmd.append("--h1")
    cmd.append(f"https://{HOST}:{port}{path}")
    samplers = {f: CpuSampler(pid) for f, pid in (("cpu_us", cpu_pid), ("up_cpu_us", upstream_pid)) if pid}
    for sampler in samplers.values():
        sampler.start()
    try:
        out = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout).stdout
    finally:
        for sampler in samplers.values():
            sampler.finish()
    m = re.search(r"Application protocol: (\S+)", out)
    alpn = m.group(1) if m else "?"
    want = "h2" if proto == "h2" else "http/1.1"
    if alpn != want:
        raise RuntimeError(f"h2load negotiated {alpn}, wanted {want}:\n{out[-2000:]}")
    if seconds is None:
        m = re.search(r"finished in ([\d.]+)(m?s)", out)
        if not m:
            raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
        seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    lat, ok, bad = [], 0, 0
    first_start, last_end = None, None  # µs since the epoch
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            start, status, dur = int(parts[0]), int(parts[1]), int(parts[2])
            first_start = start if first_start is None else min(first_start, start)
            if 200 <= status < 300:
                ok += 1
                lat.append(dur / 1000)
                last_end = start + dur if last_end is None else max(last_end, start + dur)
            elif status > 0:  # <= 0: a request cut off when h2load stopped, not an answer
                bad += 1
    os.remove(logf)
    if bad:
        log(f"  warning: {bad} non-2xx answers on {path} ({proto}, {conns} conns)")
    if not lat:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "ok": 0, "cpu_us": float("nan"),
                "up_cpu_us": float("nan")}
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    m = {"rps": ok / seconds, "p50": pct(0.50), "p99": pct(0.99), "ok": ok, "cpu_us": float("nan"),
         "up_cpu_us": float("nan")}
    for f, sampler in samplers.items():
        if "-D" in mode:
            cpu = sampler.at(last_end / 1e6) - sampler.at(first_start / 1e6)
        else:
            cpu = sampler.total()
        m[f] = cpu / ok * 1e6
    return m


def curl_pulls(url, parallel, ca, auth, sampler_pid=None, cpu_pids=()):
    """`parallel` simultaneous full blob downloads over HTTP/1.1; aggregate MiB/s, peak RSS of `sampler_pid`
    (None if not asked for) and, for each of `cpu_pids`, the CPU seconds its process tree spent per GiB
    received (each tree first left to settle)."""
    cmd = ["curl", "-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code} %{size_download}\n"]
    if ca:
        cmd += ["--cacert", ca]
    if auth:
        cmd += ["-u", f"{USER}:{PASSWORD}"]
    for pid in cpu_pids:
        settle(pid)
    trees = [process_tree(pid) for pid in cpu_pids]
    sampler = RssSampler(sampler_pid) if sampler_pid else None
    if sampler:
        sampler.start()
    cpu0 = [cpu_seconds(t) for t in trees]
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, text=True) for _ in range(parallel)]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        code, size = out.split()
        if code != "200" or p.returncode != 0:
            raise RuntimeError(f"blob pull failed: HTTP {code}, curl exit {p.returncode}")
        total += int(size)
    elapsed = time.monotonic() - t0
    cpus = [(cpu_seconds(t) - c0) / (total / GiB) for t, c0 in zip(trees, cpu0)]
    peak = sampler.finish() if sampler else None
    return total / MiB / elapsed, peak, cpus


def hold_connections(port, count, work, pid):
    """Opens `count` TLS connections with the `hold` helper, samples the peer's RSS while they sit idle."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "hold", "--port", str(port), "--count",
                          str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    if len(line) < 2 or line[0] != "open":
        p.kill()
        raise RuntimeError(f"hold helper failed: {line}")
    time.sleep(2)
    rss = rss_mib(pid)
    p.stdin.write("status\n")
    p.stdin.flush()
    still = int(p.stdout.readline().split()[1])
    p.stdin.close()
    p.wait(timeout=60)
    return rss, int(line[1]), still


def handshake_rate(port, seconds, procs):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "handshakes", "--port", str(port),
                          "--seconds", str(seconds), "--procs", str(procs)],
                         text=True, capture_output=True, timeout=seconds + 120)
    m = re.search(r"rate ([\d.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"handshake helper failed: {out.stdout}{out.stderr}")
    return float(m.group(1))


# ---------------------------------------------------------------------------------------------------------------
# The two helper clients


def cmd_hold(args):
    """Opens N TLS connections (ALPN http/1.1, full handshake, no request) and keeps them until stdin closes."""
    ctx = ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    sel = selectors.DefaultSelector()
    started, done, failed, window = 0, [], 0, 128
    pending = {}
    deadline = time.time() + 60

    def launch():
        nonlocal started
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", args.port))
        pending[s.fileno()] = ("connect", s)
        sel.register(s, selectors.EVENT_WRITE)
        started += 1

    while (len(done) + failed < args.count) and time.time() < deadline:
        while started < args.count and len(pending) < window:
            launch()
        for key, _ in sel.select(timeout=1):
            state, s = pending[key.fd]
            try:
                if state == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    sel.unregister(s)
                    s = ctx.wrap_socket(s, server_hostname=HOST, do_handshake_on_connect=False)
                    pending[key.fd] = ("tls", s)
                    sel.register(s, selectors.EVENT_WRITE)
                try:
                    s.do_handshake()
                    sel.unregister(s)
                    del pending[key.fd]
                    done.append(s)
                except ssl.SSLWantReadError:
                    sel.modify(s, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    sel.modify(s, selectors.EVENT_WRITE)
            except (OSError, ssl.SSLError):
                try:
                    sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                pending.pop(key.fd, None)
                s.close()
                failed += 1
    print(f"open {len(done)} failed {failed}", flush=True)
    for line in sys.stdin:
        if line.strip() == "status":
            # A connection the server closed is readable (EOF); an idle open one is not.
            alive = 0
            for s in done:
                try:
                    s.setblocking(False)
                    data = s.recv(1)
                    if data:
                        alive += 1
                except (ssl.SSLWantReadError, BlockingIOError):
                    alive += 1
                except (OSError, ssl.SSLError):
                    pass
            print(f"alive {alive}", flush=True)
    for s in done:
        s.close()


def _handshake_worker(port, seconds, q):
    ctx = ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    req = f"GET /v2/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    n, errors = 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                # Without it the request waits (Nagle) for the ACK of the client Finished, which the server
                # may delay by 40 ms: that would measure delayed ACKs, not handshakes.
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=HOST) as s:
                    s.sendall(req)
                    if s.recv(12).startswith(b"HTTP/1.1 401"):
                        n += 1
                    else:
                        errors += 1
        except (OSError, ssl.SSLError):
            errors += 1
    q.put((n, errors))


def cmd_handshakes(args):
    """Full TLS handshakes (new session each time, no resumption) + one unauthenticated GET /v2/ (401) each."""
    q = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=_handshake_worker, args=(args.port, args.seconds, q))
          for _ in range(args.procs)]
    for p in ps:
        p.start()
    results = [q.get() for _ in ps]
    for p in ps:
        p.join()
    n = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    print(f"rate {n / args.seconds:.1f} errors {errors}")


# ---------------------------------------------------------------------------------------------------------------
# Orchestration and report


def machine_description():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    osname = "?"
    try:
        osname = re.search(r'PRETTY_NAME="([^"]+)"', open("/etc/os-release").read()).group(1)
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} × {cpu}, {mem:.1f} GiB RAM, {osname}, Linux {platform.release()}"


def versions(mirrorgate_bin):
    def first(cmd):
        try:
            r = subprocess.run(cmd, text=True, capture_output=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {
        "mirrorgate": first([mirrorgate_bin, "--version"]),
        "nginx": first(["nginx", "-v"]),
        "caddy": first(["caddy", "version"]),
        "haproxy": first(["haproxy", "-v"]),
        "docker-registry": first(["docker-registry", "--version"]),
        "h2load": first(["h2load", "--version"]),
        "curl": first(["curl", "--version"]),
        "skopeo": first(["skopeo", "--version"]),
        "hyperfine": first(["hyperfine", "--version"]),
    }


def skopeo_compare(peers, work, tls, runs):
    """hyperfine: `skopeo copy` of the test image straight from the upstream (plain HTTP, and over TLS from the
    second registry process) and through each peer."""
    dest = os.path.join(work, "skopeo-dest")
    authfile = os.path.join(work, "auth.json")
    with open(authfile, "w") as f:
        f.write("{}")
    base = f"REGISTRY_AUTH_FILE={authfile} skopeo --override-os linux --override-arch amd64 copy -q"
    cmds = [(DIRECT, f"{base} --src-tls-verify=false docker://127.0.0.1:{REGISTRY_PORT}/{REPO}:{TAG} dir:{dest}"),
            (DIRECT_TLS, f"{base} --src-cert-dir {tls['certdir']} "
                         f"docker://{HOST}:{REGISTRY_TLS_PORT}/{REPO}:{TAG} dir:{dest}")]
    for p in peers:
        cmds.append((p.name, f"{base} --src-creds {USER}:{PASSWORD} --src-cert-dir {tls['certdir']} "
                             f"docker://{HOST}:{p.port}/{REPO}:{TAG} dir:{dest}"))
    out = os.path.join(work, "hyperfine.json")
    argv = ["hyperfine", "--style", "basic", "--runs", str(runs), "--warmup", "1", "--prepare", f"rm -rf {dest}",
            "--export-json", out]
    for name, c in cmds:
        argv += ["-n", name, c]
    subprocess.run(argv, check=True, timeout=3600)
    data = json.load(open(out))
    return {r["command"]: r["times"] for r in data["results"]}


def summarize(vals):
    vals = [v for v in vals if v == v]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt(v, unit=""):
    if v is None:
        return "—"
    if v >= 100:
        s = f"{v:,.0f}"
    elif v >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def cell(vals, is_mg=False, mg_median=None):
    s = summarize(vals)
    if s is None:
        return "—"
    med, lo, hi = s
    spread = (hi - lo) / med * 50 if med else 0.0  # ± half the range, in percent of the median
    text = f"{fmt(med)} ±{spread:.0f}%"
    if not is_mg and mg_median and med:
        r = mg_median / med
        text += f" (×{r:.2f})" if r >= 0.01 else f" (×{r:.2g})"  # CPU against a bcrypt-per-request peer
    return text


def write_report(path, res, meta, columns_extra=(DIRECT, DIRECT_TLS)):
    peers = meta["peers"]
    # results.json written before the direct-TLS reference existed: keep their table as it was.
    columns_extra = [c for c in columns_extra if c != DIRECT_TLS or any(DIRECT_TLS in v for v in res.values())]
    lines = []
    add = lines.append
    add("# Side-by-side benchmark: mirrorgate, nginx, caddy, haproxy")
    add("")
    if meta["quick"]:
        add("> **Quick run, machine shared with other work — not representative.** Short durations, "
            f"{meta['rounds']} rounds, a {meta['blob_mib']:.0f} MiB blob. "
            "Produce the real table with `tests/bench/run` (no flag) on an otherwise idle machine.")
        add("")
    add(f"- Date: {meta['date']}")
    add(f"- Machine: {meta['machine']}")
    add(f"- Mode: {'quick' if meta['quick'] else 'full'}; {meta['rounds']} rounds (peers interleaved within each "
        f"round); small-request runs {meta['duration']} s after {meta['warmup']} s warm-up; blob "
        f"{meta['blob_size']:,} bytes; {meta['idle']:,} idle connections")
    add("- Versions: " + "; ".join(f"{k}: `{v}`" for k, v in meta["versions"].items()))
    add("")
    add("Every cell is the **median over rounds ± half the min–max range** (in % of the median). In a peer's "
        "column, **(×r)** is **mirrorgate ÷ peer**: for req/s and MiB/s above 1 means mirrorgate is ahead; "
        "for latency, memory, seconds and CPU below 1 means mirrorgate is ahead. The direct columns carry the "
        "same ratio, mirrorgate ÷ that reference.")
    add("")
    cols = ["mirrorgate"] + [p for p in peers if p != "mirrorgate"]
    header = "| measurement | " + " | ".join(cols + columns_extra) + " |"
    sep = "|---|" + "---|" * (len(cols) + len(columns_extra))

    def row(label, key, direct=()):
        """`direct`: the reference columns measured for this row (the others stay blank)."""
        mg = summarize(res.get(key, {}).get("mirrorgate", []))
        mg_med = mg[0] if mg else None
        cells = [cell(res.get(key, {}).get(c, []), c == "mirrorgate", mg_med) for c in cols]
        cells += [cell(res.get(key, {}).get(c, []), False, mg_med) if c in direct else "" for c in columns_extra]
        add(f"| {label} | " + " | ".join(cells) + " |")

    add("## 1. Authenticated small requests (h2load, 1 load thread, 1 stream per connection)")
    add("")
    add(header)
    add(sep)
    for path_key, label in (("v2", "`GET /v2/`"), ("manifest", "manifest GET")):
        for proto in ("h1", "h2"):
            for c in meta["conns"]:
                k = f"small:{path_key}:{proto}:{c}"
                row(f"{label} {proto} c={c}: req/s", k + ":rps", direct=(DIRECT_TLS,))
                row(f"{label} {proto} c={c}: p50 ms", k + ":p50", direct=(DIRECT_TLS,))
                row(f"{label} {proto} c={c}: p99 ms", k + ":p99", direct=(DIRECT_TLS,))
                if k + ":cpu_us" in res:
                    row(f"{label} {proto} c={c}: CPU µs per answered request", k + ":cpu_us", direct=(DIRECT_TLS,))
                if k + ":up_cpu_us" in res:
                    row(f"{label} {proto} c={c}: registry CPU µs per answer behind it", k + ":up_cpu_us")
    add("")
    add("## 2. TLS blob streaming (curl, HTTP/1.1, aggregate MiB/s)")
    add("")
    add(header)
    add(sep)
    row("1 pull: MiB/s", "stream:1", direct=(DIRECT, DIRECT_TLS))
    row("8 parallel pulls: MiB/s", "stream:8", direct=(DIRECT, DIRECT_TLS))
    for n, label in ((1, "1 pull"), (8, "8 parallel pulls")):
        if f"stream:{n}:cpu" in res:
            row(f"{label}: server CPU seconds per GiB", f"stream:{n}:cpu", direct=(DIRECT, DIRECT_TLS))
        if f"stream:{n}:up_cpu" in res:
            row(f"{label}: registry CPU seconds per GiB behind it", f"stream:{n}:up_cpu")
    add("")
    add("## 3. Memory (RSS of the whole process tree, MiB)")
    add("")
    add(header)
    add(sep)
    row("idle after start", "mem:idle")
    row(f"{meta['idle']:,} idle TLS connections", "mem:idle_conns")
    row("idle connections opened", "mem:idle_opened")
    row("idle connections still open when sampled", "mem:idle_alive")
    row("peak while streaming 8 pulls", "mem:stream")
    add("")
    add("## 4. New TLS connections per second (full handshake + one unauthenticated `GET /v2/` → 401)")
    add("")
    add(header)
    add(sep)
    row("handshakes/s", "hs:rate")
    add("")
    add("## 5. `skopeo copy` of the test image (hyperfine, seconds per copy)")
    add("")
    add(header)
    add(sep)
    row("skopeo copy: s", "skopeo", direct=(DIRECT, DIRECT_TLS))
    add("")
    if any(k.startswith("cache:") for k in res):
        write_cache_section(add, res, meta)
    add("## Targets")
    add("")
    for t in meta["targets"]:
        add(f"- {t}")
    add("")
    add("## What each peer is configured to do")
    add("")
    for n in meta["notes"]:
        add(f"- {n}")
    add("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_cache_section(add, res, meta):
    """Section 6: the caching peers beside mirrorgate without a cache (section 1/2 figures, registry-bound) and
    direct TLS. Here (×r) is **mirrorgate cache ÷ that column**."""
    cols = [MG_CACHE, "mirrorgate", R2_PROXY, DIRECT_TLS]
    cold_mib = meta.get("cold_size", 0) / MiB
    add("## 6. Built-in cache: hits, the cold many-client pull, registry:2 pull-through")
    add("")
    if meta["quick"]:
        add(f"> Figures from a `tests/bench/run --quick` run ({meta['rounds']} rounds, {meta['duration']} s per "
            f"h2load point, a {meta['blob_mib']:.0f} MiB blob, {cold_mib:.0f} MiB fresh blobs) on a machine shared "
            "with other work.")
        add("")
    add(f"In this table **(×r)** is **mirrorgate cache ÷ that column**. \"mirrorgate\" is the gateway without a "
        "cache from sections 1 and 2 (every answer fetched from the registry); in its manifest rows, and in direct "
        "TLS's, stand the manifest GETs by tag of section 1 (h1, 16 connections): today's registry-bound rate and the "
        f"registry's own. The `[cache]` store is bounded to "
        f"{meta.get('cache_max_size', 0) / MiB:,.0f} MiB, less than what a run pulls through it. registry:2 proxy "
        "runs **without Basic auth** (a pull-through registry:2 has none of its own); mirrorgate cache checks the "
        "same bcrypt htpasswd as in the other sections.")
    add("")
    shown = {R2_PROXY: "registry:2 proxy (no Basic auth)"}
    add("| measurement | " + " | ".join(shown.get(c, c) for c in cols) + " |")
    add("|---|" + "---|" * len(cols))
    # (label, {column: key}) — a column without a key stays blank.
    rows = [
        ("cache hit, 1 pull: MiB/s",
         {MG_CACHE: "cache:stream:1", "mirrorgate": "stream:1", R2_PROXY: "cache:stream:1", DIRECT_TLS: "stream:1"}),
        ("cache hit, 8 parallel pulls: MiB/s",
         {MG_CACHE: "cache:stream:8", "mirrorgate": "stream:8", R2_PROXY: "cache:stream:8", DIRECT_TLS: "stream:8"}),
        ("cache hit, 8 parallel pulls: server CPU seconds per GiB",
         {MG_CACHE: "cache:stream:8:cpu", "mirrorgate": "stream:8:cpu", R2_PROXY: "cache:stream:8:cpu",
          DIRECT_TLS: "stream:8:cpu"}),
        ("manifest by digest from the cache, h1 c=16: req/s",
         {MG_CACHE: "cache:manifest:rps", "mirrorgate": "small:manifest:h1:16:rps", R2_PROXY: "cache:manifest:rps",
          DIRECT_TLS: "small:manifest:h1:16:rps"}),
        ("manifest by digest from the cache, h1 c=16: p99 ms",
         {MG_CACHE: "cache:manifest:p99", "mirrorgate": "small:manifest:h1:16:p99", R2_PROXY: "cache:manifest:p99",
          DIRECT_TLS: "small:manifest:h1:16:p99"}),
        ("manifest by digest from the cache, h1 c=16: CPU µs per answer",
         {MG_CACHE: "cache:manifest:cpu_us", "mirrorgate": "small:manifest:h1:16:cpu_us",
          R2_PROXY: "cache:manifest:cpu_us", DIRECT_TLS: "small:manifest:h1:16:cpu_us"}),
        ("upstream GETs under /v2/library/big/ during the hit runs (per round)",
         {MG_CACHE: "cache:hit:upstream_gets", R2_PROXY: "cache:hit:upstream_gets"}),
        (f"cold pull, {COLD_CLIENTS} clients on one uncached {cold_mib:.0f} MiB blob: wall s",
         {MG_CACHE: "cache:cold:wall", R2_PROXY: "cache:cold:wall"}),
        (f"cold pull, {COLD_CLIENTS} clients: upstream GETs of that blob (per round)",
         {MG_CACHE: "cache:cold:upstream_gets", R2_PROXY: "cache:cold:upstream_gets"}),
        (f"cold pull, {COLD_CLIENTS} clients: peak RSS MiB",
         {MG_CACHE: "cache:cold:rss", R2_PROXY: "cache:cold:rss"}),
        (f"first pull of a fresh {cold_mib:.0f} MiB image (`skopeo copy`): s",
         {MG_CACHE: "cache:first", R2_PROXY: "cache:first"}),
        ("second pull of it: s", {MG_CACHE: "cache:second", R2_PROXY: "cache:second"}),
        ("second pull: upstream GETs of its layer (per round)",
         {MG_CACHE: "cache:second:upstream_gets", R2_PROXY: "cache:second:upstream_gets"}),
        ("disk used by the store after the run: MiB", {MG_CACHE: "cache:disk", R2_PROXY: "cache:disk"}),
    ]
    for label, keys in rows:
        base = summarize(res.get(keys[MG_CACHE], {}).get(MG_CACHE, []))
        base_med = base[0] if base else None
        cells = []
        for c in cols:
            if c not in keys:
                cells.append("")
            elif "upstream_gets" in keys[c]:
                # Counts are shown round by round: "1 / 1" says more than a median with a spread.
                vals = res.get(keys[c], {}).get(c, [])
                cells.append(" / ".join(str(v) for v in vals) if vals else "—")
            else:
                cells.append(cell(res.get(keys[c], {}).get(c, []), c == MG_CACHE, base_med))
        add(f"| {label} | " + " | ".join(cells) + " |")
    failed = {p: len(v) for p, v in res.get("cache:cold:failed", {}).items()}
    if failed:
        add("")
        add("Cold pulls that failed (a client got no complete 200): " +
            ", ".join(f"{p} in {n} round(s)" for p, n in failed.items()) + ".")
    add("")


def judge_cache_targets(res, meta):
    """Issue 17's benchmark targets for the built-in cache, and the registry:2 facts beside them."""
    out = []
    if not any(k.startswith("cache:") for k in res):
        return out

    def verdict(ok):
        return "**met**" if ok else "**missed**"

    for n in (1, 8):
        mg, dt = med(res, f"cache:stream:{n}", MG_CACHE), med(res, f"stream:{n}", DIRECT_TLS)
        if mg is None or not dt:
            continue
        nc = med(res, f"stream:{n}", "mirrorgate")
        extra = f"; {mg / nc:.2f}× mirrorgate without a cache" if nc else ""
        out.append(f"cache hit, {n} pull(s) against direct TLS ≥ 1.0×: {verdict(mg >= dt)} — {mg:,.0f} MiB/s vs "
                   f"{dt:,.0f} MiB/s ({mg / dt:.2f}×){extra}")
    mg, today = med(res, "cache:manifest:rps", MG_CACHE), med(res, "small:manifest:h1:16:rps", "mirrorgate")
    if mg is not None and today:
        out.append(f"manifest by digest from the cache ≥ 5× the registry-bound manifest rate (h1 c=16): "
                   f"{verdict(mg >= 5 * today)} — {mg:,.0f} req/s vs {today:,.0f} req/s ({mg / today:.1f}×)")
    gets = res.get("cache:cold:upstream_gets", {}).get(MG_CACHE, [])
    if gets:
        wall = med(res, "cache:cold:wall", MG_CACHE)
        r2 = res.get("cache:cold:upstream_gets", {}).get(R2_PROXY, [])
        text = (f"cold {COLD_CLIENTS}-client pull, one upstream GET: "
                f"{verdict(all(g == 1 for g in gets) and MG_CACHE not in res.get('cache:cold:failed', {}))}"
                f" — upstream GETs per round {gets}")
        if wall is not None:
            text += f", {wall:.2f} s wall"
        if r2:
            text += f"; registry:2 proxy: {r2}"
        out.append(text)
    disk, bound = med(res, "cache:disk", MG_CACHE), meta.get("cache_max_size")
    if disk is not None and bound:
        r2 = med(res, "cache:disk", R2_PROXY)
        out.append(f"cache store under max_size after the run: {verdict(disk * MiB <= bound)} — {disk:,.0f} MiB of "
                   f"{bound / MiB:,.0f} MiB" + (f"; registry:2 proxy keeps {r2:,.0f} MiB (no bound)" if r2 else ""))
    return out


def med(res, key, peer):
    s = summarize(res.get(key, {}).get(peer, []))
    return s[0] if s else None


def judge_targets(res, meta):
    out, cpu_lines = [], []
    conns = meta["conns"]
    if "mirrorgate" not in meta["peers"]:
        return ["mirrorgate was not part of this run: no target judged."]

    def verdict(ok):
        return "**met**" if ok else "**missed**"

    for path_key, label in (("v2", "GET /v2/"), ("manifest", "manifest GET")):
        for proto in ("h1", "h2"):
            for c in conns:
                k = f"small:{path_key}:{proto}:{c}"
                mg = med(res, k + ":rps", "mirrorgate")
                parts, ok = [], True
                for peer, need in (("nginx", 1.5), ("caddy", 1.2)):
                    v = med(res, k + ":rps", peer)
                    if mg is None or v is None:
                        continue
                    r = mg / v if v else float("inf")
                    ok &= r >= need
                    parts.append(f"{r:.2f}× {peer} (need ≥{need}×)")
                p99 = med(res, k + ":p99", "mirrorgate")
                worse = [p for p in meta["peers"] if p != "mirrorgate" and med(res, k + ":p99", p) is not None
                         and p99 is not None and med(res, k + ":p99", p) <= p99]
                ok &= not worse
                parts.append("p99 lowest" if not worse else "p99 not lowest (" + ", ".join(worse) + " ≤)")
                # A fact, not part of the verdict: the registry answering the same GET over TLS by itself.
                dt = med(res, k + ":rps", DIRECT_TLS)
                if path_key == "manifest" and mg is not None and dt:
                    parts.append(f"{mg / dt * 100:.0f}% of the direct-TLS rate (the registry's own ceiling)")
                out.append(f"{label} {proto} c={c}: {verdict(ok)} — " + "; ".join(parts))
                # Also facts, listed after every verdict: the server's own CPU per answer.
                cpu = med(res, k + ":cpu_us", "mirrorgate")
                if cpu is None:
                    continue
                others = [(med(res, k + ":cpu_us", p), p) for p in meta["peers"] if p != "mirrorgate"]
                others = [o for o in others if o[0] is not None]
                text = f"CPU per answered request, {label} {proto} c={c}: mirrorgate {fmt(cpu)} µs"
                if others:
                    low, lp = min(others)
                    text += f", lowest other peer {lp} {fmt(low)} µs (mirrorgate ×{cpu / low:.2f})" if low else ""
                dt = med(res, k + ":cpu_us", DIRECT_TLS)
                if dt is not None:
                    text += f"; direct TLS {fmt(dt)} µs"
                cpu_lines.append(text)
    out += cpu_lines
    for n in (1, 8):
        k = f"stream:{n}"
        mg, direct = med(res, k, "mirrorgate"), med(res, k, "direct")
        if mg is None or direct is None:
            continue
        best = max((med(res, k, p) or 0 for p in meta["peers"] if p != "mirrorgate"), default=0)
        ok = mg >= 0.9 * direct and mg >= best * 0.97
        dt = med(res, k, DIRECT_TLS)
        tls_part = f", {mg / dt * 100:.0f}% of direct TLS" if dt else ""
        cpu, cpu_dt = med(res, k + ":cpu", "mirrorgate"), med(res, k + ":cpu", DIRECT_TLS)
        cpu_part = ""
        if cpu is not None:
            cpu_part = f"; server CPU {cpu:.2f} s/GiB" + (f" vs direct TLS {cpu_dt:.2f} s/GiB" if cpu_dt else "")
        out.append(f"blob streaming, {n} pull(s): {verdict(ok)} — {mg / direct * 100:.0f}% of plain direct "
                   f"(need ≥90%){tls_part}, best peer {best:,.0f} MiB/s vs mirrorgate {mg:,.0f} MiB/s (3% noise "
                   f"allowance){cpu_part}")
    idle = med(res, "mem:idle", "mirrorgate")
    if idle is not None:
        out.append(f"idle RSS < 20 MiB: {verdict(idle < 20)} — {idle:.1f} MiB")
    ic = med(res, "mem:idle_conns", "mirrorgate")
    if ic is not None:
        out.append(f"{meta['idle']:,} idle TLS connections < 150 MiB: {verdict(ic < 150)} — {ic:.1f} MiB")
    out += judge_cache_targets(res, meta)
    sk, skd = med(res, "skopeo", "mirrorgate"), med(res, "skopeo", "direct")
    if sk is not None and skd:
        skt = med(res, "skopeo", DIRECT_TLS)
        tls_part = f"; {skt:.2f} s direct TLS ({(sk / skt - 1) * 100:+.0f}%)" if skt else ""
        out.append(f"skopeo copy within 10% of direct: {verdict(sk <= 1.1 * skd)} — {sk:.2f} s vs {skd:.2f} s "
                   f"plain direct ({(sk / skd - 1) * 100:+.0f}%){tls_part}")
    return out


def _terminate(signum, _frame):
    raise SystemExit(f"stopped by signal {signum}")


def cmd_main(args):
    # SIGTERM/SIGINT unwind through the `finally` below, so no server is left running.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    quick = args.quick
    rounds = args.rounds or (2 if quick else 3)
    duration = 2 if quick else 8
    warmup = 1
    blob_bytes = (64 if quick else 1024) * MiB
    # Section 6: the fresh images and cold blobs, and a cache bound that a run's pulls exceed.
    cold_bytes = (32 if quick else 256) * MiB
    cache_max_size = blob_bytes + cold_bytes * 3 // 2
    conns = [16, 256]
    idle = args.idle or 10000
    hs_seconds = 2 if quick else 5
    skopeo_runs = 2 if quick else 3
    per_conn = 1 if quick else 3
    count_mode = set()
    peers_wanted = args.peers.split(",") if args.peers else PEERS
    mg_bin = os.path.abspath(os.environ.get("MIRRORGATE_BIN", "target/release/mirrorgate"))
    env = dict(os.environ, MIRRORGATE_BIN=mg_bin, HOME=work, XDG_DATA_HOME=os.path.join(work, "xdg-data"),
               XDG_CONFIG_HOME=os.path.join(work, "xdg-config"), RUST_LOG="info")

    tls = make_certs(work)
    htpasswd, bcrypt_hash = make_htpasswd(work)
    registry = start_registry(work)
    procs_to_stop = [registry]
    res = {}

    def put(key, peer, v):
        res.setdefault(key, {}).setdefault(peer, []).append(v)

    try:
        registry_tls = start_registry(work, tls)
        procs_to_stop.append(registry_tls)
        registry_logged = start_registry(work, logged=True)
        procs_to_stop.append(registry_logged)
        image = make_image(work, blob_bytes)
        os.environ["MIRRORGATE_BIN"] = mg_bin
        cmds = write_peer_configs(work, tls, htpasswd, bcrypt_hash, conns=idle + 2000)
        if "mirrorgate" in peers_wanted:
            chk = subprocess.run([mg_bin, "check", "-c", cmds["mirrorgate"][-1]], text=True, capture_output=True)
            if chk.returncode != 0:
                raise RuntimeError("mirrorgate check rejected the benchmark config:\n" + chk.stdout + chk.stderr)
        peers = [Peer(n, cmds[n], work, env) for n in peers_wanted]
        cache_cmds = write_cache_configs(work, tls, htpasswd, cache_max_size)
        chk = subprocess.run([mg_bin, "check", "-c", cache_cmds[MG_CACHE][-1]], text=True, capture_output=True)
        if chk.returncode != 0:
            raise RuntimeError("mirrorgate check rejected the cache config:\n" + chk.stdout + chk.stderr)
        cache_peers = [Peer(n, cache_cmds[n], work, env, CACHE_PORTS[n]) for n in (MG_CACHE, R2_PROXY)]
        blob_path = f"/v2/{REPO}/blobs/{image['blob']}"
        small_paths = (("v2", "/v2/"), ("manifest", f"/v2/{REPO}/manifests/{TAG}"))

        def small_requests(name, port, pid, auth, upstream_pid=None):
            for path_key, path in small_paths:
                for proto in ("h1", "h2"):
                    for c in conns:
                        # /v2/ never reaches the registry: only the manifest GET has a registry cost behind it.
                        up = upstream_pid if path_key == "manifest" else None
                        m = h2load(port, path, proto, c, duration, warmup, work, per_conn, auth=auth, cpu_pid=pid,
                                   upstream_pid=up)
                        k = f"small:{path_key}:{proto}:{c}"
                        for f in ("rps", "p50", "p99", "cpu_us") + (("up_cpu_us",) if up else ()):
                            put(f"{k}:{f}", name, m[f])
                        if m.get("count_mode"):
                            count_mode.add(name)
                        log(f"  {path_key} {proto} c={c}: {m['rps']:,.0f} req/s, p50 {m['p50']:.2f} ms, "
                            f"p99 {m['p99']:.2f} ms, {m['cpu_us']:,.0f} CPU µs/answer"
                            + (f" (+{m['up_cpu_us']:,.0f} in the registry)" if up else "")
                            + (" (count mode)" if m.get("count_mode") else ""))

        for r in range(rounds):
            log(f"round {r + 1}/{rounds}: direct blob pulls")
            for n in (1, 8):
                mibs, _, (cpu,) = curl_pulls(f"http://127.0.0.1:{REGISTRY_PORT}{blob_path}", n, None, False,
                                             cpu_pids=(registry.pid,))
                put(f"stream:{n}", DIRECT, mibs)
                put(f"stream:{n}:cpu", DIRECT, cpu)
                log(f"  {n} pull(s): {mibs:,.0f} MiB/s, registry CPU {cpu:.2f} s/GiB")
            log(f"round {r + 1}/{rounds}: direct TLS (the registry itself over TLS, anonymous)")
            # Pulls first: right after hundreds of h2load connections the registry is still busy cleaning up.
            for n in (1, 8):
                mibs, _, (cpu,) = curl_pulls(f"https://{HOST}:{REGISTRY_TLS_PORT}{blob_path}", n, tls["ca"], False,
                                             cpu_pids=(registry_tls.pid,))
                put(f"stream:{n}", DIRECT_TLS, mibs)
                put(f"stream:{n}:cpu", DIRECT_TLS, cpu)
                log(f"  {n} pull(s): {mibs:,.0f} MiB/s, registry CPU {cpu:.2f} s/GiB")
            small_requests(DIRECT_TLS, REGISTRY_TLS_PORT, registry_tls.pid, False)
            order = peers if r % 2 == 0 else list(reversed(peers))
            for p in order:
                log(f"round {r + 1}/{rounds}: {p.name}")
                p.start(tls["ca"])
                try:
                    time.sleep(1)
                    put("mem:idle", p.name, rss_mib(p.proc.pid))
                    small_requests(p.name, p.port, p.proc.pid, True, upstream_pid=registry.pid)
                    rate = handshake_rate(p.port, hs_seconds, 2)
                    put("hs:rate", p.name, rate)
                    log(f"  handshakes: {rate:,.0f}/s")
                    for n in (1, 8):
                        mibs, peak, (cpu, up_cpu) = curl_pulls(f"https://{HOST}:{p.port}{blob_path}", n, tls["ca"],
                                                               True, sampler_pid=p.proc.pid,
                                                               cpu_pids=(p.proc.pid, registry.pid))
                        put(f"stream:{n}", p.name, mibs)
                        put(f"stream:{n}:cpu", p.name, cpu)
                        put(f"stream:{n}:up_cpu", p.name, up_cpu)
                        if n == 8:
                            put("mem:stream", p.name, peak)
                        log(f"  {n} pull(s): {mibs:,.0f} MiB/s (peak RSS {peak:.1f} MiB), server CPU {cpu:.2f} s/GiB "
                            f"(+{up_cpu:.2f} in the registry)")
                    n_idle = min(idle, HAPROXY_IDLE) if p.name == "haproxy" else idle
                    rss, opened, alive = hold_connections(p.port, n_idle, work, p.proc.pid)
                    put("mem:idle_conns", p.name, rss)
                    put("mem:idle_opened", p.name, opened)
                    put("mem:idle_alive", p.name, alive)
                    log(f"  {opened:,} idle conns ({alive:,} alive when sampled): RSS {rss:.1f} MiB")
                finally:
                    p.stop()
            for p in (cache_peers if r % 2 == 0 else list(reversed(cache_peers))):
                log(f"round {r + 1}/{rounds}: {p.name}")
                cache_round(p, r + 1, work, tls, image, cold_bytes, registry_logged.logpath, duration, warmup, put)
        for p in cache_peers:
            # After the run, every peer stopped: mirrorgate's store at rest, registry:2's with everything it kept.
            put("cache:disk", p.name, disk_mib(cache_store(work, p.name)))
        log("skopeo copy through every peer (hyperfine)")
        for p in peers:
            p.start(tls["ca"])
            procs_to_stop.append(p)
        times = skopeo_compare(peers, work, tls, skopeo_runs)
        for name, ts in times.items():
            for t in ts:
                put("skopeo", name, t)
    finally:
        for p in reversed(procs_to_stop):
            p.stop()

    meta = {
        "quick": quick, "rounds": rounds, "duration": duration, "warmup": warmup, "blob_mib": blob_bytes / MiB,
        "blob_size": image["blob_size"], "idle": idle, "conns": conns, "peers": peers_wanted,
        "cold_size": cold_bytes, "cache_max_size": cache_max_size,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_description(), "versions": versions(mg_bin),
    }
    meta["targets"] = judge_targets(res, meta)
    meta["notes"] = list(PEER_NOTES) + list(REFERENCE_NOTES) + list(CACHE_NOTES)
    if count_mode:
        meta["notes"].append(
            "Small requests, " + ", ".join(sorted(count_mode)) + ": at some load points fewer than 4 answers per "
            f"connection came back inside the {duration} s window (each request waits behind the bcrypt checks "
            f"queued on the same worker), so those points were measured in count mode instead: {per_conn} requests "
            "per connection, req/s = answers ÷ wall time including the TLS handshakes, every request timed.")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": res}, f, indent=1)
    write_report(args.out, res, meta)
    log(f"wrote {args.out}")


PEER_NOTES = [
    "All four: TLS 1.2/1.3 with the same ECDSA P-256 leaf (signed by a throw-away CA), ALPN h2 + http/1.1, "
    "HTTP Basic against the same htpasswd line made by `htpasswd -B -C 10` (bcrypt cost 10), upstream "
    "`docker-registry` over plain HTTP on loopback with pooled keep-alive connections, one access-log line per "
    "request written to a file, default worker count (2 cores: 2 nginx workers, 2 haproxy threads, "
    "GOMAXPROCS=2, 2 tokio workers).",
    "`GET /v2/` is answered by every peer itself after the credentials are checked (200 `{}` with "
    "`Docker-Distribution-Api-Version`), as mirrorgate does; the manifest GET is proxied to the upstream by all.",
    "bcrypt: nginx (`auth_basic_user_file`) and haproxy (`userlist` + `http_auth`, glibc/libxcrypt `crypt(3)` "
    "which accepts `$2y$`) run bcrypt on every request; caddy (`basicauth`, hash base64-encoded as 2.6 requires) "
    "and mirrorgate cache verified credentials. That is the main reason for the small-request gap to nginx and "
    "haproxy: it is what these servers do out of the box with a cost-10 file.",
    "nginx: `proxy_buffering off` and `proxy_request_buffering off` (streams like the others instead of spooling "
    "a 1 GiB blob to temp files), upstream `keepalive 128`, `keepalive_requests` raised so "
    "load-generator connections are not recycled every 1000 requests, `worker_connections` and "
    "`worker_rlimit_nofile` raised for the idle-connection test.",
    "caddy 2.6: `auto_https off`, `admin off`, `protocols h1 h2` (no HTTP/3), `reverse_proxy` with "
    "`flush_interval -1`, `default_sni docker.test`.",
    "haproxy 2.6: `maxconn 9900` (the most it accepts under the 20000 open-files hard limit, as it reserves "
    "two descriptors per connection), so its idle-connection row holds 9,500 connections, not 10,000; "
    "`http-reuse safe`; answers `/v2/` with `http-request return` after `http-request auth`.",
    "mirrorgate: one route `docker.test` → the upstream, one tenant with the user and `allow = [\"*/*\"]`, "
    "rate/bandwidth/concurrency limits set far above what the benchmark can reach.",
    "Load generators share the same 2 cores with the server under test (h2load with one thread; curl; the "
    "Python clients for idle connections and handshakes), so absolute numbers are lower than on a dedicated "
    "client machine; the ratios are what to read.",
    "Idle connections: full TLS handshake (ALPN http/1.1), then no request; RSS sampled 2 s after the last one "
    "opened; header-read timeouts raised to 300 s on every peer so none is closed while sampled.",
]

REFERENCE_NOTES = [
    "Two references. **direct** pulls from the registry over plain HTTP (127.0.0.1:18400, the upstream every "
    "peer proxies to): the registry's sendfile path and a client that decrypts nothing, so it is not the same "
    "pull as through any peer; it is what the \"≥ 90% of direct\" and \"skopeo within 10% of direct\" verdicts "
    "are computed against, as before. **direct TLS** is a second `docker-registry` process serving the same "
    "storage read-only over TLS (127.0.0.1:18401, the peers' certificate, Go crypto/tls, ALPN h2 + http/1.1, "
    "anonymous): the same pull as through a peer, the client decrypting as it does behind one, with the "
    "registry doing the encryption itself. On 2 shared cores TLS alone costs more than 10% of the plain rate; "
    "the ratio against direct TLS in the Targets is the gateway's own overhead (auth, the extra hop, and its "
    "TLS stack against Go's).",
    "Small requests, direct TLS column: the same h2load runs (paths, h1/h2, connection counts, durations) "
    "against the TLS registry without an `Authorization` header, once per round. `GET /v2/` there is the "
    "registry's own answer; its manifest GET rate is the registry's own ceiling on this machine (a peer in front "
    "adds its TLS, auth and proxy work on the same 2 cores, though the registry behind it answers plain HTTP), "
    "which caps the manifest GET rate of every peer.",
    "CPU µs per answered request: utime + stime (`/proc/<pid>/stat` fields 14 and 15, all threads) summed over "
    "the server's process tree (nginx master + workers), sampled every 20 ms during each h2load run and "
    "interpolated at the start of the first logged request and the end of the last answer of the measurement "
    "window, divided by the 2xx answers in h2load's request log for that window (h2load logs and counts only "
    "the window, not its warm-up second, so the warm-up is neither counted nor charged). Points measured in "
    "count mode: CPU over the whole h2load run, TLS handshakes included, ÷ answers. A peer's row is the peer's "
    "own CPU (the registry answering the proxied manifest GET is not included): the gateway's cost, "
    "independent of the registry cap. The direct TLS column is the TLS registry's CPU, producing the answer "
    "included. The load generator's CPU is counted nowhere.",
    "Server CPU seconds per GiB: CPU of the server's process tree from just before the first curl starts to "
    "just after the last one ends, ÷ GiB received by curl, after waiting (up to 5 s) for the server to go idle so "
    "clean-up left from the previous test is not charged. Peers: the peer alone (not the registry behind it); "
    "direct: the plain registry; direct TLS: the TLS registry.",
    "\"registry CPU … behind it\" rows: the plain registry's CPU over the same window, ÷ the same answers or "
    "GiB, while a peer runs; peer + registry is the whole server-side cost of a request through that peer, to "
    "set against the direct TLS column (the registry doing the whole job alone).",
]


CACHE_NOTES = [
    "Section 6, both caching peers: upstream `docker-registry` on 127.0.0.1:18402, a third process on the same "
    "storage (read-only) with its access log on; \"upstream GETs\" are the `GET <path>` lines of that log. Each "
    "keeps its store across rounds. Per round, in alternating order: a fresh image (one layer of the cold size, "
    "pushed before the peer starts) is copied twice with `skopeo copy` (first pull: every byte fetched; second: "
    "from the store); one `skopeo copy` of library/big warms the store; then 1 and 8 parallel curl pulls of the "
    "big blob and h2load manifest GETs by digest (h1, 16 connections, 1 s warm-up) are answered from it; then "
    f"{COLD_CLIENTS} curl clients start at once on a fresh blob pushed to its own repository (never pulled before), "
    "wall time from the first start to the last complete body, every client's status and curl exit checked (a "
    "body shorter than its Content-Length fails).",
    "mirrorgate cache: the mirrorgate config of the other sections (same TLS, htpasswd, tenant) plus `[cache]` with "
    "`max_size` set below what a run pulls through it (the big blob plus 1.5 fresh blobs), so least-recently-used "
    "eviction runs during the run; the disk row is `du` of its store folder after the last round. registry:2 "
    "proxy: Debian's `docker-registry` 2.8 with `proxy.remoteurl`, TLS by its own `http.tls` with the peers' "
    "certificate, no Basic auth, no size bound (its scheduler only expires entries after 7 days).",
]


def cmd_report(args):
    """Rewrites the Markdown table from a kept work folder's results.json (e.g. after editing the notes)."""
    data = json.load(open(args.results))
    meta, res = data["meta"], data["results"]
    meta["targets"] = judge_targets(res, meta)
    write_report(args.out, res, meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("main", help="run the whole benchmark")
    m.add_argument("--quick", action="store_true")
    m.add_argument("--work", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--rounds", type=int)
    m.add_argument("--idle", type=int, help="idle TLS connections to hold (default 10000)")
    m.add_argument("--peers", help="comma-separated subset of " + ",".join(PEERS))
    h = sub.add_parser("hold")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--count", type=int, required=True)
    s = sub.add_parser("handshakes")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--procs", type=int, default=2)
    r = sub.add_parser("report", help="rewrite the Markdown from a kept work folder's results.json")
    r.add_argument("--results", required=True)
    r.add_argument("--out", required=True)
    args = ap.parse_args()
    {"main": cmd_main, "hold": cmd_hold, "handshakes": cmd_handshakes, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
