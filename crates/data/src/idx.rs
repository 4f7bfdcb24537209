//! IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), gzip-compressed or raw, under
//! torchvision's file names.
//!
//! Format: a 4-byte magic `00 00 TT NN` (TT = 0x08 for unsigned bytes, NN = number of
//! dimensions), NN big-endian u32 sizes, then the data, row-major.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{classes, DataError, Dataset, Split};

/// A parsed IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses IDX bytes (already decompressed); `path` names the file in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Idx, DataError> {
    let err = |m: String| DataError::file(path, m);
    if bytes.len() < 4 {
        return Err(err(format!(
            "truncated IDX file: {} bytes, too short for the 4-byte magic number",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "wrong magic number {:02x} {:02x} {:02x} {:02x}: an IDX file starts with 00 00",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "IDX data type 0x{:02x} is not supported: expected 0x08 (unsigned byte)",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err(err("IDX file with zero dimensions".into()));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(err(format!(
            "truncated IDX header: {ndims} dimensions need {header} bytes, the file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&t| t <= isize::MAX as usize)
        .ok_or_else(|| {
            err(format!(
                "dimensions {dims:?} overflow: their product is too large"
            ))
        })?;
    let data = &bytes[header..];
    if data.len() < total {
        return Err(err(format!(
            "truncated: dimensions {dims:?} need {total} bytes of data, the file has {}",
            data.len()
        )));
    }
    if data.len() > total {
        return Err(err(format!(
            "{} unexpected bytes after the {total} bytes of data that dimensions {dims:?} describe",
            data.len() - total
        )));
    }
    Ok(Idx {
        dims,
        data: data.to_vec(),
    })
}

/// Reads a file, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw =
        std::fs::read(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::file(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

pub fn read(path: &Path) -> Result<Idx, DataError> {
    parse(&read_maybe_gz(path)?, path)
}

/// The EMNIST splits torchvision knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmnistSplit {
    Byclass,
    Bymerge,
    Balanced,
    Letters,
    Digits,
    Mnist,
}

impl EmnistSplit {
    pub fn parse(s: &str) -> Result<Self, DataError> {
        Ok(match s {
            "byclass" => EmnistSplit::Byclass,
            "bymerge" => EmnistSplit::Bymerge,
            "balanced" => EmnistSplit::Balanced,
            "letters" => EmnistSplit::Letters,
            "digits" => EmnistSplit::Digits,
            "mnist" => EmnistSplit::Mnist,
            _ => {
                return Err(DataError::Config(format!(
                    "unknown EMNIST split `{s}`: expected byclass, bymerge, balanced, letters, digits or mnist"
                )))
            }
        })
    }
    fn name(self) -> &'static str {
        match self {
            EmnistSplit::Byclass => "byclass",
            EmnistSplit::Bymerge => "bymerge",
            EmnistSplit::Balanced => "balanced",
            EmnistSplit::Letters => "letters",
            EmnistSplit::Digits => "digits",
            EmnistSplit::Mnist => "mnist",
        }
    }
    /// torchvision's class lists for each split.
    fn classes(self) -> Vec<String> {
        let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
        let upper: Vec<String> = ('A'..='Z').map(String::from).collect();
        let lower: Vec<String> = ('a'..='z').map(String::from).collect();
        let merged: Vec<String> = "abdefghnqrt".chars().map(String::from).collect();
        match self {
            EmnistSplit::Digits | EmnistSplit::Mnist => digits,
            EmnistSplit::Letters => std::iter::once("N/A".to_string()).chain(lower).collect(),
            EmnistSplit::Byclass => [digits, upper, lower].concat(),
            EmnistSplit::Bymerge | EmnistSplit::Balanced => [digits, upper, merged].concat(),
        }
    }
}

/// Which IDX dataset: decides class names, file names and EMNIST's transposition.
#[derive(Debug, Clone, PartialEq)]
pub enum Family {
    Mnist,
    FashionMnist,
    Kmnist,
    Emnist(EmnistSplit),
    /// An unknown IDX set: classes are the label values.
    Generic,
}

impl Family {
    fn name(&self) -> String {
        match self {
            Family::Mnist => "mnist".into(),
            Family::FashionMnist => "fashion-mnist".into(),
            Family::Kmnist => "kmnist".into(),
            Family::Emnist(s) => format!("emnist-{}", s.name()),
            Family::Generic => "idx".into(),
        }
    }
    /// torchvision's folder name (`root/FashionMNIST/raw/...`).
    fn torchvision_dir(&self) -> &'static str {
        match self {
            Family::Mnist | Family::Generic => "MNIST",
            Family::FashionMnist => "FashionMNIST",
            Family::Kmnist => "KMNIST",
            Family::Emnist(_) => "EMNIST",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Images,
    Labels,
}

/// Finds a split's images or labels file under `root`, `root/raw` or torchvision's
/// `root/<Name>/raw`, gzipped or not, with the original or Kaggle-style names.
pub fn find(root: &Path, split: &str, kind: Kind, family: &Family) -> Option<PathBuf> {
    let prefix = if split == "train" { "train" } else { "t10k" };
    let (what, dims) = match kind {
        Kind::Images => ("images", "idx3"),
        Kind::Labels => ("labels", "idx1"),
    };
    let mut stems = vec![
        format!("{prefix}-{what}-{dims}-ubyte"),
        format!("{prefix}-{what}.{dims}-ubyte"),
    ];
    if let Family::Emnist(s) = family {
        let split_word = if split == "train" { "train" } else { "test" };
        stems = vec![format!(
            "emnist-{}-{split_word}-{what}-{dims}-ubyte",
            s.name()
        )];
    }
    let dirs = [
        root.to_path_buf(),
        root.join("raw"),
        root.join(family.torchvision_dir()).join("raw"),
        root.join("gzip"),
    ];
    for d in &dirs {
        for stem in &stems {
            for ext in ["", ".gz"] {
                let p = d.join(format!("{stem}{ext}"));
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// A split, its image shape and the two files it came from.
type Loaded = (Split, [usize; 3], Vec<PathBuf>);

fn load_split(root: &Path, split: &str, family: &Family) -> Result<Option<Loaded>, DataError> {
    let images_path = match find(root, split, Kind::Images, family) {
        Some(p) => p,
        None if split == "test" => return Ok(None),
        None => {
            return Err(DataError::file(
                root,
                format!(
                    "no {} training images here (looked for train-images-idx3-ubyte[.gz] in {0}, raw/ and {1}/raw/)",
                    family.name(),
                    family.torchvision_dir()
                ),
            ))
        }
    };
    let labels_path = find(root, split, Kind::Labels, family).ok_or_else(|| {
        DataError::file(
            root,
            format!(
                "{split} images found at {} but no {split} labels file",
                images_path.display()
            ),
        )
    })?;
    let images = read(&images_path)?;
    let labels = read(&labels_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::file(
            &images_path,
            format!(
                "expected 3 dimensions (count, height, width) in an images file, got {:?}",
                images.dims
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(DataError::file(
            &labels_path,
            format!(
                "expected 1 dimension (count) in a labels file, got {:?}",
                labels.dims
            ),
        ));
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(DataError::file(
            &labels_path,
            format!(
                "{} labels, but {} has {n} images",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    let mut data = images.data;
    if matches!(family, Family::Emnist(_)) {
        // EMNIST stores images transposed; torchvision transposes them back.
        let mut t = vec![0u8; data.len()];
        for i in 0..n {
            let (src, dst) = (
                &data[i * h * w..(i + 1) * h * w],
                &mut t[i * h * w..(i + 1) * h * w],
            );
            for y in 0..h {
                for x in 0..w {
                    dst[x * h + y] = src[y * w + x];
                }
            }
        }
        data = t;
    }
    let shape = if matches!(family, Family::Emnist(_)) {
        [1, w, h]
    } else {
        [1, h, w]
    };
    let split = Split {
        images: data,
        labels: labels.data.iter().map(|&l| l as u16).collect(),
    };
    Ok(Some((split, shape, vec![images_path, labels_path])))
}

/// Opens an IDX dataset (train split required, test split if present).
pub fn open_named(family: Family, root: &Path) -> Result<Dataset, DataError> {
    let (train, shape, train_files) =
        load_split(root, "train", &family)?.expect("train is required");
    let test = load_split(root, "test", &family)?;
    if let Some((_, test_shape, files)) = &test {
        if *test_shape != shape {
            return Err(DataError::file(
                &files[0],
                format!(
                    "test images are {}x{}, training images {}x{}",
                    test_shape[1], test_shape[2], shape[1], shape[2]
                ),
            ));
        }
    }
    let classes = match &family {
        Family::Mnist => classes::owned(&classes::MNIST),
        Family::FashionMnist => classes::owned(&classes::FASHION_MNIST),
        Family::Kmnist => classes::owned(&classes::KMNIST),
        Family::Emnist(s) => s.classes(),
        Family::Generic => {
            let max = train.labels.iter().copied().max().unwrap_or(0);
            (0..=max).map(|l| l.to_string()).collect()
        }
    };
    for (split, files) in
        std::iter::once((&train, &train_files)).chain(test.as_ref().map(|(s, _, f)| (s, f)))
    {
        if let Some((i, &l)) = split
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes.len())
        {
            return Err(DataError::file(
                &files[1],
                format!(
                    "label {l} at index {i} is out of range: {} has {} classes",
                    family.name(),
                    classes.len()
                ),
            ));
        }
    }
    Ok(Dataset {
        name: family.name(),
        shape,
        classes,
        train,
        test: test.map(|(s, _, _)| s),
        source: root.to_path_buf(),
    })
}

/// Writes an IDX file of unsigned bytes (tests and tools make small datasets with it).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PathBuf {
        PathBuf::from("x.idx")
    }

    #[test]
    fn parses_a_small_file() {
        let bytes = encode(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let idx = parse(&bytes, &p()).unwrap();
        assert_eq!(idx.dims, vec![2, 2, 3]);
        assert_eq!(idx.data[11], 12);
    }

    #[test]
    fn rejects_a_wrong_magic_number() {
        let e = parse(&[0x1f, 0x8b, 8, 1, 0, 0, 0, 0], &p())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.idx: wrong magic number 1f 8b 08 01: an IDX file starts with 00 00"
        );
    }

    #[test]
    fn rejects_truncated_data_and_trailing_bytes() {
        let mut bytes = encode(&[2, 3], &[0; 6]);
        bytes.pop();
        assert!(parse(&bytes, &p())
            .unwrap_err()
            .to_string()
            .contains("truncated: dimensions [2, 3] need 6 bytes of data, the file has 5"));
        let bytes = encode(&[2, 3], &[0; 7]);
        assert!(parse(&bytes, &p())
            .unwrap_err()
            .to_string()
            .contains("1 unexpected bytes"));
        assert!(parse(&[0, 0, 8, 3, 0, 0], &p())
            .unwrap_err()
            .to_string()
            .contains("truncated IDX header"));
    }

    #[test]
    fn rejects_dimensions_whose_product_overflows() {
        let bytes = encode(
            &[u32::MAX as usize, u32::MAX as usize, u32::MAX as usize],
            &[],
        );
        let e = parse(&bytes, &p()).unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");
    }

    #[test]
    fn rejects_other_data_types() {
        let e = parse(&[0, 0, 0x0d, 1, 0, 0, 0, 0], &p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x0d is not supported"), "{e}");
    }
}
