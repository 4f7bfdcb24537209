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

/// The temporary file a write to `path` will go through, once `path` is known not to be
/// a folder and the temporary files of killed writes to it are gone.
fn prepare_write(path: &Path) -> std::io::Result<PathBuf> {
    if path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a folder",
        ));
    }
    remove_stale_temps(path);
    temp_path(path)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced to
/// disk, then renamed over `path`; on error the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = prepare_write(path)?;
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
    let tmp = prepare_write(path)?;
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
