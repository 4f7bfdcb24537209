//! Downloads datasets from their official locations, with MD5 verification (the
//! checksums torchvision publishes) and atomic writes: a file appears under its real
//! name only once it is complete and verified. An interrupted or corrupt download
//! leaves nothing that looks valid.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::DataError;

/// One file to download.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub url: String,
    pub file: String,
    pub md5: String,
    /// A `.tar.gz` to unpack into the root after verification.
    pub unpack: bool,
}

fn res(base: &str, file: &str, md5: &str) -> Resource {
    Resource {
        url: format!("{base}{file}"),
        file: file.into(),
        md5: md5.into(),
        unpack: file.ends_with(".tar.gz"),
    }
}

/// The official files of a dataset.
pub fn resources(name: &str) -> Result<Vec<Resource>, DataError> {
    Ok(match name {
        "mnist" => {
            let b = "https://ossci-datasets.s3.amazonaws.com/mnist/";
            vec![
                res(b, "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                res(b, "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                res(b, "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                res(b, "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
            ]
        }
        "fashion-mnist" => {
            let b = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
            vec![
                res(b, "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                res(b, "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                res(b, "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                res(b, "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
            ]
        }
        "kmnist" => {
            let b = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/";
            vec![
                res(b, "train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7"),
                res(b, "train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344"),
                res(b, "t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7"),
                res(b, "t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134"),
            ]
        }
        "cifar10" => vec![res("https://www.cs.toronto.edu/~kriz/", "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")],
        "cifar100" => vec![res("https://www.cs.toronto.edu/~kriz/", "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8")],
        _ => {
            return Err(DataError::Config(format!(
                "cannot fetch `{name}`: vramlab downloads mnist, fashion-mnist, kmnist, cifar10 and cifar100"
            )))
        }
    })
}

/// MD5 of a file, hex.
pub fn md5_file(path: &Path) -> Result<String, DataError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What happened to one resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Downloaded { bytes: u64 },
    AlreadyThere,
}

/// Downloads every resource into `root`, skipping files already there and verified.
pub fn fetch(
    resources: &[Resource],
    root: &Path,
    mut progress: impl FnMut(&Resource, u64, Option<u64>),
) -> Result<Vec<(PathBuf, Outcome)>, DataError> {
    std::fs::create_dir_all(root)
        .map_err(|e| DataError::file(root, format!("cannot create the folder: {e}")))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(600)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut out = Vec::new();
    for r in resources {
        let path = root.join(&r.file);
        if path.is_file() && md5_file(&path)? == r.md5 {
            if r.unpack {
                unpack(&path, root)?;
            }
            out.push((path, Outcome::AlreadyThere));
            continue;
        }
        let bytes = download(&agent, r, &path, &mut progress)?;
        if r.unpack {
            unpack(&path, root)?;
        }
        out.push((path, Outcome::Downloaded { bytes }));
    }
    Ok(out)
}

fn download(
    agent: &ureq::Agent,
    r: &Resource,
    path: &Path,
    progress: &mut impl FnMut(&Resource, u64, Option<u64>),
) -> Result<u64, DataError> {
    let tmp = path.with_file_name(format!(".{}.part-{}", r.file, std::process::id()));
    let result = (|| {
        let mut resp = agent
            .get(&r.url)
            .call()
            .map_err(|e| DataError::file(path, format!("download from {} failed: {e}", r.url)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(DataError::file(
                path,
                format!("download from {} failed: HTTP {status}", r.url),
            ));
        }
        let expected: Option<u64> = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = resp.body_mut().as_reader();
        let mut file = std::fs::File::create(&tmp)
            .map_err(|e| DataError::file(&tmp, format!("cannot write: {e}")))?;
        let mut h = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return Err(DataError::file(
                        path,
                        format!(
                            "download from {} broke off after {got} bytes{}: {e}",
                            r.url,
                            expected.map(|t| format!(" of {t}")).unwrap_or_default()
                        ),
                    ))
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| DataError::file(&tmp, format!("cannot write: {e}")))?;
            h.update(&buf[..n]);
            got += n as u64;
            progress(r, got, expected);
        }
        if let Some(t) = expected {
            if got != t {
                return Err(DataError::file(
                    path,
                    format!("download from {} broke off after {got} of {t} bytes", r.url),
                ));
            }
        }
        file.sync_all()
            .map_err(|e| DataError::file(&tmp, format!("cannot write: {e}")))?;
        let sum = hex(&h.finalize());
        if sum != r.md5 {
            return Err(DataError::file(path, format!(
                "checksum mismatch: expected MD5 {}, got {sum}; the download is corrupt and was removed",
                r.md5
            )));
        }
        std::fs::rename(&tmp, path)
            .map_err(|e| DataError::file(path, format!("cannot write: {e}")))?;
        Ok(got)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Unpacks a verified `.tar.gz` into `root` (into a temporary folder first, then each
/// top-level entry renamed into place).
fn unpack(archive: &Path, root: &Path) -> Result<(), DataError> {
    let tmp = root.join(format!(".unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        let f = std::fs::File::open(archive)
            .map_err(|e| DataError::file(archive, format!("cannot read: {e}")))?;
        tar::Archive::new(flate2::read::GzDecoder::new(f))
            .unpack(&tmp)
            .map_err(|e| DataError::file(archive, format!("cannot unpack: {e}")))?;
        for entry in std::fs::read_dir(&tmp).map_err(|e| DataError::file(&tmp, e.to_string()))? {
            let entry = entry.map_err(|e| DataError::file(&tmp, e.to_string()))?;
            let dest = root.join(entry.file_name());
            if dest.exists() {
                let _ = std::fs::remove_dir_all(&dest);
            }
            std::fs::rename(entry.path(), &dest)
                .map_err(|e| DataError::file(&dest, format!("cannot write: {e}")))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
