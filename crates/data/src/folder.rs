//! Image folders, as torchvision's `ImageFolder` reads them: one subfolder per class
//! (sorted names are the classes), PNG, JPEG, BMP, GIF or WebP files inside. A root with
//! `train/` and `test/` (or `val/`) subfolders gives two splits. Every image is decoded
//! once, on all cores, into the dataset's u8 planar layout.

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

use image::imageops::FilterType;

use std::io::Read;

use crate::limits::{
    check_image_size, not_regular, open_regular, read_regular, MAX_DECODE_ALLOC,
    MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_SPLIT_BYTES,
};
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
/// The size `Resize` gives an image (width, height), if asked, and its final `[C, H, W]`.
type Preprocessed = (Option<(u32, u32)>, [usize; 3]);
/// One split as read: its images' `[C, H, W]`, the class names, and the split itself
/// (its images, or its counts per class).
type SplitRead<S> = ([usize; 3], Vec<String>, S);

/// Most images decoded at once.
const MAX_DECODE_THREADS: usize = 8;

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
    // Other entries of the root (a README, a FIFO) are not read.
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
        let class = d
            .file_name()
            .expect("a listed entry has a name")
            .to_string_lossy()
            .into_owned();
        // A class name is printed: a folder named with a terminal escape must not drive
        // the terminal (the error names the root, and the name escaped).
        vramlab_graph::text::check_printable(&class, "class folder")
            .map_err(|m| DataError::file(root, m))?;
        classes.push(class);
        let mut n = 0;
        for f in list_dir(d)? {
            // Metadata first (following symlinks): a FIFO named `1.png` would block the
            // read forever, a device would never end.
            let meta = std::fs::metadata(&f)
                .map_err(|e| DataError::file(&f, format!("cannot read: {e}")))?;
            if meta.is_dir() {
                continue;
            }
            if !meta.is_file() {
                return Err(DataError::file(&f, not_regular(&meta)));
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

/// Checks the options before any image is read: sizes of at least 1 and within
/// [`MAX_IMAGE_SIDE`].
fn check_options(opts: &FolderOptions) -> Result<(), DataError> {
    if let Some(r) = &opts.resize {
        if r.is_empty() || r.len() > 2 {
            return Err(DataError::Config("--resize takes N or HxW".into()));
        }
        if let [h, w] = r.as_slice() {
            check_image_size(
                *w as u64,
                *h as u64,
                &format!("--resize {h}x{w} gives images of"),
            )
            .map_err(DataError::Config)?;
        }
        if let Some(&s) = r.iter().find(|&&s| s == 0 || s as u64 > MAX_IMAGE_SIDE) {
            return Err(DataError::Config(format!(
                "--resize {s}: a size must be between 1 and {MAX_IMAGE_SIDE}"
            )));
        }
    }
    if let Some([h, w]) = opts.center_crop {
        check_image_size(
            w as u64,
            h as u64,
            &format!("--center-crop {h}x{w} gives images of"),
        )
        .map_err(DataError::Config)?;
    }
    Ok(())
}

/// The decoder's limits: a huge or hostile image is an error, not an abort.
fn decoder_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits
}

/// Decodes and preprocesses one image file to planar u8 `C x H x W`.
pub fn decode(path: &Path, opts: &FolderOptions) -> Result<Decoded, DataError> {
    check_options(opts)?;
    let bytes = read_regular(path, MAX_IMAGE_FILE_BYTES, "an image file")?;
    decode_bytes(&bytes, path, opts)
}

/// Decodes and preprocesses the bytes of an image file; `path` names it in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path, opts: &FolderOptions) -> Result<Decoded, DataError> {
    check_options(opts)?;
    if bytes.is_empty() {
        return Err(DataError::file(path, "zero-byte file: not an image"));
    }
    let cannot =
        |e: &dyn std::fmt::Display| DataError::file(path, format!("cannot decode the image: {e}"));
    let reader = || {
        let mut r = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| cannot(&e))?;
        r.limits(decoder_limits());
        Ok::<_, DataError>(r)
    };
    // The header's size first: a small file that declares a huge image is refused
    // before its pixels are decoded.
    let (w, h) = reader()?.into_dimensions().map_err(|e| cannot(&e))?;
    preprocessed(w, h, opts, path)?;
    let mut img = reader()?.decode().map_err(|e| cannot(&e))?;
    let (resize_to, _) = preprocessed(img.width(), img.height(), opts, path)?;
    if let Some((nw, nh)) = resize_to {
        img = img.resize_exact(nw, nh, FilterType::Triangle);
    }
    if let Some([ch, cw]) = opts.center_crop {
        let (w, h) = (img.width(), img.height());
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

/// What the preprocessing makes of a `w` x `h` image: the size `Resize` gives it (width,
/// height), if asked, and the `[C, H, W]` it ends as; images too large, or smaller than
/// the crop, are refused naming `path`.
fn preprocessed(
    w: u32,
    h: u32,
    opts: &FolderOptions,
    path: &Path,
) -> Result<Preprocessed, DataError> {
    check_image_size(w as u64, h as u64, "the image is").map_err(|m| DataError::file(path, m))?;
    let resize_to = match &opts.resize {
        Some(r) => {
            let (w, h) = (w as u64, h as u64);
            // torchvision's Resize(int): the shorter side becomes N, the longer
            // int(N * long / short).
            let (nw, nh) = match r.as_slice() {
                [s] if w <= h => (*s as u64, *s as u64 * h / w),
                [s] => (*s as u64 * w / h, *s as u64),
                [hh, ww] => (*ww as u64, *hh as u64),
                _ => return Err(DataError::Config("--resize takes N or HxW".into())),
            };
            let what = format!(
                "--resize {} makes this {h}x{w} image",
                r.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            );
            check_image_size(nw, nh, &what).map_err(|m| DataError::file(path, m))?;
            // Within MAX_IMAGE_SIDE, so within u32.
            Some((nw as u32, nh as u32))
        }
        None => None,
    };
    let (w, h) = resize_to.unwrap_or((w, h));
    let (h, w) = match opts.center_crop {
        Some([ch, cw]) if ch > h || cw > w => {
            return Err(DataError::file(
                path,
                format!("--center-crop {ch}x{cw} is larger than the image ({h}x{w}); resize first"),
            ))
        }
        Some([ch, cw]) => (ch, cw),
        None => (h, w),
    };
    let channels = if opts.grayscale { 1 } else { 3 };
    Ok((resize_to, [channels, h as usize, w as usize]))
}

/// Checks that the image at `path`, of `shape`, has the split's first image's shape.
fn same_shape(
    first: &mut Option<([usize; 3], PathBuf)>,
    shape: [usize; 3],
    path: &Path,
) -> Result<(), DataError> {
    match first {
        None => *first = Some((shape, path.to_path_buf())),
        Some((f, first_path)) if *f != shape => {
            return Err(DataError::file(
                path,
                format!(
                    "is {}x{}x{} but {} is {}x{}x{}: images of different sizes need --resize \
                     (and --center-crop)",
                    shape[0],
                    shape[1],
                    shape[2],
                    first_path.display(),
                    f[0],
                    f[1],
                    f[2]
                ),
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

fn too_large(root: &Path) -> DataError {
    DataError::file(
        root,
        format!(
            "the images decode to more than {} GiB, the limit of a split held in memory; use a (smaller) --resize",
            MAX_SPLIT_BYTES >> 30
        ),
    )
}

fn load_split(
    root: &Path,
    opts: &FolderOptions,
) -> Result<(Split, [usize; 3], Vec<String>), DataError> {
    let (files, classes) = scan(root)?;
    // Each decoder may hold an image file and its decoding at their limits at once:
    // at most 8 of them bound that memory whatever the number of cores.
    let mut threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_DECODE_THREADS);
    // With --resize every image is at least N x N (HxW exactly): a split that cannot fit
    // the cap is refused before any decoding, and resizing, which works in f32 (up to
    // 16 bytes a pixel), runs on as many decoders as 2 GiB of that holds.
    let resized_pixels = opts.resize.as_ref().map(|r| match r.as_slice() {
        [s] => *s as u64 * *s as u64,
        [h, w] => *h as u64 * *w as u64,
        _ => 0,
    });
    // (Sizes past one image's limit are refused per image, with the image's size.)
    if let Some(px) = resized_pixels.filter(|&p| p <= MAX_IMAGE_PIXELS) {
        let channels = if opts.grayscale { 1 } else { 3 };
        if (files.len() as u64).saturating_mul(px.saturating_mul(channels)) > MAX_SPLIT_BYTES {
            return Err(too_large(root));
        }
        let per_image = px.saturating_mul(16).max(1);
        threads = threads.min(((2u64 << 30) / per_image).max(1) as usize);
    }
    let chunk = files.len().div_ceil(threads).max(1);
    // Every decoded byte is kept: stop all decoders once the split passes the cap.
    let used = AtomicU64::new(0);
    let decode_counted = |p: &Path| -> Result<Decoded, DataError> {
        if used.load(Ordering::Relaxed) > MAX_SPLIT_BYTES {
            return Err(too_large(root));
        }
        let d = decode(p, opts)?;
        let total = used.fetch_add(d.1.len() as u64, Ordering::Relaxed) + d.1.len() as u64;
        if total > MAX_SPLIT_BYTES {
            return Err(too_large(root));
        }
        Ok(d)
    };
    let decoded: Vec<Result<Vec<Decoded>, DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                let decode_counted = &decode_counted;
                s.spawn(move || part.iter().map(|(p, _)| decode_counted(p)).collect())
            })
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
            same_shape(&mut shape, s, &files[idx].0)?;
            images.extend_from_slice(&px);
            idx += 1;
        }
    }
    let shape = shape.expect("scan found at least one image").0;
    let labels = files.iter().map(|(_, c)| *c).collect();
    Ok((Split { images, labels }, shape, classes))
}

/// The header of the image at `path`: its width and height, read without decoding
/// a pixel.
fn header_size(path: &Path) -> Result<(u32, u32), DataError> {
    let (f, len) = open_regular(path)?;
    if len == 0 {
        return Err(DataError::file(path, "zero-byte file: not an image"));
    }
    if len > MAX_IMAGE_FILE_BYTES {
        return Err(DataError::file(
            path,
            format!("{len} bytes is larger than the {MAX_IMAGE_FILE_BYTES}-byte limit for an image file"),
        ));
    }
    let cannot =
        |e: &dyn std::fmt::Display| DataError::file(path, format!("cannot decode the image: {e}"));
    let mut r = image::ImageReader::new(std::io::BufReader::new(f.take(MAX_IMAGE_FILE_BYTES)))
        .with_guessed_format()
        .map_err(|e| cannot(&e))?;
    r.limits(decoder_limits());
    r.into_dimensions().map_err(|e| cannot(&e))
}

/// One split from its images' headers: the shape after preprocessing, the classes, and
/// the images per class.
fn describe_split(root: &Path, opts: &FolderOptions) -> Result<SplitRead<Vec<usize>>, DataError> {
    let (files, classes) = scan(root)?;
    let mut counts = vec![0; classes.len()];
    let mut shape = None;
    for (path, class) in &files {
        let (w, h) = header_size(path)?;
        let (_, s) = preprocessed(w, h, opts, path)?;
        same_shape(&mut shape, s, path)?;
        counts[*class as usize] += 1;
    }
    let shape = shape.expect("scan found at least one image").0;
    Ok((shape, classes, counts))
}

/// A folder's splits: `root/train` with `root/test` (or `root/val`), or `root` alone,
/// each read by `read` as (shape, classes, the split), the two checked to agree.
fn splits<S>(
    root: &Path,
    read: impl Fn(&Path) -> Result<SplitRead<S>, DataError>,
) -> Result<(SplitRead<S>, Option<S>), DataError> {
    let train_dir = root.join("train");
    let test_dir = ["test", "val"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir());
    if let (true, Some(test_dir)) = (train_dir.is_dir(), test_dir) {
        let (shape, classes, train) = read(&train_dir)?;
        let (tshape, tclasses, test) = read(&test_dir)?;
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
        Ok(((shape, classes, train), Some(test)))
    } else {
        Ok((read(root)?, None))
    }
}

fn name_of(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "images".into())
}

pub fn open(root: &Path, opts: &FolderOptions) -> Result<Dataset, DataError> {
    check_options(opts)?;
    let ((shape, classes, train), test) = splits(root, |dir| {
        let (split, shape, classes) = load_split(dir, opts)?;
        Ok((shape, classes, split))
    })?;
    Ok(Dataset {
        name: name_of(root),
        shape,
        classes,
        train,
        test,
        source: root.to_path_buf(),
    })
}

/// The folder as [`open`] would read it, from its images' headers alone: an image whose
/// pixels are corrupt past a valid header is found only when it is decoded.
pub fn describe(root: &Path, opts: &FolderOptions) -> Result<crate::Summary, DataError> {
    check_options(opts)?;
    let ((shape, classes, train), test) = splits(root, |dir| describe_split(dir, opts))?;
    Ok(crate::Summary {
        name: name_of(root),
        source: root.to_path_buf(),
        shape,
        classes,
        train,
        test,
        decoded: false,
    })
}
