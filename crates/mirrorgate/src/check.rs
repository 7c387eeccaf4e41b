//! `mirrorgate check`: everything a start would validate, without binding anything.

use std::path::Path;
use std::process::ExitCode;

use mirrorgate_config::{Config, ConfigError, TlsSource};

/// Prints every problem (file:line:col: key: message) and exits 1, or prints a summary and exits 0.
pub fn main(path: &Path) -> ExitCode {
    match validate(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} routes, {} tenants)",
                path.display(),
                config.routes.len(),
                config.tenants.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{}: {} problem(s)", path.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

/// The config plus the checks that need other crates (certificates parse and match their keys, upstream CAs
/// load). Shared with `run` and reload so all three refuse the same configs.
pub fn validate(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let config = mirrorgate_config::load(path).map_err(|e| e.0)?;
    let mut errors = Vec::new();
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
                        errors.push(ConfigError {
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
    if let Err(e) = mirrorgate_auth::Tenants::new(mirrorgate_proxy::tenant_specs(&config)) {
        errors.push(ConfigError {
            key: "tenant".into(),
            ..ConfigError::file_level(path, e.to_string())
        });
    }
    if let Err(e) = mirrorgate_proxy::Runtime::build(std::sync::Arc::new(config.clone())) {
        errors.push(ConfigError::file_level(path, e.to_string()));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}
