//! Image folders, as torchvision's `ImageFolder` reads them: one subfolder per class
//! (sorted names are the classes), PNG, JPEG, BMP, GIF or WebP files inside. A root with
//! `train/` and `test/` (or `val/`) subfolders gives two splits. Every image is decoded
//! once, on all cores, into the dataset's u8 planar layout.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::{DataError, Dataset, Split};

/// torchvision-style preprocessing applied while reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderOptions {
    /// `Resize`: one number resizes the shorter side (keeping the aspect), two sizes
    /// resize to exactly `[h, w]`.
    pub resize: Option<Vec<u32>>,
    /// `CenterCrop(size)`: `[h, w]`.
    pub center_crop: Option<[u32; 2]>,
    /// `Grayscale()`: PIL's ITU-R 601-2 luma, one channel.
    pub grayscale: bool,
}

/// Image files with their class index, and the class names.
type Scan = (Vec<(PathBuf, u16)>, Vec<String>);
/// One decoded image: its `[C, H, W]` and planar bytes.
type Decoded = ([usize; 3], Vec<u8>);

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp"];

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::file(dir, format!("cannot read the folder: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    Ok(entries)
}

/// The files of one split: `(path, class index)`, and the class names.
fn scan(root: &Path) -> Result<Scan, DataError> {
    let class_dirs: Vec<PathBuf> = list_dir(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if class_dirs.is_empty() {
        return Err(DataError::file(
            root,
            "no class folders: expected one subfolder per class with images inside",
        ));
    }
    if class_dirs.len() > u16::MAX as usize {
        return Err(DataError::file(root, "more than 65535 class folders"));
    }
    let mut files = Vec::new();
    let mut classes = Vec::new();
    for (ci, d) in class_dirs.iter().enumerate() {
        classes.push(
            d.file_name()
                .expect("a listed entry has a name")
                .to_string_lossy()
                .into_owned(),
        );
        let mut n = 0;
        for f in list_dir(d)? {
            if f.is_dir() {
                continue;
            }
            let ext = f
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            if !EXTENSIONS.contains(&ext.as_str()) {
                return Err(DataError::file(
                    &f,
                    format!(
                        "not an image file: expected one of .{} in a class folder",
                        EXTENSIONS.join(", .")
                    ),
                ));
            }
            files.push((f, ci as u16));
            n += 1;
        }
        if n == 0 {
            return Err(DataError::file(d, "empty class folder: no images inside"));
        }
    }
    Ok((files, classes))
}

/// Decodes and preprocesses one image to planar u8 `C x H x W`.
pub fn decode(path: &Path, opts: &FolderOptions) -> Result<Decoded, DataError> {
    let bytes =
        std::fs::read(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    if bytes.is_empty() {
        return Err(DataError::file(path, "zero-byte file: not an image"));
    }
    let mut img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::file(path, format!("cannot decode the image: {e}")))?;
    if let Some(r) = &opts.resize {
        let (w, h) = (img.width(), img.height());
        let (nw, nh) = match r.as_slice() {
            [s] => {
                if w <= h {
                    (*s, ((*s as u64 * h as u64) / w.max(1) as u64) as u32)
                } else {
                    (((*s as u64 * w as u64) / h.max(1) as u64) as u32, *s)
                }
            }
            [hh, ww] => (*ww, *hh),
            _ => return Err(DataError::Config("--resize takes N or HxW".into())),
        };
        if nw == 0 || nh == 0 {
            return Err(DataError::Config("--resize must be at least 1".into()));
        }
        img = img.resize_exact(nw, nh, FilterType::Triangle);
    }
    if let Some([ch, cw]) = opts.center_crop {
        let (w, h) = (img.width(), img.height());
        if ch > h || cw > w {
            return Err(DataError::file(
                path,
                format!("--center-crop {ch}x{cw} is larger than the image ({h}x{w}); resize first"),
            ));
        }
        // torchvision rounds the offsets: int(round((h - ch) / 2)).
        let top = ((h - ch) as f64 / 2.0).round() as u32;
        let left = ((w - cw) as f64 / 2.0).round() as u32;
        img = img.crop_imm(left, top, cw, ch);
    }
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let px = rgb.as_raw();
    if opts.grayscale {
        let mut out = vec![0u8; h * w];
        for (i, o) in out.iter_mut().enumerate() {
            let (r, g, b) = (px[3 * i] as u32, px[3 * i + 1] as u32, px[3 * i + 2] as u32);
            // PIL's convert("L"): L = R * 299/1000 + G * 587/1000 + B * 114/1000.
            *o = ((r * 299 + g * 587 + b * 114 + 500) / 1000) as u8;
        }
        return Ok(([1, h, w], out));
    }
    let mut out = vec![0u8; 3 * h * w];
    for i in 0..h * w {
        for c in 0..3 {
            out[c * h * w + i] = px[3 * i + c];
        }
    }
    Ok(([3, h, w], out))
}

fn load_split(
    root: &Path,
    opts: &FolderOptions,
) -> Result<(Split, [usize; 3], Vec<String>), DataError> {
    let (files, classes) = scan(root)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = files.len().div_ceil(threads).max(1);
    let decoded: Vec<Result<Vec<Decoded>, DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(p, _)| decode(p, opts)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a decoder thread does not panic"))
            .collect()
    });
    let mut images = Vec::new();
    let mut shape = None;
    let mut idx = 0;
    for part in decoded {
        for (s, px) in part? {
            let (path, _) = &files[idx];
            match shape {
                None => shape = Some((s, path.clone())),
                Some((first, ref first_path)) if first != s => {
                    return Err(DataError::file(path, format!(
                        "is {}x{}x{} but {} is {}x{}x{}: images of different sizes need --resize (and --center-crop)",
                        s[0], s[1], s[2], first_path.display(), first[0], first[1], first[2]
                    )));
                }
                _ => {}
            }
            images.extend_from_slice(&px);
            idx += 1;
        }
    }
    let shape = shape.expect("scan found at least one image").0;
    let labels = files.iter().map(|(_, c)| *c).collect();
    Ok((Split { images, labels }, shape, classes))
}

pub fn open(root: &Path, opts: &FolderOptions) -> Result<Dataset, DataError> {
    let train_dir = root.join("train");
    let test_dir = ["test", "val"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir());
    let (train, shape, classes, test) =
        if let (true, Some(test_dir)) = (train_dir.is_dir(), test_dir) {
            let (train, shape, classes) = load_split(&train_dir, opts)?;
            let (test, tshape, tclasses) = load_split(&test_dir, opts)?;
            if tclasses != classes {
                return Err(DataError::file(
                    &test_dir,
                    "its class folders differ from train/'s",
                ));
            }
            if tshape != shape {
                return Err(DataError::file(
                    &test_dir,
                    "its images differ in size from train/'s; use --resize",
                ));
            }
            (train, shape, classes, Some(test))
        } else {
            let (train, shape, classes) = load_split(root, opts)?;
            (train, shape, classes, None)
        };
    Ok(Dataset {
        name: root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "images".into()),
        shape,
        classes,
        train,
        test,
        source: root.to_path_buf(),
    })
}
