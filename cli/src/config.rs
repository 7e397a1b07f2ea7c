//! Where `orchctl` finds the manager and its credentials: flags, then
//! environment variables, then the client configuration file that
//! `orchctl dev` and a manager's first start write.
//!
//! The file (`$ORCH_CONFIG`, else `$XDG_CONFIG_HOME/orch/config.toml`, else
//! `~/.config/orch/config.toml`, mode 0600):
//!
//! ```toml
//! manager = "https://127.0.0.1:7070"
//! token = "orch_..."
//! ca = """-----BEGIN CERTIFICATE-----
//! ...
//! -----END CERTIFICATE-----"""
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CliError;

/// The manager's URL when nothing names one.
pub const DEFAULT_MANAGER: &str = "https://127.0.0.1:7070";

/// The client configuration file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The manager's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// A client token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The cluster's CA certificate, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// Where the configuration file is.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORCH_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("orch").join("config.toml"))
}

/// Reads the configuration file; a missing one is empty.
///
/// # Errors
/// If it cannot be read or is not valid TOML of this shape (the error
/// names the line and column).
pub fn load(path: &Path) -> Result<FileConfig, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(CliError(format!("{}: {e}", path.display()))),
    };
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{column}")
            })
            .unwrap_or_default();
        CliError(format!("{}{at}: {}", path.display(), e.message()))
    })
}

/// Writes `config` to `path` (mode 0600), creating its directory.
///
/// # Errors
/// If the file cannot be written.
pub fn save(path: &Path, config: &FileConfig) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError(format!("writing {}: {e}", path.display())))?;
    }
    let text = toml::to_string(config).map_err(|e| CliError(e.to_string()))?;
    // The manager's own writer of private files: replaced whole, mode 0600.
    orch_manager::auth::ca::write_private(
        path,
        &format!(
            "# orch client configuration, written by orchctl. It holds an admin token: keep it private.\n{text}"
        ),
    )
    .map_err(|e| CliError(format!("writing {e}")))
}

/// The manager a client command talks to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The manager's URL.
    pub url: String,
    /// The CA to verify it against, PEM; `None` with `--insecure`.
    pub ca: Option<String>,
    /// The client token.
    pub token: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// What the command line and the environment said (clap reads both).
#[derive(Debug, Clone, Default)]
pub struct Given {
    /// `--manager` / `ORCH_MANAGER`.
    pub manager: Option<String>,
    /// `--ca` / `ORCH_CA`: a PEM file.
    pub ca: Option<PathBuf>,
    /// `--token` / `ORCH_TOKEN`.
    pub token: Option<String>,
    /// `--insecure`.
    pub insecure: bool,
}

/// Resolves the target: what was given wins over the file.
///
/// # Errors
/// If the file or the CA cannot be read, or the URL's scheme does not
/// match `--insecure`.
pub fn resolve(given: &Given, file: &FileConfig) -> Result<Target, CliError> {
    let url = given
        .manager
        .clone()
        .or_else(|| file.manager.clone())
        .unwrap_or_else(|| DEFAULT_MANAGER.to_owned());
    let token = given.token.clone().or_else(|| file.token.clone());
    if given.insecure {
        let url = match url.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => url,
        };
        return Ok(Target {
            url,
            ca: None,
            token,
        });
    }
    if url.starts_with("http://") {
        return Err(CliError(format!(
            "{url} is plaintext: use https://, or --insecure to talk to a manager started with --insecure"
        )));
    }
    let ca = match &given.ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CliError(format!("--ca {}: {e}", path.display())))?,
        ),
        None => file.ca.clone(),
    };
    Ok(Target { url, ca, token })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = FileConfig {
            manager: Some("https://m:7070".into()),
            token: Some("orch_file".into()),
            ca: Some("PEM".into()),
        };
        let t = resolve(&Given::default(), &file).unwrap();
        assert_eq!(
            (t.url.as_str(), t.token.as_deref(), t.ca.as_deref()),
            ("https://m:7070", Some("orch_file"), Some("PEM"))
        );
        let given = Given {
            manager: Some("https://other:1".into()),
            token: Some("orch_flag".into()),
            ..Given::default()
        };
        let t = resolve(&given, &file).unwrap();
        assert_eq!(
            (t.url.as_str(), t.token.as_deref()),
            ("https://other:1", Some("orch_flag"))
        );
        let t = resolve(&Given::default(), &FileConfig::default()).unwrap();
        assert_eq!(t.url, DEFAULT_MANAGER);
    }

    #[test]
    fn plaintext_needs_insecure() {
        let given = Given {
            manager: Some("http://m:7070".into()),
            ..Given::default()
        };
        let e = resolve(&given, &FileConfig::default()).unwrap_err();
        assert!(e.0.contains("--insecure"), "{}", e.0);
        let insecure = Given {
            insecure: true,
            ..given
        };
        let t = resolve(&insecure, &FileConfig::default()).unwrap();
        assert_eq!((t.url.as_str(), t.ca), ("http://m:7070", None));
    }

    #[test]
    fn the_file_round_trips_privately_and_a_bad_one_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch/config.toml");
        let config = FileConfig {
            manager: Some("https://127.0.0.1:7070".into()),
            token: Some("orch_x".into()),
            ca: Some("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n".into()),
        };
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), config);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "manager = \"x\"\ntokn = \"y\"\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.0.contains("config.toml:2:1"), "{}", e.0);
        assert!(load(&dir.path().join("none.toml")).unwrap() == FileConfig::default());
    }
}
