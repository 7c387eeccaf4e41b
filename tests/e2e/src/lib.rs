//! mirrorgate-e2e: the harness that lets every end-to-end test read as a story.
//!
//! mirrorgate is only worth something if real clients (skopeo, podman, containerd, the Docker engine) pull real images through it
//! from a real registry (Debian's `docker-registry`, i.e. distribution 2.8). Unit tests cannot show that, so the
//! scenarios under `tests/` start those programs as processes on loopback and drive them. This crate holds the
//! pieces they share, so a scenario says *what* happens ("push an image to registry A, pull it through the
//! gateway, the digests match") and not *how* a process is started and waited for.
//!
//! The scenarios run through `tests/run`, which installs the real parts and runs `cargo test` inside a private
//! mount namespace where `/etc/hosts` maps `docker.test`, `gcr.test`, … to 127.0.0.1 (`tests/hosts`). A missing
//! program or host mapping is a loud failure, never a skip: a green run must mean the scenario ran.
//!
//! Helpers return `anyhow::Result` with context naming what failed; scenarios unwrap them, so a failure is
//! a panic with the whole chain, and every [`Proc`] prints its log tail when the test panics. [`Stage`], the
//! set-up most gateway scenarios share, panics itself: it only ever runs inside a scenario.

mod ca;
mod containerd;
mod docker;
mod env;
mod gateway;
mod http;
mod oci;
mod podman;
mod proc;
mod ratelimit;
mod registry;
mod skopeo;
pub mod slapd;
mod squid;
mod stage;
mod token;

pub use ca::{Leaf, TestCa};
pub use containerd::Containerd;
pub use docker::Docker;
pub use env::{bin_path, require, require_hosts, runtime, TestDir};
pub use gateway::{Gateway, Ports};
pub use http::{HttpCheck, RawRequest, RawResponse};
pub use oci::{Descriptor, OciImage};
pub use podman::Podman;
pub use proc::{free_port, wait_for_http, wait_for_port, Proc};
pub use ratelimit::RateLimitFront;
pub use registry::{push, Pushed, Registry, RegistryMode};
pub use skopeo::{layer_digests_in_layout, Outcome, Skopeo};
pub use slapd::Slapd;
pub use squid::Squid;
pub use stage::{
    endpoints, kv, metric, office_team_readers, rewrite, route, route_lines, sha256, Stage,
    GENEROUS_LIMITS, TEST_HOSTS,
};
pub use token::{TokenIssuer, TokenIssuerOptions};

pub mod htpasswd;
mod pebble;
pub use pebble::{KeptConnection, Pebble, RootClient, Served};

/// A TOML basic string (quotes and backslashes escaped), for the client configs the harness writes.
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
