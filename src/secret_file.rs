//! The JWT signing secret kept in the data directory (`server.data_dir`/`jwt_secret`) when
//! `auth.jwt_secret` is empty, so that a restart does not sign everyone out.
//!
//! The server makes it once: 32 random bytes written as 64 lowercase hex digits and a newline,
//! in a file created with mode 0600 from its first byte (a temporary file in the same
//! directory, then linked to its name: another process never sees it half written, and two
//! servers starting at once end up with the same secret). Later starts, and `callrelay token`,
//! read it. The key that signs is the hex text itself, so setting `auth.jwt_secret` to the
//! file's contents (without the newline) keeps every issued token valid.
//!
//! A file that is there but unusable stops start-up instead of being replaced: readable by
//! group or others (the secret may have leaked, and whoever holds it can sign an admin token;
//! only the operator knows whether to `chmod 600` it or delete it and sign everyone out), or
//! empty, truncated, not hex, not a regular file, unreadable (a disk or restore problem, an
//! edit by hand: regenerating would silently sign everyone out and destroy what the operator
//! needs to see). Every message names the file and what to do. The secret is never logged
//! nor shown in an error.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "jwt_secret";
/// Random bytes in a generated secret.
const SECRET_BYTES: usize = 32;

/// Why the secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error(
        "the data directory {path} cannot be created: {source} (set server.data_dir to a \
         writable directory, or set auth.jwt_secret)"
    )]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "cannot write the JWT signing secret to {path}: {source} (set server.data_dir to a \
         writable directory, or set auth.jwt_secret)"
    )]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} does not exist: the server creates it on its first start with an empty \
         auth.jwt_secret. Start it once with the same server.data_dir (relative paths are from \
         the working directory), or set auth.jwt_secret for both the server and this command"
    )]
    Missing { path: PathBuf },
    #[error(
        "cannot read the JWT signing secret {path}: {source} (refusing to replace it: that \
         would sign every user out)"
    )]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the JWT signing secret {path} has mode {mode:04o}: group or others may read it, and \
         whoever has it can sign any token. If nobody else can have read it, `chmod 600 {path}`; \
         otherwise delete it (a new one is made at the next start, and everyone signs in again)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "the JWT signing secret {path} is {what}, not what callrelay writes (64 hex digits): \
         refusing to replace it, which would sign every user out. Restore it, or delete it to \
         have a new one made at the next start (everyone signs in again)"
    )]
    Corrupt { path: PathBuf, what: &'static str },
}

/// Where the secret lives for this data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The secret in `data_dir`, made (with the directory, mode 0700 if new) when there is none.
/// The second value says whether it was made now.
pub fn load_or_create(data_dir: &Path) -> Result<(Vec<u8>, bool), SecretFileError> {
    let file = path(data_dir);
    if let Some(secret) = read(&file)? {
        return Ok((secret, false));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| SecretFileError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
    match create(data_dir, &file)? {
        Created::Now(secret) => Ok((secret, true)),
        // Another process made it between our read and our link: use theirs.
        Created::ByAnother => read(&file)?
            .map(|secret| (secret, false))
            .ok_or(SecretFileError::Missing { path: file }),
    }
}

/// The secret in `data_dir`, which must exist (for `callrelay token`, which never makes one:
/// a token signed with a secret no server has would never verify).
pub fn load(data_dir: &Path) -> Result<Vec<u8>, SecretFileError> {
    let file = path(data_dir);
    read(&file)?.ok_or(SecretFileError::Missing { path: file })
}

/// `None` when the file does not exist; an error when it exists but cannot be used.
fn read(file: &Path) -> Result<Option<Vec<u8>>, SecretFileError> {
    let meta = match fs::metadata(file) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SecretFileError::Read {
                path: file.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(SecretFileError::Corrupt {
            path: file.to_path_buf(),
            what: "not a regular file",
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Permissions {
            path: file.to_path_buf(),
            mode,
        });
    }
    let text = fs::read(file).map_err(|source| SecretFileError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    parse(&text)
        .map(|secret| Some(secret.to_vec()))
        .map_err(|what| SecretFileError::Corrupt {
            path: file.to_path_buf(),
            what,
        })
}

/// The key in a file's contents: 64 lowercase hex digits, then at most one newline.
fn parse(text: &[u8]) -> Result<&[u8], &'static str> {
    let key = text.strip_suffix(b"\n").unwrap_or(text);
    if key.is_empty() {
        return Err("empty");
    }
    if !key.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("not lowercase hex digits");
    }
    if key.len() != SECRET_BYTES * 2 {
        return Err("of the wrong length");
    }
    Ok(key)
}

enum Created {
    Now(Vec<u8>),
    ByAnother,
}

/// Writes a new secret to a temporary file (mode 0600 from its creation), flushes it to disk,
/// then links it to `file`, which fails if `file` exists: never a moment with a partial or
/// readable secret under its name, never one replaced.
fn create(data_dir: &Path, file: &Path) -> Result<Created, SecretFileError> {
    use rand::RngCore;
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut contents = hex::encode(bytes).into_bytes();
    contents.push(b'\n');

    let tmp = data_dir.join(format!(
        ".{FILE_NAME}.tmp-{}-{}",
        std::process::id(),
        hex::encode(&bytes[..4])
    ));
    let write_err = |source| SecretFileError::Write {
        path: file.to_path_buf(),
        source,
    };
    let written = (|| {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only take bits away; make sure of 0600 whatever it is.
        out.set_permissions(fs::Permissions::from_mode(0o600))?;
        out.write_all(&contents)?;
        out.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(source));
    }
    let linked = fs::hard_link(&tmp, file);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name survives a power cut once the directory is on disk too.
            if let Ok(dir) = fs::File::open(data_dir) {
                let _ = dir.sync_all();
            }
            contents.pop();
            Ok(Created::Now(contents))
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(Created::ByAnother),
        Err(source) => Err(write_err(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(file: &Path) -> u32 {
        fs::metadata(file).unwrap().mode() & 0o7777
    }

    #[test]
    fn made_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let (secret, made) = load_or_create(&data).unwrap();
        assert!(made);
        assert_eq!(secret.len(), 64);
        assert_eq!(mode(&path(&data)), 0o600);
        assert_eq!(mode(&data), 0o700, "a new data directory is private");
        assert_eq!(
            fs::read(path(&data)).unwrap(),
            [&secret[..], b"\n"].concat()
        );

        let (again, made) = load_or_create(&data).unwrap();
        assert!(!made);
        assert_eq!(again, secret);
        assert_eq!(load(&data).unwrap(), secret);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1);
    }

    #[test]
    fn token_command_never_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, SecretFileError::Missing { .. }), "{err}");
        assert!(!path(dir.path()).exists());
    }

    #[test]
    fn a_file_others_may_read_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = load_or_create(dir.path()).unwrap();
        let file = path(dir.path());
        for bad in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&file, fs::Permissions::from_mode(bad)).unwrap();
            let err = load_or_create(dir.path()).unwrap_err();
            assert!(
                matches!(err, SecretFileError::Permissions { mode, .. } if mode == bad),
                "{err}"
            );
            let shown = err.to_string();
            assert!(shown.contains(&format!("{bad:04o}")), "{shown}");
            assert!(shown.contains("chmod 600"), "{shown}");
            assert!(!shown.contains(std::str::from_utf8(&secret).unwrap()));
        }
        // 0400 is fine (read-only for its owner).
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap().0, secret);
    }

    #[test]
    fn an_unusable_file_is_refused_not_replaced() {
        for (contents, what) in [
            (&b""[..], "empty"),
            (b"\n", "empty"),
            (b"0123abcd\n", "of the wrong length"),
            (&[b'A'; 64][..], "not lowercase hex digits"),
            (b"secret with spaces", "not lowercase hex digits"),
            (&[b'a'; 65][..], "of the wrong length"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let file = path(dir.path());
            fs::write(&file, contents).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create(dir.path()).unwrap_err();
            assert!(
                matches!(&err, SecretFileError::Corrupt { what: w, .. } if *w == what),
                "{contents:?}: {err}"
            );
            assert_eq!(fs::read(&file).unwrap(), contents, "left as it was");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(path(dir.path())).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn without_newline_is_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let key = "0f".repeat(32);
        let file = path(dir.path());
        fs::write(&file, &key).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), key.as_bytes());
    }

    #[test]
    fn racing_makers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create(&data).unwrap().0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1);
    }
}
