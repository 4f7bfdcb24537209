//! IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), gzip-compressed or raw, under
//! torchvision's file names.
//!
//! Format: a 4-byte magic `00 00 TT NN` (TT = 0x08 for unsigned bytes, NN = number of
//! dimensions), NN big-endian u32 sizes, then the data, row-major.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use crate::limits::{is_present, open_regular, MAX_IDX_BYTES};
use crate::{classes, DataError, Dataset, Split};

/// A parsed IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Trailing bytes after the data are counted up to this many for the error.
const TRAILING_COUNTED: u64 = 1 << 16;

/// The most a deflate stream can expand (1032:1) plus gzip's framing: a gzip file of
/// `n` bytes never holds more than `n * 1032` bytes of data.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Parses IDX bytes (already decompressed); `path` names the file in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Idx, DataError> {
    parse_from(bytes, path, Bound::Exact(bytes.len() as u64), |e| {
        DataError::file(path, format!("cannot read: {e}"))
    })
}

/// Parses a gzip-compressed IDX file held in memory, as [`read`] does a file.
pub fn parse_gzip(bytes: &[u8], path: &Path) -> Result<Idx, DataError> {
    parse_from(
        flate2::bufread::MultiGzDecoder::new(bytes),
        path,
        Bound::Gzip(bytes.len() as u64),
        |e| DataError::file(path, format!("corrupt gzip data: {e}")),
    )
}

/// What is known of a stream's size before it is read.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// The whole file has this many bytes.
    Exact(u64),
    /// The file is a gzip of this many bytes.
    Gzip(u64),
}

/// The dimensions of an IDX header and the exact number of data bytes they describe,
/// read from the start of a stream.
fn read_header(
    r: &mut impl Read,
    path: &Path,
    io_err: &impl Fn(std::io::Error) -> DataError,
) -> Result<(Vec<usize>, u64), DataError> {
    let err = |m: String| DataError::file(path, m);
    let mut magic = [0u8; 4];
    let got = read_up_to(r, &mut magic).map_err(io_err)?;
    if got < 4 {
        return Err(err(format!(
            "truncated IDX file: {got} bytes, too short for the 4-byte magic number"
        )));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(err(format!(
            "wrong magic number {:02x} {:02x} {:02x} {:02x}: an IDX file starts with 00 00",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    if magic[2] != 0x08 {
        return Err(err(format!(
            "IDX data type 0x{:02x} is not supported: expected 0x08 (unsigned byte)",
            magic[2]
        )));
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        return Err(err("IDX file with zero dimensions".into()));
    }
    if ndims > 3 {
        // Read no further: 255 sizes listed in an error made a 3 KB line.
        return Err(err(format!(
            "IDX file with {ndims} dimensions: expected 3 (count, height, width) for images \
             or 1 (count) for labels"
        )));
    }
    let mut sizes = vec![0u8; 4 * ndims];
    let got = read_up_to(r, &mut sizes).map_err(io_err)?;
    if got < sizes.len() {
        return Err(err(format!(
            "truncated IDX header: {ndims} dimensions need {} bytes, the file has {}",
            4 + 4 * ndims,
            4 + got
        )));
    }
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    // 255 factors below 2^32 overflow u128 as well: multiply checked.
    let total = dims
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
    match total {
        Some(t) if t <= MAX_IDX_BYTES as u128 => Ok((dims, t as u64)),
        _ => Err(err(format!(
            "dimensions {dims:?} describe {} bytes of data, more than the {MAX_IDX_BYTES}-byte limit of an IDX file",
            total.map_or_else(|| "over 2^128".to_string(), |t| t.to_string())
        ))),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Parses an IDX stream: the header first, then exactly the data it describes, never
/// more than the limit. A header that claims more data than the file's size can hold
/// (or its gzip can inflate to) is refused before anything is allocated.
fn parse_from(
    mut r: impl Read,
    path: &Path,
    bound: Bound,
    io_err: impl Fn(std::io::Error) -> DataError,
) -> Result<Idx, DataError> {
    let err = |m: String| DataError::file(path, m);
    let (dims, total) = read_header(&mut r, path, &io_err)?;
    let header = 4 + 4 * dims.len() as u64;
    match bound {
        Bound::Exact(len) if total > len.saturating_sub(header) => {
            return Err(err(format!(
                "truncated: dimensions {dims:?} need {total} bytes of data, the file has {}",
                len.saturating_sub(header)
            )));
        }
        Bound::Gzip(len) if total > len.saturating_mul(DEFLATE_MAX_RATIO) => {
            return Err(err(format!(
                "truncated: dimensions {dims:?} need {total} bytes of data, more than a gzip file of {len} bytes can hold"
            )));
        }
        _ => {}
    }
    let mut data = Vec::new();
    data.try_reserve_exact(total as usize)
        .map_err(|e| err(format!("cannot allocate {total} bytes: {e}")))?;
    (&mut r)
        .take(total)
        .read_to_end(&mut data)
        .map_err(&io_err)?;
    if (data.len() as u64) < total {
        return Err(err(format!(
            "truncated: dimensions {dims:?} need {total} bytes of data, the file has {}",
            data.len()
        )));
    }
    let extra =
        std::io::copy(&mut r.take(TRAILING_COUNTED + 1), &mut std::io::sink()).map_err(&io_err)?;
    if extra > TRAILING_COUNTED {
        return Err(err(format!(
            "more than {TRAILING_COUNTED} unexpected bytes after the {total} bytes of data that dimensions {dims:?} describe"
        )));
    }
    if extra > 0 {
        return Err(err(format!(
            "{extra} unexpected bytes after the {total} bytes of data that dimensions {dims:?} describe"
        )));
    }
    Ok(Idx { dims, data })
}

/// Reads an IDX file, gunzipping it when it starts with the gzip magic. The header is
/// read first from the stream and the data is read to exactly the size it gives, so a
/// small file that inflates to gigabytes is refused before it is inflated.
pub fn read(path: &Path) -> Result<Idx, DataError> {
    let (f, len) = open_regular(path)?;
    let mut file = std::io::BufReader::new(f);
    let gz = {
        let head = file
            .fill_buf()
            .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
        head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
    };
    if gz {
        parse_from(
            flate2::bufread::MultiGzDecoder::new(file),
            path,
            Bound::Gzip(len),
            |e| DataError::file(path, format!("corrupt gzip data: {e}")),
        )
    } else {
        parse_from(file, path, Bound::Exact(len), |e| {
            DataError::file(path, format!("cannot read: {e}"))
        })
    }
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
                if is_present(&p) {
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
            // The folder itself, raw/, <Name>/raw/ and gzip/ are searched (see `find`).
            let message = if root.is_dir() {
                format!(
                    "no {} training images here (looked for train-images-idx3-ubyte[.gz] in \
                     this folder, raw/, {}/raw/ and gzip/)",
                    family.name(),
                    family.torchvision_dir()
                )
            } else {
                format!(
                    "not a folder: --root names the folder with {}'s files",
                    family.name()
                )
            };
            return Err(DataError::file(root, message));
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
    if n == 0 {
        return Err(DataError::file(
            &images_path,
            format!(
                "no images: the {split} split is empty (dimensions {:?})",
                images.dims
            ),
        ));
    }
    if h == 0 || w == 0 {
        return Err(DataError::file(
            &images_path,
            format!("images of {h}x{w} pixels: height and width must be at least 1"),
        ));
    }
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
        let mut stored = vec![0u8; h * w];
        for img in data.chunks_exact_mut(h * w) {
            stored.copy_from_slice(img);
            for y in 0..h {
                for x in 0..w {
                    img[x * h + y] = stored[y * w + x];
                }
            }
        }
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
    fn a_header_of_many_dimensions_is_refused_in_one_short_line() {
        let mut bytes = vec![0, 0, 8, 255];
        bytes.extend(std::iter::repeat_n(0xff, 1020));
        let e = parse(&bytes, &p()).unwrap_err().to_string();
        assert_eq!(
            e,
            "x.idx: IDX file with 255 dimensions: expected 3 (count, height, width) for \
             images or 1 (count) for labels"
        );
    }

    #[test]
    fn a_missing_training_file_is_named_with_where_it_was_looked_for() {
        // It said "looked for ... in fashion-mnist": the dataset's name, not a folder.
        let dir = std::env::temp_dir().join(format!("vramlab-idx-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = open_named(Family::FashionMnist, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "no fashion-mnist training images here (looked for train-images-idx3-ubyte[.gz] \
                 in this folder, raw/, FashionMNIST/raw/ and gzip/)"
            ),
            "{e}"
        );
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = open_named(Family::Mnist, &file).unwrap_err().to_string();
        assert!(
            e.ends_with("f: not a folder: --root names the folder with mnist's files"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
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
        assert_eq!(
            e,
            "x.idx: dimensions [4294967295, 4294967295, 4294967295] describe 79228162458924105385300197375 bytes of data, more than the 1073741824-byte limit of an IDX file"
        );
        // 255 dimensions (whose product overflows even u128) are refused by their count.
        let mut bytes = vec![0, 0, 8, 255];
        bytes.resize(4 + 4 * 255, 0xff);
        let e = parse(&bytes, &p()).unwrap_err().to_string();
        assert!(e.contains("IDX file with 255 dimensions"), "{e}");
    }

    #[test]
    fn a_header_claiming_more_than_the_file_holds_is_refused_before_reading() {
        // 200 MB claimed (under the cap), 10 bytes present.
        let bytes = encode(&[200, 1000, 1000], &[0; 10]);
        let e = parse(&bytes, &p()).unwrap_err().to_string();
        assert_eq!(
            e,
            "x.idx: truncated: dimensions [200, 1000, 1000] need 200000000 bytes of data, the file has 10"
        );
    }

    #[test]
    fn a_gzip_in_memory_reads_as_a_file_does() {
        use std::io::Write;
        let raw = encode(&[2, 2], &[1, 2, 3, 4]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let idx = parse_gzip(&gz.finish().unwrap(), &p()).unwrap();
        assert_eq!((idx.dims, idx.data), (vec![2, 2], vec![1, 2, 3, 4]));
        let e = parse_gzip(&[0x1f, 0x8b, 0, 0, 0], &p())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.idx: corrupt gzip data: "), "{e}");
    }

    #[test]
    fn trailing_bytes_are_counted_up_to_a_bound() {
        let bytes = encode(&[1], &vec![0u8; 200_000]);
        let e = parse(&bytes, &p()).unwrap_err().to_string();
        assert!(
            e.contains("more than 65536 unexpected bytes after the 1 bytes of data"),
            "{e}"
        );
    }

    #[test]
    fn rejects_other_data_types() {
        let e = parse(&[0, 0, 0x0d, 1, 0, 0, 0, 0], &p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x0d is not supported"), "{e}");
    }
}
