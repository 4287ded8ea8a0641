//! The start-up rule for the admin password: on a loopback admin address with no
//! password set, generate one into a file only the owner can read; on any other address,
//! refuse to start until the operator sets one.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::auth::{generate_password, hash_password};
use crate::error::{AdminError, AdminResult};
use crate::model::AdminAuth;

/// Name of the file, in the data directory, that holds a generated admin password.
pub const PASSWORD_FILE: &str = "admin-password";

/// Call at start before serving the admin on `admin_addr`.
///
/// - A password is already set: `Ok(None)`.
/// - None is set and the address is loopback: a random password is generated, its
///   argon2 hash stored, the password written to `<data_dir>/admin-password` (mode 0600
///   on Unix); returns that path for supernode to print (never the password itself).
/// - None is set and the address is not loopback: `Err(Conflict)` with a message telling
///   the operator to run `supernode admin set-password`.
pub fn ensure_admin_password(
    auth: &dyn AdminAuth,
    admin_addr: SocketAddr,
    data_dir: &Path,
) -> AdminResult<Option<PathBuf>> {
    if auth.password_hash()?.is_some() {
        return Ok(None);
    }
    if !admin_addr.ip().is_loopback() {
        return Err(AdminError::Conflict(format!(
            "the admin would listen on {admin_addr}, which is not loopback, and no admin password is set: \
             run `supernode admin set-password` first (or bind --admin to 127.0.0.1)"
        )));
    }
    let password = generate_password();
    let path = data_dir.join(PASSWORD_FILE);
    write_private(&path, password.as_bytes())
        .map_err(|e| AdminError::Internal(format!("writing {}: {e}", path.display())))?;
    auth.set_password_hash(&hash_password(&password)?)?;
    Ok(Some(path))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(data)?;
    f.write_all(b"\n")?;
    f.sync_all()
}
