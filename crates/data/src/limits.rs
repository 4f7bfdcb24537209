//! The bounds every reader checks before it allocates, and the one way files are opened:
//! only regular files (a FIFO, socket or device named like a data file would block or
//! never end), never read past a cap.
//!
//! Sizes are computed in `u64`/`u128` with checked arithmetic from the header to the
//! allocation, and compared with these caps first, so a hostile header is an error
//! naming the file, never a wrapped size or an allocation that aborts.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::DataError;

/// Largest decompressed IDX data of one file: EMNIST ByClass, the largest IDX set
/// torchvision knows, has 547 MB of training images.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Largest CIFAR binary file (the real ones are 30 MB and 150 MB).
pub const MAX_CIFAR_FILE_BYTES: u64 = 1 << 30;

/// Largest image file an image folder or `predict` reads.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Largest side of an image, decoded, resized or written (PNG previews and grids).
pub const MAX_IMAGE_SIDE: u64 = 1 << 16;

/// Largest number of pixels of one image, decoded, resized or written: 128 megapixels
/// (a 4000x3000 photo is 12, a phone's 12000x9000 one 108).
pub const MAX_IMAGE_PIXELS: u64 = 1 << 27;

/// Most memory the image decoder may allocate for one image.
pub const MAX_DECODE_ALLOC: u64 = 1 << 30;

/// Largest split of an image folder, in decoded u8 bytes (all of it is kept in memory).
pub const MAX_SPLIT_BYTES: u64 = 16 << 30;

/// Opens `path` for reading if it is a regular file (following symlinks), checking the
/// metadata before opening: opening a FIFO would block until a writer comes.
pub fn open_regular(path: &Path) -> Result<(File, u64), DataError> {
    let meta =
        std::fs::metadata(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(DataError::file(path, not_regular(&meta)));
    }
    let f = File::open(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    // The path may have been replaced between the two calls: check what was opened.
    let meta = f
        .metadata()
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(DataError::file(path, not_regular(&meta)));
    }
    Ok((f, meta.len()))
}

/// Whether something other than a folder is at `path` (following symlinks): a data file
/// to read, or to refuse by name if it is not a regular file.
pub fn is_present(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_dir())
}

/// What a non-regular file is, for the error.
pub(crate) fn not_regular(meta: &std::fs::Metadata) -> String {
    let what = if meta.is_dir() {
        "a folder"
    } else {
        "a FIFO, socket or device"
    };
    format!("not a regular file ({what}): only regular files are read")
}

/// Reads a whole regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, DataError> {
    let (f, len) = open_regular(path)?;
    if len > max {
        return Err(DataError::file(
            path,
            format!("{len} bytes is larger than the {max}-byte limit for {what}"),
        ));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(len as usize)
        .map_err(|e| DataError::file(path, format!("cannot allocate {len} bytes: {e}")))?;
    // The file may grow while it is read: never read past the cap.
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    if out.len() as u64 > max {
        return Err(DataError::file(
            path,
            format!("larger than the {max}-byte limit for {what}"),
        ));
    }
    Ok(out)
}

/// Checks an image size against [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_PIXELS`]; `what`
/// says which image in the error ("--resize 64 gives ..."), which gives the size as
/// height x width, as torchvision's options and vramlab's shapes do.
pub fn check_image_size(width: u64, height: u64, what: &str) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("{what} {height}x{width} pixels: a side is zero"));
    }
    let pixels = width as u128 * height as u128;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || pixels > MAX_IMAGE_PIXELS as u128 {
        return Err(format!(
            "{what} {height}x{width} pixels (height x width), larger than the limit of {MAX_IMAGE_SIDE} pixels a side and {} megapixels",
            MAX_IMAGE_PIXELS >> 20
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sizes_are_checked_without_overflow() {
        assert!(check_image_size(4000, 3000, "x").is_ok());
        let e = check_image_size(u32::MAX as u64, u32::MAX as u64, "the image is").unwrap_err();
        assert!(
            e.starts_with(
                "the image is 4294967295x4294967295 pixels (height x width), larger than the limit"
            ),
            "{e}"
        );
        assert!(check_image_size(0, 5, "x").unwrap_err().contains("zero"));
        assert!(check_image_size(1 << 16, 1 << 12, "x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_opening_it() {
        let dir = std::env::temp_dir().join(format!("vramlab-limits-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("1.png");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let e = read_regular(&fifo, 100, "an image")
                .unwrap_err()
                .to_string();
            assert!(e.ends_with("1.png: not a regular file (a FIFO, socket or device): only regular files are read"), "{e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
