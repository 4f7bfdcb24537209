//! Writing files so that a crash never leaves a torn one: a temporary file in the same
//! folder, then a rename over the real name.

use std::path::{Path, PathBuf};

/// The folder a file is written in (`.` for a bare name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.NAME.tmp-`: the start of the temporary files writes to `path` go through.
pub fn temp_prefix(path: &Path) -> std::io::Result<String> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "it names no file"))?;
    Ok(format!(".{}.tmp-", name.to_string_lossy()))
}

/// The temporary file this process writes `path` through, in the same folder.
pub fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    Ok(folder_of(path).join(format!("{}{}", temp_prefix(path)?, std::process::id())))
}

/// Whether process `pid` is known to be gone (Linux, where /proc tells; elsewhere a
/// process is never assumed gone, so nothing of a live one is ever removed).
pub fn process_gone(pid: u32) -> bool {
    cfg!(target_os = "linux")
        && pid != std::process::id()
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// The entries of `dir` named `{prefix}{pid}` whose process is gone: temporary files or
/// folders left by a write that was killed (SIGKILL, a power cut). The folder is listed
/// once; nothing else in it is looked at.
pub fn stale_entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(process_gone)
        })
        .map(|e| e.path())
        .collect()
}

/// Removes the temporary files of writes to `path` whose process is gone.
pub fn remove_stale_temps(path: &Path) {
    if let Ok(prefix) = temp_prefix(path) {
        for p in stale_entries(folder_of(path), &prefix) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The file a write to `path` replaces: `path` itself when nothing is there or a regular
/// file is, the regular file a symbolic link leads to (the link is kept). A folder, a
/// device, a FIFO or a socket is refused: the rename of an atomic write would replace
/// the node itself (`--checkpoint /dev/null` run as root replaced /dev/null with a file).
pub fn write_target(path: &Path) -> std::io::Result<PathBuf> {
    use std::io::{Error, ErrorKind};
    let link = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(e),
        Ok(m) => m,
    };
    let target = if link.file_type().is_symlink() {
        std::fs::canonicalize(path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::new(ErrorKind::NotFound, "it is a symbolic link to nothing")
            } else {
                e
            }
        })?
    } else {
        path.to_path_buf()
    };
    let meta = std::fs::metadata(&target)?;
    if meta.is_dir() {
        return Err(Error::new(ErrorKind::IsADirectory, "it is a folder"));
    }
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO or socket): only a regular file is replaced",
        ));
    }
    Ok(target)
}

/// The file a write to `path` replaces ([`write_target`]) and the temporary file it
/// goes through, once the temporary files of killed writes to it are gone.
fn prepare_write(path: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let target = write_target(path)?;
    remove_stale_temps(&target);
    let tmp = temp_path(&target)?;
    Ok((target, tmp))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced to
/// disk, then renamed over `path` (or the file its link leads to); on error the
/// temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let (target, tmp) = prepare_write(path)?;
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &target));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Checks, before long work, that [`write_atomic`] could write `path`: not a folder,
/// and its folder takes a new file (one is created and removed).
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let (_, tmp) = prepare_write(path)?;
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_device_fifo_or_link_is_never_replaced_by_the_rename() {
        let dir = std::env::temp_dir().join(format!("vramlab-io-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO stands for /dev/null: a write must not turn it into a regular file.
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = write_atomic(&fifo, b"x").unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
            assert!(check_writable(&fifo).is_err());
            use std::os::unix::fs::FileTypeExt;
            let ft = std::fs::symlink_metadata(&fifo).unwrap().file_type();
            assert!(ft.is_fifo(), "the FIFO was replaced: {ft:?}");
        }
        let e = check_writable(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // A link to a regular file writes that file and stays a link.
        let real = dir.join("real.bin");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        // A link to nothing is refused by name.
        let dangling = dir.join("dangling.bin");
        std::os::unix::fs::symlink(dir.join("missing"), &dangling).unwrap();
        let e = write_atomic(&dangling, b"x").unwrap_err().to_string();
        assert!(e.contains("symbolic link to nothing"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn writes_whole_files_and_leaves_nothing_on_failure() {
        let dir = std::env::temp_dir().join(format!("vramlab-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bin");
        write_atomic(&f, b"hello").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"hello");
        assert!(write_atomic(&dir.join("missing/b.bin"), b"x").is_err());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(check_writable(&dir.join("c.bin")).is_ok());
        assert!(check_writable(&dir.join("missing/c.bin")).is_err());
        assert!(check_writable(&dir).is_err());
        assert!(write_atomic(&dir, b"x").is_err());
        let names_after = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(names_after, 1);
        // A killed write's temporary file (its process gone) is removed by the next
        // write; one of a live process is left alone.
        let dead = dir.join(format!(".a.bin.tmp-{}", u32::MAX - 1));
        let live = dir.join(".a.bin.tmp-1"); // init never ends
        std::fs::write(&dead, b"torn").unwrap();
        std::fs::write(&live, b"busy").unwrap();
        write_atomic(&f, b"again").unwrap();
        assert!(!dead.exists());
        assert!(live.exists() || cfg!(not(target_os = "linux")));
        std::fs::remove_file(&live).ok();
        std::fs::remove_dir_all(&dir).ok();
    }
}
