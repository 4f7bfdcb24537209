//! Writing files so that a crash never leaves a torn one: a temporary file in the same
//! folder, then a rename over the real name.

use std::path::Path;

/// The temporary file a write to `path` goes through, in the same folder.
fn temp_for(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "it names no file")
    })?;
    Ok(dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced to
/// disk, then renamed over `path`; on error the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a folder",
        ));
    }
    let tmp = temp_for(path)?;
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Checks, before long work, that [`write_atomic`] could write `path`: not a folder,
/// and its folder takes a new file (one is created and removed).
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a folder",
        ));
    }
    let tmp = temp_for(path)?;
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::remove_dir_all(&dir).ok();
    }
}
