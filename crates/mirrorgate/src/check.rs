//! `mirrorgate check`: everything a start would validate, without binding anything (the storage folder is
//! probed with a temp file that is removed again).

use std::path::Path;
use std::process::ExitCode;

use mirrorgate_config::{Config, ConfigError, TlsSource};

/// Prints every problem (file:line:col: key: message) and exits 1, or prints a summary and exits 0. Unlike
/// `run`, `check` also fails on [`Checked::warnings`]: it is what an operator runs before deploying.
pub fn main(path: &Path) -> ExitCode {
    match validate_for_start(path) {
        Ok(checked) if checked.warnings.is_empty() => {
            println!(
                "{}: ok ({} routes, {} tenants)",
                path.display(),
                checked.config.routes.len(),
                checked.config.tenants.len()
            );
            ExitCode::SUCCESS
        }
        Ok(Checked {
            warnings: errors, ..
        })
        | Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{}: {} problem(s)", path.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

/// A config that can be served, and what is odd about it without stopping it from serving.
pub struct Checked {
    pub config: Config,
    /// The serving state compiled from it (routes, upstream clients): built once, used by `run` and reload.
    pub runtime: mirrorgate_proxy::Runtime,
    /// The tenant rules compiled from it, handed to the authenticator on reload.
    pub tenants: mirrorgate_auth::Tenants,
    /// Problems `run` and reload only log: a tenant user missing from htpasswd (the htpasswd watcher accepts
    /// removing a user at runtime, so a restart after that must not fail).
    pub warnings: Vec<ConfigError>,
}

/// [`validate`], then whether the state folder takes writes: what `check` and a start ask, but not a reload
/// (see [`crate::storage_check`]).
pub fn validate_for_start(path: &Path) -> Result<Checked, Vec<ConfigError>> {
    let checked = validate(path)?;
    crate::storage_check::storage_writable(path, &checked.config).map_err(|e| vec![e])?;
    Ok(checked)
}

/// The config plus the checks that need other crates (certificates parse and match their keys, upstream CAs
/// load). Shared with `run` and reload so all three refuse the same configs.
pub fn validate(path: &Path) -> Result<Checked, Vec<ConfigError>> {
    let config = mirrorgate_config::load(path).map_err(|e| e.0)?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if let TlsSource::Files { cert, key } = &config.tls.source {
        if let Err(e) = mirrorgate_tls::load_pem_pair(cert, key) {
            errors.push(ConfigError {
                key: "tls.cert".into(),
                ..ConfigError::file_level(path, e.to_string())
            });
        }
    }
    if let Some(htpasswd) = &config.auth.htpasswd {
        match mirrorgate_auth::Htpasswd::load(htpasswd) {
            Ok(users) => {
                for tenant in &config.tenants {
                    for user in tenant.users.iter().filter(|u| !users.contains(u)) {
                        warnings.push(ConfigError {
                            key: "tenant.users".into(),
                            ..ConfigError::file_level(
                                path,
                                format!(
                                    "tenant `{}` lists user `{user}`, who is not in {}",
                                    tenant.name,
                                    htpasswd.display()
                                ),
                            )
                        });
                    }
                }
            }
            Err(e) => errors.push(ConfigError {
                key: "auth.htpasswd".into(),
                ..ConfigError::file_level(path, e.to_string())
            }),
        }
    } else if config.tenants.iter().any(|t| !t.users.is_empty()) {
        errors.push(ConfigError {
            key: "tenant.users".into(),
            ..ConfigError::file_level(
                path,
                "tenants list users but [auth] has no htpasswd file to find them in",
            )
        });
    }
    let tenants = mirrorgate_auth::Tenants::new(mirrorgate_proxy::tenant_specs(&config))
        .map_err(|e| {
            errors.push(ConfigError {
                key: "tenant".into(),
                ..ConfigError::file_level(path, e.to_string())
            })
        })
        .ok();
    match mirrorgate_proxy::Runtime::build(std::sync::Arc::new(config.clone())) {
        Ok(runtime) if errors.is_empty() => Ok(Checked {
            config,
            runtime,
            tenants: tenants.unwrap_or_default(),
            warnings,
        }),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(ConfigError::file_level(path, e.to_string()));
            Err(errors)
        }
    }
}
