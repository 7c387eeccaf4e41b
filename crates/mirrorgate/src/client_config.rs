//! `mirrorgate client-config`: prints the mirror configuration each container client needs to pull through
//! the gateway, so operators do not have to translate one set of facts (gateway host, upstream, credentials)
//! into seven file formats by hand.
//!
//! Every client has its own idea of a mirror:
//! - containerd (and kind, k3s/RKE2, Talos, which all run it) keeps one `hosts.toml` per upstream registry,
//!   tries the mirror hosts in order and falls back to `server`; it adds `?ns=<upstream>` to mirror requests,
//!   which `ns` routes use to pick the upstream.
//! - podman and CRI-O read `registries.conf`: a `[[registry]]` per upstream with `[[registry.mirror]]` entries;
//!   a mirror location may carry a path, which is how `path_prefix` routes are reached. They never send `?ns=`.
//! - Docker's `registry-mirrors` covers docker.io only and sends no credentials to mirrors.
//!
//! The renderers are pure functions from [`Mirror`]s to text, so each format is unit-tested by parsing it back.
//! Secrets are never printed: `--user` places the name and the placeholder `${MIRRORGATE_PASSWORD}`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mirrorgate_config::{Config, HostPattern, Upstream};

/// What stands in for the password in every snippet; `envsubst` fills it from the environment.
pub const PASSWORD_PLACEHOLDER: &str = "${MIRRORGATE_PASSWORD}";

/// Where the CRI plugin of containerd 1.5+ is told to look for `hosts.toml` files.
const CONTAINERD_CERTS_D: &str = "/etc/containerd/certs.d";

/// Default folder next to the kind config holding the `hosts.toml` files mounted into the nodes.
const KIND_HOSTS_DIR: &str = "./mirrorgate-certs.d";

/// `mirrorgate client-config [--host HOST | -c CONFIG] --for CLIENT [--user USER] [--upstream REGISTRY] [--port N]`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The gateway's public host name (`host:port` accepted).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    host: Option<String>,
    /// A mirrorgate config: print entries for every route it serves.
    #[arg(short = 'c', long = "config", value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// The client to configure.
    #[arg(long = "for", value_enum, value_name = "CLIENT")]
    client: Client,
    /// Place credentials for this user (the password stays a `${MIRRORGATE_PASSWORD}` placeholder).
    #[arg(long)]
    user: Option<String>,
    /// The registry being mirrored, as images name it (default docker.io with --host; a filter with -c).
    #[arg(long, value_name = "REGISTRY")]
    upstream: Option<String>,
    /// The gateway's public port (default: 443 with --host, the `server.https` port with -c).
    #[arg(long)]
    port: Option<u16>,
    /// containerd and kind: write each hosts.toml to DIR/<registry>/hosts.toml instead of printing it.
    #[arg(long, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
}

/// The clients `client-config` knows.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// containerd ≥ 1.5 (`hosts.toml`, also what `ctr --hosts-dir` reads).
    Containerd,
    /// k3s and RKE2 (`registries.yaml`).
    #[value(alias = "rke2")]
    K3s,
    /// Docker Engine (`daemon.json`, docker.io only).
    Docker,
    /// podman, buildah, skopeo (`registries.conf`).
    Podman,
    /// CRI-O (`registries.conf`).
    #[value(alias = "crio")]
    CriO,
    /// kind (`containerdConfigPatches` + mounted `hosts.toml`).
    Kind,
    /// Talos (`machine.registries`).
    Talos,
}

/// How a client must address one gateway host to reach one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The route serves this upstream by its host alone (`upstream = ...`).
    Direct,
    /// An `ns = true` route lists the upstream: containerd's `?ns=` picks it. `prefix` when the route also
    /// has `path_prefix = true`, so clients without `?ns=` can use `gateway/<upstream>`.
    Ns { prefix: bool },
    /// A `path_prefix = true` route: the upstream is the first path component (`/v2/gcr.io/...`).
    Prefix,
}

/// One gateway host mirroring an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host` or `host:port` (no port when it is 443).
    pub gateway: String,
    pub reach: Reach,
}

/// One upstream registry as image names spell it, with the gateway hosts that mirror it, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `docker.io`, `gcr.io`, `registry.test:5000`.
    pub upstream: String,
    /// The upstream's own URL, the fallback where the client has one (`https://registry-1.docker.io`).
    pub server: String,
    pub endpoints: Vec<Endpoint>,
}

impl Endpoint {
    /// The containerd-family host URL and whether it needs `override_path` (the path is the API root).
    fn containerd_url(&self, upstream: &str) -> (String, bool) {
        match self.reach {
            Reach::Direct | Reach::Ns { .. } => (format!("https://{}", self.gateway), false),
            Reach::Prefix => (format!("https://{}/v2/{upstream}", self.gateway), true),
        }
    }

    /// The `registries.conf` mirror location; `None` when only `?ns=` reaches the upstream.
    fn location(&self, upstream: &str) -> Option<String> {
        match self.reach {
            Reach::Direct => Some(self.gateway.clone()),
            Reach::Ns { prefix: true } | Reach::Prefix => {
                Some(format!("{}/{upstream}", self.gateway))
            }
            Reach::Ns { prefix: false } => None,
        }
    }

    /// The Docker `registry-mirrors` URL: docker.io served by host alone, nothing else.
    fn docker_url(&self, upstream: &str) -> Option<String> {
        (upstream == "docker.io" && self.reach == Reach::Direct)
            .then(|| format!("https://{}", self.gateway))
    }
}

/// Runs the command: snippet on stdout, notes on stderr.
pub fn main(args: &Args) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mirrorgate client-config: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    if let Some(user) = &args.user {
        crate::htpasswd_cmd::validate_user(user).context("--user")?;
    }
    let (mut mirrors, mut notes) = match (&args.host, &args.config) {
        (Some(host), _) => (
            vec![mirror_for_host(host, args.port, args.upstream.as_deref())?],
            Vec::new(),
        ),
        (None, Some(path)) => {
            let config = mirrorgate_config::load(path).map_err(|errors| {
                let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                anyhow::anyhow!(
                    "{} is not a valid config (run `mirrorgate check -c {}`):\n{}",
                    path.display(),
                    path.display(),
                    list.join("\n")
                )
            })?;
            mirrors_from_config(&config, args.port)
        }
        (None, None) => bail!("say which gateway: --host HOST or -c CONFIG"),
    };
    if let (Some(wanted), Some(_)) = (&args.upstream, &args.config) {
        let wanted = registry_name(wanted);
        let known: Vec<String> = mirrors.iter().map(|m| m.upstream.clone()).collect();
        mirrors.retain(|m| m.upstream == wanted);
        if mirrors.is_empty() {
            bail!(
                "no route mirrors {wanted}; the config mirrors: {}",
                known.join(", ")
            );
        }
    }
    if mirrors.is_empty() {
        bail!("the config has no route a client could use as a mirror");
    }
    let user = args.user.as_deref();
    notes.extend(client_notes(args.client, &mirrors, user));

    let text = match (args.client, &args.hosts_dir) {
        (Client::Containerd, Some(dir)) => {
            write_hosts_dir(dir, &mirrors)?;
            cri_registry_toml(&mirrors, user)
        }
        (Client::Containerd, None) => containerd(&mirrors, user),
        (Client::Kind, Some(dir)) => {
            write_hosts_dir(dir, &mirrors)?;
            let abs =
                fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
            kind(&mirrors, user, &abs.to_string_lossy(), false)
        }
        (Client::Kind, None) => kind(&mirrors, user, KIND_HOSTS_DIR, true),
        (Client::K3s, _) => k3s(&mirrors, user),
        (Client::Podman | Client::CriO, _) => registries_conf(&mirrors, user, args.client),
        (Client::Docker, _) => docker(&mirrors),
        (Client::Talos, _) => talos(&mirrors, user),
    };
    if args.hosts_dir.is_some() && !matches!(args.client, Client::Containerd | Client::Kind) {
        notes.push(
            "--hosts-dir is used by --for containerd and --for kind only; nothing was written"
                .into(),
        );
    }
    for note in &notes {
        eprintln!("note: {note}");
    }
    if args.client == Client::Docker && docker_urls(&mirrors).is_empty() {
        bail!("no route serves docker.io by host alone, and docker's registry-mirrors covers nothing else");
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// The name image references use for a registry: Docker Hub's API hosts are `docker.io`.
fn registry_name(name: &str) -> String {
    let name = name.trim().trim_end_matches('/').to_ascii_lowercase();
    if mirrorgate_registry::is_docker_hub(&name) {
        mirrorgate_registry::DOCKER_HUB_HOSTS[0].into()
    } else {
        name
    }
}

/// `host[:port]` of an upstream URL, as image names spell the registry.
fn upstream_name(upstream: &Upstream) -> String {
    let host = upstream.url.host_str().unwrap_or_default();
    match upstream.url.port() {
        Some(port) => registry_name(&format!("{host}:{port}")),
        None => registry_name(host),
    }
}

/// The real registry URL for a name given on the command line.
fn default_server(upstream: &str) -> String {
    if upstream == "docker.io" {
        "https://registry-1.docker.io".into()
    } else {
        format!("https://{upstream}")
    }
}

fn authority(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) if p != 443 => format!("{host}:{p}"),
        _ => host.to_owned(),
    }
}

/// Host names (and registry names) may hold letters, digits, `.`, `-`, `_` and one `:port`.
fn check_host(what: &str, host: &str) -> Result<()> {
    if host.contains("://") {
        bail!("{what} {host:?}: give the host name only, without https://");
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        bail!("{what} {host:?} is not a host name (letters, digits, `.`, `-`, optional `:port`)");
    }
    if let Some(port) = port {
        port.parse::<u16>().with_context(|| {
            format!("{what} {host:?}: the port must be a number from 1 to 65535")
        })?;
    }
    Ok(())
}

/// The single mirror described by `--host` (and `--port`, `--upstream`).
fn mirror_for_host(host: &str, port: Option<u16>, upstream: Option<&str>) -> Result<Mirror> {
    let host = host.trim().to_ascii_lowercase();
    check_host("--host", &host)?;
    let gateway = match (host.rsplit_once(':'), port) {
        (Some((name, _)), Some(p)) => authority(name, Some(p)),
        (Some((name, p)), None) => authority(name, p.parse().ok()),
        (None, p) => authority(&host, p),
    };
    let upstream = registry_name(upstream.unwrap_or("docker.io"));
    check_host("--upstream", &upstream)?;
    Ok(Mirror {
        server: default_server(&upstream),
        upstream,
        endpoints: vec![Endpoint {
            gateway,
            reach: Reach::Direct,
        }],
    })
}

/// One [`Mirror`] per upstream any route reaches, gateways in route order, plus notes on routes skipped.
pub fn mirrors_from_config(config: &Config, port: Option<u16>) -> (Vec<Mirror>, Vec<String>) {
    let port = port.or(Some(config.server.https.port()));
    let mut mirrors: Vec<Mirror> = Vec::new();
    let mut notes = Vec::new();
    let mut add = |upstream: String, server: String, endpoint: Endpoint| match mirrors
        .iter_mut()
        .find(|m| m.upstream == upstream)
    {
        Some(m) if m.endpoints.contains(&endpoint) => {}
        Some(m) => m.endpoints.push(endpoint),
        None => mirrors.push(Mirror {
            upstream,
            server,
            endpoints: vec![endpoint],
        }),
    };
    for route in &config.routes {
        let host = match &route.host {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(suffix) => {
                notes.push(format!(
                    "route *.{suffix} is a wildcard (secret host names): run again with --host <label>.{suffix}"
                ));
                continue;
            }
        };
        let gateway = authority(&host, port);
        if let Some(up) = &route.upstream {
            let name = if route.docker_hub_library {
                "docker.io".to_owned()
            } else {
                upstream_name(up)
            };
            add(
                name,
                up.origin(),
                Endpoint {
                    gateway: gateway.clone(),
                    reach: Reach::Direct,
                },
            );
        }
        let reach = match (route.ns, route.path_prefix) {
            (true, prefix) => Reach::Ns { prefix },
            (false, true) => Reach::Prefix,
            (false, false) => continue,
        };
        for (key, up) in &route.upstreams {
            add(
                registry_name(key),
                up.origin(),
                Endpoint {
                    gateway: gateway.clone(),
                    reach,
                },
            );
        }
    }
    (mirrors, notes)
}

/// A TOML basic string, escaped.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Every distinct gateway host, in order: credentials are per gateway, not per upstream.
fn gateways(mirrors: &[Mirror]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for e in mirrors.iter().flat_map(|m| &m.endpoints) {
        if !out.contains(&e.gateway.as_str()) {
            out.push(&e.gateway);
        }
    }
    out
}

/// The `hosts.toml` for one upstream: gateway hosts in order, the upstream itself as `server` (containerd's
/// last resort). This is exactly what `ctr images pull --hosts-dir DIR` reads from `DIR/<upstream>/hosts.toml`.
pub fn hosts_toml(mirror: &Mirror) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "server = {}", toml_str(&mirror.server));
    for e in &mirror.endpoints {
        let (url, override_path) = e.containerd_url(&mirror.upstream);
        let _ = writeln!(out, "\n[host.{}]", toml_str(&url));
        let _ = writeln!(out, "  capabilities = [\"pull\", \"resolve\"]");
        if override_path {
            let _ = writeln!(out, "  override_path = true");
        }
        let _ = writeln!(
            out,
            "  # ca = \"{CONTAINERD_CERTS_D}/{}/mirrorgate-ca.crt\"  # only if the gateway's certificate is not publicly trusted (self-signed default)",
            mirror.upstream
        );
    }
    out
}

/// containerd's `config.toml` part: point the CRI plugin at the hosts.toml folder, and credentials per gateway.
fn cri_registry_toml(mirrors: &[Mirror], user: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "[plugins.\"io.containerd.grpc.v1.cri\".registry]");
    let _ = writeln!(out, "  config_path = {}", toml_str(CONTAINERD_CERTS_D));
    if let Some(user) = user {
        for gw in gateways(mirrors) {
            let _ = writeln!(
                out,
                "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{}.auth]",
                toml_str(gw)
            );
            let _ = writeln!(out, "  username = {}", toml_str(user));
            let _ = writeln!(out, "  password = {}", toml_str(PASSWORD_PLACEHOLDER));
        }
    }
    out
}

/// The header line naming the file the next section belongs in.
fn file_header(path: &str) -> String {
    format!("# ---- {path} ----\n")
}

/// containerd ≥ 1.5: one `hosts.toml` per upstream, then the `config.toml` part for the CRI plugin.
pub fn containerd(mirrors: &[Mirror], user: Option<&str>) -> String {
    let mut out = String::new();
    for m in mirrors {
        out.push_str(&file_header(&format!(
            "{CONTAINERD_CERTS_D}/{}/hosts.toml",
            m.upstream
        )));
        out.push_str(&hosts_toml(m));
        out.push('\n');
    }
    out.push_str(&file_header(
        "/etc/containerd/config.toml (merge; containerd 1.x, config version 2; `ctr --hosts-dir` needs only the files above)",
    ));
    out.push_str(&cri_registry_toml(mirrors, user));
    out
}

/// Writes `DIR/<upstream>/hosts.toml` for every mirror (what `ctr --hosts-dir DIR` and kind mounts read).
fn write_hosts_dir(dir: &Path, mirrors: &[Mirror]) -> Result<()> {
    for m in mirrors {
        let sub = dir.join(&m.upstream);
        fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        let file = sub.join("hosts.toml");
        fs::write(&file, hosts_toml(m)).with_context(|| format!("writing {}", file.display()))?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}

/// k3s / RKE2 `registries.yaml`: gateways first, the upstream last (k3s also falls back to it by itself).
pub fn k3s(mirrors: &[Mirror], user: Option<&str>) -> String {
    let mut out = String::from(
        "# /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/registries.yaml); restart k3s/rke2 to apply\nmirrors:\n",
    );
    for m in mirrors {
        let _ = writeln!(out, "  {}:\n    endpoint:", yaml_str(&m.upstream));
        for e in &m.endpoints {
            let (url, _) = e.containerd_url(&m.upstream);
            let _ = writeln!(out, "      - {}", yaml_str(&url));
        }
        let _ = writeln!(out, "      - {}", yaml_str(&m.server));
    }
    match user {
        Some(user) => {
            out.push_str("configs:\n");
            for gw in gateways(mirrors) {
                let _ = writeln!(out, "  {}:\n    auth:", yaml_str(gw));
                let _ = writeln!(out, "      username: {}", yaml_str(user));
                let _ = writeln!(out, "      password: {}", yaml_str(PASSWORD_PLACEHOLDER));
                out.push_str("    # tls:\n    #   ca_file: /etc/rancher/k3s/mirrorgate-ca.crt  # only if the gateway's certificate is not publicly trusted\n");
            }
        }
        None => out.push_str(
            "# configs:  # credentials and a private CA go here, per gateway host:\n#   <gateway>:\n#     auth: {username: ..., password: ...}\n#     tls: {ca_file: ...}\n",
        ),
    }
    out
}

/// podman / CRI-O `registries.conf`: the upstream stays the location (the fallback), gateways are mirrors.
pub fn registries_conf(mirrors: &[Mirror], user: Option<&str>, client: Client) -> String {
    let mut out = String::from(
        "# /etc/containers/registries.conf.d/50-mirrorgate.conf (a drop-in; or merge into /etc/containers/registries.conf)\n",
    );
    let gws = gateways(mirrors);
    if let Some(user) = user {
        for gw in &gws {
            if client == Client::CriO {
                let _ = writeln!(
                    out,
                    "# credentials: podman login --authfile /etc/crio/auth.json -u {user} {gw}"
                );
            } else {
                let _ = writeln!(out, "# credentials: podman login -u {user} {gw}");
            }
        }
        if client == Client::CriO {
            out.push_str("#   and in /etc/crio/crio.conf: [crio.image] global_auth_file = \"/etc/crio/auth.json\"\n");
        }
    }
    if let Some(gw) = gws.first() {
        let _ = writeln!(
            out,
            "# a private CA for the gateway goes in /etc/containers/certs.d/{gw}/ca.crt"
        );
    }
    for m in mirrors {
        let locations: Vec<String> = m
            .endpoints
            .iter()
            .filter_map(|e| e.location(&m.upstream))
            .collect();
        if locations.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n[[registry]]");
        let _ = writeln!(out, "prefix = {}", toml_str(&m.upstream));
        let _ = writeln!(out, "location = {}", toml_str(&m.upstream));
        if m.server.starts_with("http://") {
            let _ = writeln!(out, "insecure = true");
        }
        for loc in locations {
            let _ = writeln!(out, "\n[[registry.mirror]]");
            let _ = writeln!(out, "location = {}", toml_str(&loc));
        }
    }
    out
}

fn docker_urls(mirrors: &[Mirror]) -> Vec<String> {
    mirrors
        .iter()
        .flat_map(|m| m.endpoints.iter().filter_map(|e| e.docker_url(&m.upstream)))
        .collect()
}

/// Docker's `/etc/docker/daemon.json`: only docker.io can be mirrored (JSON has no comments; notes go to stderr).
pub fn docker(mirrors: &[Mirror]) -> String {
    let doc = serde_json::json!({ "registry-mirrors": docker_urls(mirrors) });
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

/// kind: containerd told to read `hosts.toml` files that the node mounts from `hosts_dir` on the machine
/// running kind. With `include_files`, the files follow as commented sections (without `--hosts-dir`).
pub fn kind(
    mirrors: &[Mirror],
    user: Option<&str>,
    hosts_dir: &str,
    include_files: bool,
) -> String {
    let mut out = String::from("# kind create cluster --config this-file.yaml\n");
    let _ = writeln!(
        out,
        "# the nodes mount {hosts_dir} (one <registry>/hosts.toml each) at {CONTAINERD_CERTS_D}"
    );
    out.push_str(
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\ncontainerdConfigPatches:\n  - |-\n",
    );
    for line in cri_registry_toml(mirrors, user).lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "    {line}");
        }
    }
    out.push_str("nodes:\n  - role: control-plane\n    extraMounts:\n");
    let _ = writeln!(out, "      - hostPath: {}", yaml_str(hosts_dir));
    let _ = writeln!(
        out,
        "        containerPath: {}",
        yaml_str(CONTAINERD_CERTS_D)
    );
    out.push_str("        readOnly: true\n# repeat extraMounts on every node you add\n");
    if include_files {
        for m in mirrors {
            out.push('\n');
            out.push_str(&file_header(&format!(
                "{hosts_dir}/{}/hosts.toml (or: --hosts-dir DIR writes it)",
                m.upstream
            )));
            for line in hosts_toml(m).lines() {
                if line.is_empty() {
                    out.push_str("#\n");
                } else {
                    let _ = writeln!(out, "# {line}");
                }
            }
        }
    }
    out
}

/// Talos machine config patch: `machine.registries.mirrors` (Talos falls back to the upstream unless
/// `skipFallback`) and `machine.registries.config` for credentials.
pub fn talos(mirrors: &[Mirror], user: Option<&str>) -> String {
    let mut out = String::from(
        "# Talos machine config patch: talosctl patch machineconfig --patch @this-file.yaml (or gen config --config-patch)\nmachine:\n  registries:\n    mirrors:\n",
    );
    for m in mirrors {
        let urls: Vec<(String, bool)> = talos_endpoints(m);
        let _ = writeln!(out, "      {}:\n        endpoints:", yaml_str(&m.upstream));
        for (url, _) in &urls {
            let _ = writeln!(out, "          - {}", yaml_str(url));
        }
        if urls.iter().any(|(_, o)| *o) {
            out.push_str("        overridePath: true\n");
        }
    }
    let gws = gateways(mirrors);
    match user {
        Some(user) => {
            out.push_str("    config:\n");
            for gw in gws {
                let _ = writeln!(out, "      {}:\n        auth:", yaml_str(gw));
                let _ = writeln!(out, "          username: {}", yaml_str(user));
                let _ = writeln!(
                    out,
                    "          password: {}",
                    yaml_str(PASSWORD_PLACEHOLDER)
                );
                out.push_str("        # tls:\n        #   ca: <base64 of the gateway CA PEM>  # only if the gateway's certificate is not publicly trusted\n");
            }
        }
        None => {
            out.push_str("    # config:  # per gateway host: auth {username, password}, tls {ca}\n")
        }
    }
    out
}

/// Talos sets `overridePath` per mirror, not per endpoint: when plain and path-prefix gateways mix, only the
/// plain ones are kept (a note says so).
fn talos_endpoints(m: &Mirror) -> Vec<(String, bool)> {
    let all: Vec<(String, bool)> = m
        .endpoints
        .iter()
        .map(|e| e.containerd_url(&m.upstream))
        .collect();
    if all.iter().any(|(_, o)| !o) {
        all.into_iter().filter(|(_, o)| !o).collect()
    } else {
        all
    }
}

/// What the operator must know that the snippet cannot say (stderr).
pub fn client_notes(client: Client, mirrors: &[Mirror], user: Option<&str>) -> Vec<String> {
    let mut notes = Vec::new();
    let gws = gateways(mirrors);
    if user.is_some() && !matches!(client, Client::Docker | Client::Podman | Client::CriO) {
        notes.push(format!(
            "{PASSWORD_PLACEHOLDER} is a placeholder: substitute the password before use (e.g. MIRRORGATE_PASSWORD=... envsubst < file)"
        ));
    }
    match client {
        Client::Containerd => {
            notes.push(
                "restart containerd after changing config.toml; hosts.toml changes apply at once"
                    .into(),
            );
            if user.is_some() {
                notes.push("ctr reads no CRI credentials: use `ctr images pull --hosts-dir DIR --user USER ...`".into());
            }
        }
        Client::Docker => {
            for m in mirrors {
                if m.upstream != "docker.io" {
                    notes.push(format!(
                        "docker's registry-mirrors applies to docker.io only: for {} pull through the gateway's name instead (e.g. `docker pull {}/<repository>`)",
                        m.upstream,
                        m.endpoints.first().and_then(|e| e.location(&m.upstream)).unwrap_or_else(|| "<gateway>".into())
                    ));
                } else if m.endpoints.iter().any(|e| e.reach != Reach::Direct) {
                    notes.push("docker sends no ?ns= and no path prefix to mirrors: only gateways serving docker.io by host alone are listed".into());
                }
            }
            notes.push(
                "Docker sends no credentials to registry mirrors: identify these hosts by network (add their CIDR to a tenant's `cidrs`) or set `anonymous = true` on the route".into(),
            );
            if user.is_some() {
                notes.push(format!(
                    "`docker login {}` credentials are used only for images named after the gateway, never for mirror pulls",
                    gws.first().copied().unwrap_or("<gateway>")
                ));
            }
            notes.push("restart dockerd after changing daemon.json; a private CA goes in /etc/docker/certs.d/<gateway>/ca.crt".into());
        }
        Client::Podman | Client::CriO => {
            for m in mirrors {
                for e in &m.endpoints {
                    if e.location(&m.upstream).is_none() {
                        notes.push(format!(
                            "{} reaches {} only through containerd's ?ns=, which podman/CRI-O never send: set `path_prefix = true` on that route to mirror it",
                            e.gateway, m.upstream
                        ));
                    }
                }
            }
            if user.is_some() {
                notes.push("credentials come from `podman login` (auth.json), shown as comments in the output".into());
            }
        }
        Client::K3s => {
            if mirrors
                .iter()
                .flat_map(|m| &m.endpoints)
                .any(|e| e.reach == Reach::Prefix)
            {
                notes.push("path-prefix endpoints (…/v2/<registry>) need a k3s that uses an endpoint's path as the API root (hosts.toml-based k3s, v1.26+)".into());
            }
        }
        Client::Kind => {}
        Client::Talos => {
            for m in mirrors {
                if m.endpoints.iter().any(|e| e.reach == Reach::Prefix)
                    && m.endpoints.iter().any(|e| e.reach != Reach::Prefix)
                {
                    notes.push(format!(
                        "Talos sets overridePath per mirror: for {} only the gateways serving it by host are listed",
                        m.upstream
                    ));
                }
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(upstream: &str, server: &str, gateway: &str) -> Mirror {
        Mirror {
            upstream: upstream.into(),
            server: server.into(),
            endpoints: vec![Endpoint {
                gateway: gateway.into(),
                reach: Reach::Direct,
            }],
        }
    }

    fn hub() -> Mirror {
        direct(
            "docker.io",
            "https://registry-1.docker.io",
            "docker.example",
        )
    }

    fn toml_table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"))
    }

    fn yaml(text: &str) -> serde_norway::Value {
        serde_norway::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
    }

    /// Splits output at the `# ---- PATH ----` headers into (path, body).
    fn sections(text: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(path) = line
                .strip_prefix("# ---- ")
                .and_then(|l| l.strip_suffix(" ----"))
            {
                out.push((path.to_owned(), String::new()));
            } else if let Some((_, body)) = out.last_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        out
    }

    fn load(text: &str) -> Config {
        mirrorgate_config::parse(Path::new("/etc/mirrorgate/mirrorgate.toml"), text).unwrap_or_else(
            |e| {
                panic!(
                    "{:?}",
                    e.0.iter().map(ToString::to_string).collect::<Vec<_>>()
                )
            },
        )
    }

    const CONFIG: &str = r#"
[server]
https = "127.0.0.1:8443"

[[route]]
host = "docker.example"
upstream = "https://registry-1.docker.io"
docker_hub_library = true

[[route]]
host = "quay.example"
upstream = "https://quay.io"

[[route]]
host = "mirror.example"
path_prefix = true
upstreams = { "gcr.io" = "https://gcr.io", "ghcr.io" = "https://ghcr.io" }

[[route]]
host = "ns.example"
ns = true
upstreams = { "registry.k8s.io" = "https://registry.k8s.io" }

[[route]]
host = "*.secret.example"
upstream = "http://registry.test:5000"
"#;

    // Rule: containerd's hosts.toml names the upstream as server (the fallback) and the gateway as a pull+resolve host.
    #[test]
    fn containerd_hosts_toml_fields() {
        let out = containerd(&[hub()], None);
        let secs = sections(&out);
        assert_eq!(secs[0].0, "/etc/containerd/certs.d/docker.io/hosts.toml");
        let t = toml_table(&secs[0].1);
        assert_eq!(t["server"].as_str(), Some("https://registry-1.docker.io"));
        let host = t["host"]["https://docker.example"].as_table().unwrap();
        let caps: Vec<&str> = host["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(caps, ["pull", "resolve"]);
        assert!(host.get("override_path").is_none());
        assert!(secs[0].1.contains("# ca = "));
        // the config.toml part turns on config_path and carries no credentials without --user
        let cfg = toml_table(&secs[1].1);
        let reg = &cfg["plugins"]["io.containerd.grpc.v1.cri"]["registry"];
        assert_eq!(reg["config_path"].as_str(), Some("/etc/containerd/certs.d"));
        assert!(reg.get("configs").is_none());
    }

    // Rule: a non-443 gateway port is part of the host key; credentials go to the CRI config keyed by host:port,
    // with the placeholder instead of a password.
    #[test]
    fn containerd_port_and_credentials() {
        let m = mirror_for_host("Docker.Example", Some(8443), None).unwrap();
        let out = containerd(&[m], Some("alice"));
        let secs = sections(&out);
        let t = toml_table(&secs[0].1);
        assert!(t["host"]
            .as_table()
            .unwrap()
            .contains_key("https://docker.example:8443"));
        let cfg = toml_table(&secs[1].1);
        let auth = &cfg["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["configs"]
            ["docker.example:8443"]["auth"];
        assert_eq!(auth["username"].as_str(), Some("alice"));
        assert_eq!(auth["password"].as_str(), Some(PASSWORD_PLACEHOLDER));
    }

    // Rule: `--host gw:port` and `--port` both give the port; 443 is left out; docker.io is the default upstream.
    #[test]
    fn host_argument_forms() {
        let m = mirror_for_host("gw.example:5443", None, None).unwrap();
        assert_eq!(m.endpoints[0].gateway, "gw.example:5443");
        assert_eq!(m.upstream, "docker.io");
        assert_eq!(m.server, "https://registry-1.docker.io");
        let m = mirror_for_host("gw.example", Some(443), Some("GCR.io")).unwrap();
        assert_eq!(m.endpoints[0].gateway, "gw.example");
        assert_eq!(
            (m.upstream.as_str(), m.server.as_str()),
            ("gcr.io", "https://gcr.io")
        );
        assert_eq!(
            mirror_for_host("gw", None, Some("registry-1.docker.io"))
                .unwrap()
                .upstream,
            "docker.io"
        );
        assert!(mirror_for_host("https://gw.example", None, None).is_err());
        assert!(mirror_for_host("gw.example/x", None, None).is_err());
        assert!(mirror_for_host("gw.example:http", None, None).is_err());
    }

    // Rule: -c covers every route: library routes are docker.io, path-prefix/ns routes give one entry per
    // `upstreams` key, the https port is carried, wildcard routes are skipped with a note.
    #[test]
    fn mirrors_cover_every_route() {
        let (mirrors, notes) = mirrors_from_config(&load(CONFIG), None);
        let names: Vec<&str> = mirrors.iter().map(|m| m.upstream.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io",
                "quay.io",
                "gcr.io",
                "ghcr.io",
                "registry.k8s.io"
            ]
        );
        assert_eq!(mirrors[0].server, "https://registry-1.docker.io");
        assert_eq!(
            mirrors[0].endpoints,
            [Endpoint {
                gateway: "docker.example:8443".into(),
                reach: Reach::Direct
            }]
        );
        assert_eq!(
            mirrors[2].endpoints[0],
            Endpoint {
                gateway: "mirror.example:8443".into(),
                reach: Reach::Prefix
            }
        );
        assert_eq!(mirrors[4].endpoints[0].reach, Reach::Ns { prefix: false });
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("*.secret.example"), "{notes:?}");

        // --port overrides the listener port (a load balancer on 443 in front)
        let (mirrors, _) = mirrors_from_config(&load(CONFIG), Some(443));
        assert_eq!(mirrors[0].endpoints[0].gateway, "docker.example");
    }

    // Rule: path-prefix routes are reached with the upstream as the API root path (override_path); ns routes by host.
    #[test]
    fn containerd_prefix_and_ns_routes() {
        let (mirrors, _) = mirrors_from_config(&load(CONFIG), None);
        let secs = sections(&containerd(&mirrors, None));
        let gcr = secs
            .iter()
            .find(|(p, _)| p == "/etc/containerd/certs.d/gcr.io/hosts.toml")
            .unwrap();
        let t = toml_table(&gcr.1);
        assert_eq!(t["server"].as_str(), Some("https://gcr.io"));
        let host = &t["host"]["https://mirror.example:8443/v2/gcr.io"];
        assert_eq!(host["override_path"].as_bool(), Some(true));
        let k8s = secs
            .iter()
            .find(|(p, _)| p.contains("/registry.k8s.io/"))
            .unwrap();
        let t = toml_table(&k8s.1);
        assert!(t["host"]
            .as_table()
            .unwrap()
            .contains_key("https://ns.example:8443"));
        assert_eq!(
            secs.len(),
            6,
            "five hosts.toml files and the config.toml part"
        );
    }

    // Rule: several gateways for one upstream become several hosts, in config order.
    #[test]
    fn several_gateways_keep_order() {
        let text = r#"
[server]
https = "127.0.0.1:8443"

[[route]]
host = "a.example"
upstream = "https://registry-1.docker.io"
[[route]]
host = "b.example"
upstream = "https://index.docker.io"
"#;
        let (mirrors, _) = mirrors_from_config(&load(text), Some(443));
        assert_eq!(mirrors.len(), 1);
        let out = hosts_toml(&mirrors[0]);
        let a = out.find("https://a.example").unwrap();
        let b = out.find("https://b.example").unwrap();
        assert!(a < b);
        assert_eq!(toml_table(&out)["host"].as_table().unwrap().len(), 2);
    }

    // Rule: k3s gets the gateway first and the upstream last in `endpoint`, and `configs.<gateway>.auth`.
    #[test]
    fn k3s_registries_yaml() {
        let m = mirror_for_host("docker.example", Some(8443), None).unwrap();
        let y = yaml(&k3s(&[m], Some("alice")));
        let ep: Vec<&str> = y["mirrors"]["docker.io"]["endpoint"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            ep,
            [
                "https://docker.example:8443",
                "https://registry-1.docker.io"
            ]
        );
        let auth = &y["configs"]["docker.example:8443"]["auth"];
        assert_eq!(auth["username"].as_str(), Some("alice"));
        assert_eq!(auth["password"].as_str(), Some(PASSWORD_PLACEHOLDER));
        // without --user there is no configs key at all
        assert!(yaml(&k3s(&[hub()], None)).get("configs").is_none());
    }

    // Rule: registries.conf keeps the upstream as location (fallback) and lists the gateway as a mirror;
    // path-prefix routes use gateway/<upstream>; ns-only routes are left out for podman (they need ?ns=).
    #[test]
    fn podman_registries_conf() {
        let (mirrors, _) = mirrors_from_config(&load(CONFIG), None);
        let out = registries_conf(&mirrors, Some("alice"), Client::Podman);
        assert!(out.contains("# credentials: podman login -u alice docker.example:8443"));
        let t = toml_table(&out);
        let regs = t["registry"].as_array().unwrap();
        let by_prefix = |p: &str| {
            regs.iter()
                .find(|r| r["prefix"].as_str() == Some(p))
                .cloned()
        };
        let hub = by_prefix("docker.io").unwrap();
        assert_eq!(hub["location"].as_str(), Some("docker.io"));
        assert_eq!(
            hub["mirror"][0]["location"].as_str(),
            Some("docker.example:8443")
        );
        assert!(hub.get("insecure").is_none());
        let gcr = by_prefix("gcr.io").unwrap();
        assert_eq!(
            gcr["mirror"][0]["location"].as_str(),
            Some("mirror.example:8443/gcr.io")
        );
        assert!(by_prefix("registry.k8s.io").is_none());
        let notes = client_notes(Client::Podman, &mirrors, None);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("registry.k8s.io") && n.contains("path_prefix")),
            "{notes:?}"
        );
        assert!(!out.contains("password"));
    }

    // Rule: CRI-O gets the same file with its own credentials hint (global_auth_file); an http upstream is insecure.
    #[test]
    fn crio_registries_conf() {
        let m = direct(
            "registry.test:5000",
            "http://registry.test:5000",
            "gw.test:8443",
        );
        let out = registries_conf(&[m], Some("bob"), Client::CriO);
        assert!(out.contains("--authfile /etc/crio/auth.json -u bob gw.test:8443"));
        assert!(out.contains("global_auth_file"));
        let t = toml_table(&out);
        assert_eq!(t["registry"][0]["insecure"].as_bool(), Some(true));
        assert_eq!(
            t["registry"][0]["mirror"][0]["location"].as_str(),
            Some("gw.test:8443")
        );
    }

    // Rule: Docker gets `registry-mirrors` for docker.io gateways only, and is told about the rest and about
    // credentials (CIDR tenants) on stderr.
    #[test]
    fn docker_daemon_json() {
        let (mirrors, _) = mirrors_from_config(&load(CONFIG), None);
        let v: serde_json::Value = serde_json::from_str(&docker(&mirrors)).unwrap();
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["https://docker.example:8443"])
        );
        let notes = client_notes(Client::Docker, &mirrors, Some("alice"));
        assert!(
            notes
                .iter()
                .any(|n| n.contains("docker.io only") && n.contains("quay.io")),
            "{notes:?}"
        );
        assert!(notes.iter().any(|n| n.contains("cidrs")), "{notes:?}");

        let gcr_only = mirror_for_host("gw.example", None, Some("gcr.io")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&docker(&[gcr_only])).unwrap();
        assert_eq!(v["registry-mirrors"], serde_json::json!([]));
    }

    // Rule: kind patches containerd to read config_path and mounts the hosts.toml folder there.
    #[test]
    fn kind_config() {
        let m = mirror_for_host("docker.example", Some(8443), None).unwrap();
        let out = kind(
            std::slice::from_ref(&m),
            Some("alice"),
            "/srv/certs.d",
            true,
        );
        let y = yaml(&out);
        assert_eq!(y["kind"].as_str(), Some("Cluster"));
        assert_eq!(y["apiVersion"].as_str(), Some("kind.x-k8s.io/v1alpha4"));
        let patch = toml_table(y["containerdConfigPatches"][0].as_str().unwrap());
        let reg = &patch["plugins"]["io.containerd.grpc.v1.cri"]["registry"];
        assert_eq!(reg["config_path"].as_str(), Some("/etc/containerd/certs.d"));
        assert_eq!(
            reg["configs"]["docker.example:8443"]["auth"]["username"].as_str(),
            Some("alice")
        );
        let mount = &y["nodes"][0]["extraMounts"][0];
        assert_eq!(mount["hostPath"].as_str(), Some("/srv/certs.d"));
        assert_eq!(
            mount["containerPath"].as_str(),
            Some("/etc/containerd/certs.d")
        );
        // the hosts.toml to mount follows, commented, and uncommented it is the containerd file
        let secs = sections(&out);
        assert_eq!(
            secs[0].0,
            "/srv/certs.d/docker.io/hosts.toml (or: --hosts-dir DIR writes it)"
        );
        let body: String = secs[0]
            .1
            .lines()
            .map(|l| {
                format!(
                    "{}\n",
                    l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l)
                )
            })
            .collect();
        assert_eq!(body, hosts_toml(&m));
    }

    // Rule: Talos gets machine.registries.mirrors (+ overridePath for path-prefix) and config.<gateway>.auth.
    #[test]
    fn talos_patch() {
        let (mirrors, _) = mirrors_from_config(&load(CONFIG), None);
        let y = yaml(&talos(&mirrors, Some("alice")));
        let reg = &y["machine"]["registries"];
        assert_eq!(
            reg["mirrors"]["docker.io"]["endpoints"][0].as_str(),
            Some("https://docker.example:8443")
        );
        assert!(reg["mirrors"]["docker.io"].get("overridePath").is_none());
        assert_eq!(
            reg["mirrors"]["gcr.io"]["endpoints"][0].as_str(),
            Some("https://mirror.example:8443/v2/gcr.io")
        );
        assert_eq!(
            reg["mirrors"]["gcr.io"]["overridePath"].as_bool(),
            Some(true)
        );
        let auth = &reg["config"]["mirror.example:8443"]["auth"];
        assert_eq!(auth["password"].as_str(), Some(PASSWORD_PLACEHOLDER));
    }

    // Rule: no renderer ever prints anything but the placeholder in a password position.
    #[test]
    fn only_placeholder_passwords() {
        let (mirrors, _) = mirrors_from_config(&load(CONFIG), None);
        let outs = [
            containerd(&mirrors, Some("alice")),
            k3s(&mirrors, Some("alice")),
            kind(&mirrors, Some("alice"), KIND_HOSTS_DIR, true),
            talos(&mirrors, Some("alice")),
        ];
        for out in outs {
            for line in out
                .lines()
                .filter(|l| l.trim_start().starts_with("password"))
            {
                assert!(line.contains(PASSWORD_PLACEHOLDER), "{line}");
            }
            assert!(out.contains(PASSWORD_PLACEHOLDER));
        }
    }

    // Rule: --hosts-dir writes DIR/<registry[:port]>/hosts.toml, the layout `ctr --hosts-dir` reads.
    #[test]
    fn hosts_dir_layout() {
        let dir = tempfile::tempdir().unwrap();
        let m = direct(
            "registry.test:5000",
            "http://registry.test:5000",
            "gw.test:8443",
        );
        write_hosts_dir(dir.path(), std::slice::from_ref(&m)).unwrap();
        let written = fs::read_to_string(dir.path().join("registry.test:5000/hosts.toml")).unwrap();
        assert_eq!(written, hosts_toml(&m));
        assert!(toml_table(&written)["host"]
            .as_table()
            .unwrap()
            .contains_key("https://gw.test:8443"));
    }
}
