use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct SocketOptions {
    /// Group allowed to connect besides root (the socket is 0660).
    pub group: Option<u32>,
}

/// Binds the service socket: 0660, root-owned (optionally group-owned). A socket file
/// left by a crash is replaced; a live one, or anything that is not a socket, is not.
pub fn bind_socket(path: &Path, options: &SocketOptions) -> Result<UnixListener> {
    let sock_err = |what, source| Error::Socket {
        what,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(|e| sock_err("create directory for", e))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(Error::AlreadyServing(path.to_owned())),
            Err(_) => {
                warn!(path = %path.display(), "replacing stale socket left by an earlier run");
                fs::remove_file(path).map_err(|e| sock_err("remove stale socket", e))?;
            }
        },
        Ok(_) => return Err(Error::NotASocket(path.to_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(sock_err("inspect", err)),
    }
    let listener = UnixListener::bind(path).map_err(|e| sock_err("bind", e))?;
    // Bound first, then tightened: the window is closed by the directory's 0711 and
    // the fact that nothing is accepted before this function returns.
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(|e| sock_err("chmod", e))?;
    if let Some(gid) = options.group {
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))
            .map_err(|e| sock_err("chown", e.into()))?;
    }
    info!(path = %path.display(), "listening");
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/rl.sock");
        let listener = bind_socket(&path, &SocketOptions::default()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(matches!(
            bind_socket(&path, &SocketOptions::default()),
            Err(Error::AlreadyServing(_))
        ));
        drop(listener);
        // The file stays behind, as after a crash.
        assert!(path.exists());
        let _again = bind_socket(&path, &SocketOptions::default()).unwrap();

        let file = dir.path().join("not-a-socket");
        fs::write(&file, b"precious").unwrap();
        assert!(matches!(
            bind_socket(&file, &SocketOptions::default()),
            Err(Error::NotASocket(_))
        ));
        assert_eq!(fs::read(&file).unwrap(), b"precious");
    }
}
