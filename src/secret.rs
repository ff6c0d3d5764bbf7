//! The device-token signing secret: from `SIGNALING_SECRET`, or in development generated once
//! and kept (mode 0600) in `DATA_DIR`, so tokens survive restarts without any set-up.

use std::io::Write;
use std::path::Path;

use actors::SigningSecret;

use crate::config::SecretSource;

/// File name of the development secret inside `DATA_DIR`.
pub const SECRET_FILE: &str = "signaling.secret";

/// Resolves the configured secret, creating the development one if needed.
pub fn load(source: &SecretSource, data_dir: &Path) -> std::io::Result<SigningSecret> {
    match source {
        SecretSource::Env(s) => Ok(s.clone()),
        SecretSource::DataDir => load_or_create(&data_dir.join(SECRET_FILE)),
    }
}

fn load_or_create(path: &Path) -> std::io::Result<SigningSecret> {
    let invalid = |e: actors::TokenError| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    };
    match std::fs::read(path) {
        Ok(bytes) => SigningSecret::new(bytes.trim_ascii().to_vec()).map_err(invalid),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let secret = SigningSecret::generate();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            file.write_all(secret.expose())?;
            file.sync_all()?;
            tracing::warn!(path = %path.display(), "generated a development signing secret; set SIGNALING_SECRET in production");
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_secret_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(&SecretSource::DataDir, dir.path()).unwrap();
        let b = load(&SecretSource::DataDir, dir.path()).unwrap();
        assert_eq!(a.expose(), b.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
