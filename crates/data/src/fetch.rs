//! Downloads datasets from their official locations, with MD5 verification (the
//! checksums torchvision publishes) and atomic writes: a file appears under its real
//! name only once it is complete and verified. A failed, stalled, oversized or
//! interrupted download leaves nothing behind.
//!
//! Every network step has a timeout ([`FetchOptions`]), every body a cap (the known size
//! of the resource with a margin), and every temporary file a guard that removes it on
//! any error; [`remove_partial_files`] removes those in progress for a Ctrl-C handler.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use md5::{Digest, Md5};

use crate::DataError;

/// One file to download.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub url: String,
    pub file: String,
    pub md5: String,
    /// The most bytes accepted: the file's known size with a margin. A larger body is
    /// refused (and removed) as soon as it passes this.
    pub max_bytes: u64,
    /// A `.tar.gz` to unpack into the root after verification.
    pub unpack: bool,
}

/// The cap of a file of `size` bytes: an eighth more and 1 MiB, in case a mirror
/// recompressed it (the MD5 still has to match).
pub fn cap_for(size: u64) -> u64 {
    size.saturating_add(size / 8).saturating_add(1 << 20)
}

fn res(base: &str, file: &str, md5: &str, size: u64) -> Resource {
    Resource {
        url: format!("{base}{file}"),
        file: file.into(),
        md5: md5.into(),
        max_bytes: cap_for(size),
        unpack: file.ends_with(".tar.gz"),
    }
}

/// The official files of a dataset, with their MD5 and size.
pub fn resources(name: &str) -> Result<Vec<Resource>, DataError> {
    Ok(match name {
        "mnist" => {
            let b = "https://ossci-datasets.s3.amazonaws.com/mnist/";
            vec![
                res(b, "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422),
                res(b, "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28_881),
                res(b, "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1_648_877),
                res(b, "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4_542),
            ]
        }
        "fashion-mnist" => {
            let b = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
            vec![
                res(b, "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26_421_880),
                res(b, "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29_515),
                res(b, "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4_422_102),
                res(b, "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5_148),
            ]
        }
        "kmnist" => {
            let b = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/";
            vec![
                res(b, "train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7", 18_165_135),
                res(b, "train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344", 29_497),
                res(b, "t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7", 3_041_136),
                res(b, "t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134", 5_120),
            ]
        }
        "cifar10" => vec![res("https://www.cs.toronto.edu/~kriz/", "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", 170_052_171)],
        "cifar100" => vec![res("https://www.cs.toronto.edu/~kriz/", "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", 168_513_733)],
        _ => {
            return Err(DataError::Config(format!(
                "cannot fetch `{name}`: vramlab downloads mnist, fashion-mnist, kmnist, cifar10 and cifar100"
            )))
        }
    })
}

/// Timeouts of a download. A server that never answers, a TLS handshake that stalls, a
/// body that stops or trickles: each ends in an error within these bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOptions {
    /// Resolving the name and connecting, TLS handshake included.
    pub connect_timeout: Duration,
    /// Sending the request and receiving the response headers.
    pub response_timeout: Duration,
    /// The longest wait for the next bytes of the body.
    pub stall_timeout: Duration,
    /// Bytes per second below which the whole body is given up: it must arrive within
    /// `response_timeout + max_bytes / min_rate`.
    pub min_rate: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            min_rate: 32 << 10,
        }
    }
}

impl FetchOptions {
    fn body_timeout(&self, max_bytes: u64) -> Duration {
        let secs = max_bytes / self.min_rate.max(1);
        self.response_timeout
            .saturating_add(Duration::from_secs(secs))
    }
}

/// Temporary files and folders of the downloads in progress, and whether they were
/// cancelled (then no new one is made).
static PARTIAL: Mutex<(Vec<PathBuf>, bool)> = Mutex::new((Vec::new(), false));

fn partial() -> std::sync::MutexGuard<'static, (Vec<PathBuf>, bool)> {
    PARTIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the temporary files of the downloads in progress and stops new ones from
/// starting: for a Ctrl-C handler, which exits afterwards.
pub fn remove_partial_files() {
    let mut g = partial();
    g.1 = true;
    for p in g.0.drain(..) {
        remove_path(&p);
    }
}

fn remove_path(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// A temporary file or folder, removed when dropped (on any error, or after the rename
/// that publishes it, when nothing is left to remove).
struct Partial(PathBuf);

impl Partial {
    /// Registers `path` and makes it with `make`, unless the downloads were cancelled.
    fn create<T>(
        path: PathBuf,
        make: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> Result<(Partial, T), DataError> {
        // Made and registered under the lock: a Ctrl-C handler either removes it or
        // comes first and stops it from being made.
        let mut g = partial();
        if g.1 {
            return Err(DataError::file(&path, "interrupted"));
        }
        let made = make(&path).map_err(|e| DataError::file(&path, format!("cannot write: {e}")))?;
        g.0.push(path.clone());
        Ok((Partial(path), made))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let mut g = partial();
        remove_path(&self.0);
        g.0.retain(|p| p != &self.0);
    }
}

/// MD5 of a regular file of at most `max` bytes, hex.
pub fn md5_file(path: &Path) -> Result<String, DataError> {
    md5_bounded(path, u64::MAX)
}

fn md5_bounded(path: &Path, max: u64) -> Result<String, DataError> {
    let (f, len) = crate::limits::open_regular(path)?;
    if len > max {
        return Err(DataError::file(
            path,
            format!("{len} bytes, more than the {max} expected"),
        ));
    }
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    // Bounded by the size seen when it was opened, should the file grow meanwhile.
    let mut f = f.take(len);
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
    opts: &FetchOptions,
    mut progress: impl FnMut(&Resource, u64, Option<u64>),
) -> Result<Vec<(PathBuf, Outcome)>, DataError> {
    std::fs::create_dir_all(root)
        .map_err(|e| DataError::file(root, format!("cannot create the folder: {e}")))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(opts.connect_timeout))
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_send_request(Some(opts.response_timeout))
        .timeout_recv_response(Some(opts.response_timeout))
        .timeout_per_read(Some(opts.stall_timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut out = Vec::new();
    for r in resources {
        let path = root.join(&r.file);
        if path.is_file() && md5_bounded(&path, r.max_bytes).ok().as_deref() == Some(&r.md5) {
            if r.unpack {
                unpack(&path, root)?;
            }
            out.push((path, Outcome::AlreadyThere));
            continue;
        }
        let bytes = download(&agent, r, &path, opts, &mut progress)?;
        if r.unpack {
            unpack(&path, root)?;
        }
        out.push((path, Outcome::Downloaded { bytes }));
    }
    Ok(out)
}

/// Removes the temporary files or folders named `{prefix}{pid}` in `dir` left by
/// downloads that were killed (SIGKILL, a power cut): those whose process is gone.
fn remove_stale(dir: &Path, prefix: &str) {
    for p in vramlab_graph::io::stale_entries(dir, prefix) {
        remove_path(&p);
    }
}

/// A network error in words: which timeout ran out, or ureq's message.
fn network_error(e: &ureq::Error, opts: &FetchOptions) -> String {
    use ureq::Timeout as T;
    let secs = |d: Duration| d.as_secs_f64();
    match e {
        ureq::Error::Timeout(T::Resolve | T::Connect) => format!(
            "timed out connecting (TLS handshake included) after {} s",
            secs(opts.connect_timeout)
        ),
        ureq::Error::Timeout(T::SendRequest | T::RecvResponse) => format!(
            "timed out waiting for the server to answer: nothing for {} s",
            secs(opts.response_timeout)
        ),
        // Every read: the TLS handshake's, the headers' and the body's.
        ureq::Error::Timeout(T::PerRead) => format!(
            "timed out: the server sent nothing for {} s",
            secs(opts.stall_timeout)
        ),
        ureq::Error::Timeout(_) => format!(
            "timed out receiving the file (slower than {} bytes/s)",
            opts.min_rate
        ),
        e => e.to_string(),
    }
}

fn download(
    agent: &ureq::Agent,
    r: &Resource,
    path: &Path,
    opts: &FetchOptions,
    progress: &mut impl FnMut(&Resource, u64, Option<u64>),
) -> Result<u64, DataError> {
    let failed = |m: String| DataError::file(path, format!("download from {} failed: {m}", r.url));
    // Before the network: the final rename must not replace a folder, device or FIFO
    // standing where the file goes.
    vramlab_graph::io::write_target(path)
        .map_err(|e| DataError::file(path, format!("cannot write: {e}")))?;
    let mut resp = agent
        .get(&r.url)
        .config()
        .timeout_recv_body(Some(opts.body_timeout(r.max_bytes)))
        .build()
        .call()
        .map_err(|e| failed(network_error(&e, opts)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(failed(format!("HTTP {status}")));
    }
    let expected: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(t) = expected.filter(|&t| t > r.max_bytes) {
        return Err(failed(format!(
            "the server announces {t} bytes, more than the {} expected of {}",
            r.max_bytes, r.file
        )));
    }
    if let Some(dir) = path.parent() {
        remove_stale(dir, &format!(".{}.part-", r.file));
    }
    let tmp = path.with_file_name(format!(".{}.part-{}", r.file, std::process::id()));
    // Removes the temporary file on every return below, the rename's included.
    let (_guard, mut file) = Partial::create(tmp.clone(), |p| std::fs::File::create(p))?;
    let mut body = resp.body_mut().as_reader();
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let why = match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
                    Some(u) => network_error(u, opts),
                    None => e.to_string(),
                };
                return Err(DataError::file(
                    path,
                    format!(
                        "download from {} broke off after {got} bytes{}: {why}",
                        r.url,
                        expected.map(|t| format!(" of {t}")).unwrap_or_default()
                    ),
                ));
            }
        };
        got += n as u64;
        if got > r.max_bytes {
            return Err(failed(format!(
                "the server sent more than the {} bytes expected of {}; nothing was kept",
                r.max_bytes, r.file
            )));
        }
        file.write_all(&buf[..n])
            .map_err(|e| DataError::file(&tmp, format!("cannot write: {e}")))?;
        h.update(&buf[..n]);
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
    std::fs::rename(&tmp, path).map_err(|e| DataError::file(path, format!("cannot write: {e}")))?;
    Ok(got)
}

/// Unpacks a verified `.tar.gz` into `root` (into a temporary folder first, then each
/// top-level entry renamed into place).
fn unpack(archive: &Path, root: &Path) -> Result<(), DataError> {
    remove_stale(root, ".unpack-");
    let tmp = root.join(format!(".unpack-{}", std::process::id()));
    remove_path(&tmp);
    // Removes the temporary folder on every return, and on Ctrl-C.
    let (_guard, ()) = Partial::create(tmp.clone(), |p| std::fs::create_dir(p))?;
    let f = std::fs::File::open(archive)
        .map_err(|e| DataError::file(archive, format!("cannot read: {e}")))?;
    tar::Archive::new(flate2::read::GzDecoder::new(f))
        .unpack(&tmp)
        .map_err(|e| DataError::file(archive, format!("cannot unpack: {e}")))?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| DataError::file(&tmp, e.to_string()))? {
        let entry = entry.map_err(|e| DataError::file(&tmp, e.to_string()))?;
        let dest = root.join(entry.file_name());
        if dest.exists() {
            remove_path(&dest);
        }
        std::fs::rename(entry.path(), &dest)
            .map_err(|e| DataError::file(&dest, format!("cannot write: {e}")))?;
    }
    Ok(())
}
