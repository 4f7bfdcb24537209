//! CIFAR-10 and CIFAR-100, binary version.
//!
//! CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, records of
//! 1 label byte + 3072 pixel bytes (1024 red, then green, then blue, each row-major
//! 32x32). CIFAR-100: `train.bin` and `test.bin`, records of a coarse and a fine label
//! byte + 3072 pixel bytes. Files may sit in the root or in the archive's folder
//! (`cifar-10-batches-bin/`, `cifar-100-binary/`).

use std::path::{Path, PathBuf};

use crate::limits::{is_present, read_regular, MAX_CIFAR_FILE_BYTES};
use crate::{classes, DataError, Dataset, Split};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cifar10,
    Cifar100,
}

pub const PIXELS: usize = 3 * 32 * 32;

impl Kind {
    fn label_bytes(self) -> usize {
        match self {
            Kind::Cifar10 => 1,
            Kind::Cifar100 => 2,
        }
    }
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + PIXELS
    }
    fn subdir(self) -> &'static str {
        match self {
            Kind::Cifar10 => "cifar-10-batches-bin",
            Kind::Cifar100 => "cifar-100-binary",
        }
    }
    fn files(self, split: &str) -> Vec<String> {
        match (self, split) {
            (Kind::Cifar10, "train") => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Kind::Cifar10, _) => vec!["test_batch.bin".into()],
            (Kind::Cifar100, "train") => vec!["train.bin".into()],
            (Kind::Cifar100, _) => vec!["test.bin".into()],
        }
    }
}

fn dir_of(root: &Path, kind: Kind) -> PathBuf {
    let sub = root.join(kind.subdir());
    if sub.is_dir() {
        sub
    } else {
        root.to_path_buf()
    }
}

/// Whether the folder holds this CIFAR version's first training file.
pub fn looks_like(root: &Path, kind: Kind) -> bool {
    is_present(&dir_of(root, kind).join(&kind.files("train")[0]))
}

/// Parses one binary file's records into a split; `coarse` picks CIFAR-100's coarse label.
pub fn parse(
    bytes: &[u8],
    path: &Path,
    kind: Kind,
    coarse: bool,
    into: &mut Split,
) -> Result<(), DataError> {
    let rec = kind.record_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(DataError::file(
            path,
            format!(
                "size {} bytes is not a multiple of the {rec}-byte {} record",
                bytes.len(),
                if kind == Kind::Cifar10 {
                    "CIFAR-10"
                } else {
                    "CIFAR-100"
                }
            ),
        ));
    }
    let n_classes = match (kind, coarse) {
        (Kind::Cifar10, _) => 10,
        (Kind::Cifar100, false) => 100,
        (Kind::Cifar100, true) => 20,
    };
    into.images.reserve(bytes.len() / rec * PIXELS);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = match kind {
            Kind::Cifar10 => r[0],
            Kind::Cifar100 if coarse => r[0],
            Kind::Cifar100 => r[1],
        };
        if label as usize >= n_classes {
            return Err(DataError::file(
                path,
                format!("label {label} in record {i} is out of range for {n_classes} classes"),
            ));
        }
        into.labels.push(label as u16);
        into.images.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(())
}

fn load(kind: Kind, dir: &Path, split: &str, coarse: bool) -> Result<Split, DataError> {
    let mut s = Split {
        images: Vec::new(),
        labels: Vec::new(),
    };
    for f in kind.files(split) {
        let path = dir.join(&f);
        let bytes = read_regular(&path, MAX_CIFAR_FILE_BYTES, "a CIFAR binary file")?;
        parse(&bytes, &path, kind, coarse, &mut s)?;
    }
    Ok(s)
}

pub fn open(kind: Kind, root: &Path, coarse: bool) -> Result<Dataset, DataError> {
    let dir = dir_of(root, kind);
    let train = load(kind, &dir, "train", coarse)?;
    let test_file = dir.join(&kind.files("test")[0]);
    let test = if is_present(&test_file) {
        Some(load(kind, &dir, "test", coarse)?)
    } else {
        None
    };
    let (name, classes) = match (kind, coarse) {
        (Kind::Cifar10, _) => ("cifar10", classes::owned(&classes::CIFAR10)),
        (Kind::Cifar100, false) => ("cifar100", classes::owned(&classes::CIFAR100_FINE)),
        (Kind::Cifar100, true) => ("cifar100-coarse", classes::owned(&classes::CIFAR100_COARSE)),
    };
    Ok(Dataset {
        name: name.into(),
        shape: [3, 32, 32],
        classes,
        train,
        test,
        source: dir,
    })
}

/// Encodes records in the exact binary layout (tests generate datasets with it).
/// `pixels` are 3072 bytes each, planar R, G, B; `labels` one (CIFAR-10) or two
/// (CIFAR-100: coarse, fine) bytes each.
pub fn encode(labels: &[Vec<u8>], pixels: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (l, p) in labels.iter().zip(pixels) {
        out.extend_from_slice(l);
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_multiple_of_the_record_is_an_error() {
        let mut s = Split {
            images: vec![],
            labels: vec![],
        };
        let e = parse(
            &[0u8; 3074],
            Path::new("data_batch_1.bin"),
            Kind::Cifar10,
            false,
            &mut s,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "data_batch_1.bin: size 3074 bytes is not a multiple of the 3073-byte CIFAR-10 record"
        );
    }

    #[test]
    fn cifar100_reads_fine_or_coarse_labels() {
        let bytes = encode(&[vec![3, 77]], &[vec![9; PIXELS]]);
        let mut fine = Split {
            images: vec![],
            labels: vec![],
        };
        parse(
            &bytes,
            Path::new("train.bin"),
            Kind::Cifar100,
            false,
            &mut fine,
        )
        .unwrap();
        assert_eq!(fine.labels, vec![77]);
        let mut coarse = Split {
            images: vec![],
            labels: vec![],
        };
        parse(
            &bytes,
            Path::new("train.bin"),
            Kind::Cifar100,
            true,
            &mut coarse,
        )
        .unwrap();
        assert_eq!(coarse.labels, vec![3]);
        assert_eq!(coarse.images.len(), PIXELS);
    }

    #[test]
    fn an_out_of_range_label_is_an_error() {
        let bytes = encode(&[vec![10]], &[vec![0; PIXELS]]);
        let mut s = Split {
            images: vec![],
            labels: vec![],
        };
        let e = parse(&bytes, Path::new("b.bin"), Kind::Cifar10, false, &mut s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("label 10 in record 0 is out of range for 10 classes"),
            "{e}"
        );
    }
}
