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
            errors.push(ConfigError { key: "tls.cert".into(), ..ConfigError::file_level(path, e.to_string()) });
        }
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
