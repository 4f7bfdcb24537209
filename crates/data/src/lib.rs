//! Image datasets for vramlab: read them (IDX for MNIST-style sets, CIFAR binary, image
//! folders), describe them, transform them with torchvision's semantics, and serve
//! shuffled f32 batches on worker threads.
//!
//! A [`Dataset`] holds every image once, as `u8` in channel-planar `C x H x W` order
//! (the layout CIFAR stores and the engine consumes), with its labels and class names.
//! The [`loader`] turns it into `[B, C, H, W]` f32 batches and i64 labels.
//!
//! ```no_run
//! let ds = vramlab_data::open("fashion-mnist", None, &Default::default()).unwrap();
//! assert_eq!(ds.shape, [1, 28, 28]);
//! assert_eq!(ds.classes[ds.train.labels[0] as usize], "Ankle boot");
//! ```
//!
//! Main types: [`Dataset`], [`Split`], [`open`]; [`transform::Pipeline`],
//! [`loader::Loader`], [`stats::channel_stats`].
//!
//! Every reader is bounded ([`limits`]): sizes are checked from the header to the
//! allocation, only regular files are opened, images have decoding limits, and an empty
//! split or an image with a zero side is an error naming the file.

pub mod cifar;
pub mod classes;
pub mod fetch;
pub mod folder;
pub mod idx;
pub mod limits;
pub mod loader;
pub use vramlab_graph::rng;
pub mod show;
pub mod stats;
pub mod transform;

use std::fmt;
use std::path::{Path, PathBuf};

/// One split of a dataset: `len` images of `C*H*W` bytes each, and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A dataset: shape, class names, train and (usually) test split.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Option<Split>,
    /// Where it was read from.
    pub source: PathBuf,
}

impl Dataset {
    pub fn image_bytes(&self) -> usize {
        self.shape.iter().product()
    }

    /// A split by name, refused when it has no images or its images no pixels (a
    /// reader refuses both; this keeps every user of a split from dividing by zero).
    pub fn split(&self, name: &str) -> Result<&Split, DataError> {
        let split = match name {
            "train" => &self.train,
            "test" => self
                .test
                .as_ref()
                .ok_or_else(|| DataError::Config(format!("{} has no test split", self.name)))?,
            other => {
                return Err(DataError::Config(format!(
                    "unknown split `{other}`: expected train or test"
                )))
            }
        };
        let [c, h, w] = self.shape;
        if c == 0 || h == 0 || w == 0 {
            return Err(DataError::file(
                &self.source,
                format!("images of {c}x{h}x{w}: every dimension must be at least 1"),
            ));
        }
        if split.is_empty() {
            return Err(DataError::file(
                &self.source,
                format!("the {name} split of {} has no images", self.name),
            ));
        }
        let expected = [split.len(), c, h, w]
            .iter()
            .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
        if expected != Some(split.images.len() as u128) {
            return Err(DataError::file(
                &self.source,
                format!(
                    "the {name} split has {} bytes of images, not what {} images of {c}x{h}x{w} need",
                    split.images.len(),
                    split.len()
                ),
            ));
        }
        Ok(split)
    }

    /// Image `i` of a split, `C*H*W` bytes.
    pub fn image<'a>(&self, split: &'a Split, i: usize) -> &'a [u8] {
        let n = self.image_bytes();
        &split.images[i * n..(i + 1) * n]
    }

    /// Number of images per class in a split.
    pub fn class_counts(&self, split: &Split) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &split.labels {
            // Readers refuse labels out of range; a hand-made split's are not counted.
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// What went wrong, naming the file where there is one.
#[derive(Debug, Clone, PartialEq)]
pub enum DataError {
    /// A file is missing, unreadable or malformed.
    File { path: PathBuf, message: String },
    /// A setting or name is wrong.
    Config(String),
}

impl DataError {
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        DataError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::File { path, message } => write!(f, "{}: {message}", path.display()),
            DataError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DataError {}

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_SYSTEM_ROOT: &str = "/usr/share/datasets/fashion-mnist";

/// Dataset names `open` knows.
pub const NAMES: &[&str] = &[
    "fashion-mnist",
    "mnist",
    "kmnist",
    "emnist-<split>",
    "cifar10",
    "cifar100",
];

/// Options for reading: image folders' resizing, CIFAR-100's label set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenOptions {
    pub folder: folder::FolderOptions,
    /// CIFAR-100: use the 20 coarse labels instead of the 100 fine ones.
    pub coarse_labels: bool,
}

/// Opens a dataset by name (`fashion-mnist`, `mnist`, `kmnist`, `emnist-balanced`,
/// `cifar10`, `cifar100`) under `root`, or by path (a folder of IDX files, of CIFAR
/// binaries, or of one subfolder per class).
pub fn open(spec: &str, root: Option<&Path>, opts: &OpenOptions) -> Result<Dataset, DataError> {
    resolve(spec, root, opts, folder::open, |d| d)
}

/// What `data info` shows of a dataset: its shape, classes and images per class.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub name: String,
    pub source: PathBuf,
    /// `[C, H, W]`, after an image folder's preprocessing.
    pub shape: [usize; 3],
    pub classes: Vec<String>,
    /// Images per class.
    pub train: Vec<usize>,
    pub test: Option<Vec<usize>>,
    /// Whether the images were decoded (IDX and CIFAR files), or only an image folder's
    /// headers were read.
    pub decoded: bool,
}

impl Summary {
    fn of(d: Dataset) -> Summary {
        Summary {
            train: d.class_counts(&d.train),
            test: d.test.as_ref().map(|t| d.class_counts(t)),
            name: d.name,
            source: d.source,
            shape: d.shape,
            classes: d.classes,
            decoded: true,
        }
    }
}

/// Describes a dataset as [`open`] would read it, without decoding an image folder: its
/// images' headers give their sizes (what preprocessing makes of them) and the folders
/// their classes, so a folder of a million photos is described in seconds.
pub fn summarize(
    spec: &str,
    root: Option<&Path>,
    opts: &OpenOptions,
) -> Result<Summary, DataError> {
    resolve(spec, root, opts, folder::describe, Summary::of)
}

/// Finds what `spec` names and reads it: image folders with `folder`, the other kinds
/// into a [`Dataset`] given to `other`.
fn resolve<T>(
    spec: &str,
    root: Option<&Path>,
    opts: &OpenOptions,
    folder: impl FnOnce(&Path, &folder::FolderOptions) -> Result<T, DataError>,
    other: impl FnOnce(Dataset) -> T,
) -> Result<T, DataError> {
    let lower = spec.to_ascii_lowercase();
    let named_root = |default: Option<&str>| -> Result<PathBuf, DataError> {
        match (root, default) {
            (Some(r), _) => Ok(r.to_path_buf()),
            (None, Some(d)) if Path::new(d).is_dir() => Ok(PathBuf::from(d)),
            _ => Err(DataError::Config(format!(
                "`{spec}` needs --root DIR (the folder with its files); `vramlab data fetch {spec} --root DIR` downloads it"
            ))),
        }
    };
    // Options that apply to one kind of dataset are refused for the others, not ignored.
    let images_only = |what: &str| -> Result<(), DataError> {
        let f = &opts.folder;
        if f.resize.is_some() || f.center_crop.is_some() || f.grayscale {
            return Err(DataError::Config(format!(
                "--resize, --center-crop and --grayscale apply to image folders; `{spec}` is \
                 {what}, whose images are read as stored"
            )));
        }
        Ok(())
    };
    let not_cifar100 = |what: &str| -> Result<(), DataError> {
        if opts.coarse_labels {
            return Err(DataError::Config(format!(
                "--coarse applies to CIFAR-100 (its 20 superclasses); `{spec}` is {what}"
            )));
        }
        Ok(())
    };
    let kind = match lower.as_str() {
        "fashion-mnist" | "fashionmnist" | "mnist" | "kmnist" => Some("an IDX dataset"),
        s if s.starts_with("emnist-") => Some("an IDX dataset"),
        "cifar10" | "cifar-10" => Some("CIFAR-10"),
        "cifar100" | "cifar-100" => Some("CIFAR-100"),
        _ => None,
    };
    if let Some(what) = kind {
        images_only(what)?;
        if what != "CIFAR-100" {
            not_cifar100(what)?;
        }
    }
    let dataset = match lower.as_str() {
        "fashion-mnist" | "fashionmnist" => idx::open_named(
            idx::Family::FashionMnist,
            &named_root(Some(FASHION_MNIST_SYSTEM_ROOT))?,
        ),
        "mnist" => idx::open_named(idx::Family::Mnist, &named_root(None)?),
        "kmnist" => idx::open_named(idx::Family::Kmnist, &named_root(None)?),
        s if s.starts_with("emnist-") => {
            let split = &s["emnist-".len()..];
            idx::open_named(
                idx::Family::Emnist(idx::EmnistSplit::parse(split)?),
                &named_root(None)?,
            )
        }
        "cifar10" | "cifar-10" => cifar::open(cifar::Kind::Cifar10, &named_root(None)?, false),
        "cifar100" | "cifar-100" => cifar::open(
            cifar::Kind::Cifar100,
            &named_root(None)?,
            opts.coarse_labels,
        ),
        _ => {
            let path = Path::new(spec);
            if !path.exists() {
                return Err(DataError::Config(format!(
                    "unknown dataset `{spec}`: expected one of {} (with --root DIR), or a path to a folder",
                    NAMES.join(", ")
                )));
            }
            return open_path(path, opts, &images_only, &not_cifar100, folder, other);
        }
    }?;
    Ok(other(dataset))
}

/// Recognises what a folder holds.
/// `images_only` and `not_cifar100` refuse the options that do not apply to what the
/// folder turns out to hold.
fn open_path<T>(
    path: &Path,
    opts: &OpenOptions,
    images_only: &dyn Fn(&str) -> Result<(), DataError>,
    not_cifar100: &dyn Fn(&str) -> Result<(), DataError>,
    folder: impl FnOnce(&Path, &folder::FolderOptions) -> Result<T, DataError>,
    other: impl FnOnce(Dataset) -> T,
) -> Result<T, DataError> {
    if !path.is_dir() {
        return Err(DataError::file(
            path,
            "expected a folder with a dataset's files",
        ));
    }
    if idx::find(path, "train", idx::Kind::Images, &idx::Family::Generic).is_some() {
        images_only("a folder of IDX files")?;
        not_cifar100("a folder of IDX files")?;
        return idx::open_named(idx::Family::Generic, path).map(other);
    }
    if cifar::looks_like(path, cifar::Kind::Cifar10) {
        images_only("a folder of CIFAR-10 files")?;
        not_cifar100("a folder of CIFAR-10 files")?;
        return cifar::open(cifar::Kind::Cifar10, path, false).map(other);
    }
    if cifar::looks_like(path, cifar::Kind::Cifar100) {
        images_only("a folder of CIFAR-100 files")?;
        return cifar::open(cifar::Kind::Cifar100, path, opts.coarse_labels).map(other);
    }
    not_cifar100("an image folder")?;
    folder(path, &opts.folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(shape: [usize; 3], n: usize) -> Dataset {
        let per: usize = shape.iter().product();
        Dataset {
            name: "tiny".into(),
            shape,
            classes: vec!["a".into()],
            train: Split {
                images: vec![0; n * per],
                labels: vec![0; n],
            },
            test: None,
            source: "tiny-dir".into(),
        }
    }

    #[test]
    fn a_split_without_images_or_pixels_is_refused_where_it_is_used() {
        let e = dataset([1, 0, 0], 5)
            .split("train")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "tiny-dir: images of 1x0x0: every dimension must be at least 1"
        );
        let e = dataset([1, 2, 2], 0)
            .split("train")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "tiny-dir: the train split of tiny has no images");
        let mut torn = dataset([1, 2, 2], 3);
        torn.train.images.pop();
        let e = torn.split("train").unwrap_err().to_string();
        assert!(
            e.contains("has 11 bytes of images, not what 3 images of 1x2x2 need"),
            "{e}"
        );
        assert_eq!(dataset([1, 2, 2], 3).split("train").unwrap().len(), 3);
    }

    #[test]
    fn stats_of_images_without_pixels_are_zeros_not_a_panic() {
        let ds = dataset([1, 0, 0], 5);
        let s = stats::channel_stats(&ds, &ds.train);
        assert_eq!((s.mean[0], s.std[0], s.pixels_per_channel), (0.0, 0.0, 0));
    }
}
