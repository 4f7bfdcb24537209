//! A gzip bomb in an IDX file: a file of about 2 MB that inflates to 2 GiB. The header
//! is read first, and nothing is inflated past the size it gives (or the cap).
//! Alone in its test binary, so that the process's peak memory is this test's.

use std::io::Write;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;
use vramlab_data::idx::{encode, read};

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// An IDX header with `dims`, then `members` gzip members of 64 MiB of zeros each.
fn bomb(dims: &[usize], members: usize) -> Vec<u8> {
    let zeros = vec![0u8; 64 << 20];
    let member = |prefix: &[u8]| {
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(prefix).unwrap();
        gz.write_all(&zeros).unwrap();
        gz.finish().unwrap()
    };
    let mut out = member(&encode(dims, &[]));
    let rest = member(&[]);
    for _ in 1..members {
        out.extend_from_slice(&rest);
    }
    out
}

#[test]
fn a_gzip_bomb_is_refused_from_its_header_without_inflating_it() {
    let dir = std::env::temp_dir().join(format!("vramlab-bomb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("train-images-idx3-ubyte.gz");

    // Claims 2 GiB, over the 1 GiB cap: refused at once.
    let file = bomb(&[32, 8192, 8192], 32);
    assert!(file.len() < 4 << 20, "{} bytes", file.len());
    std::fs::write(&path, &file).unwrap();
    drop(file);
    let before = peak_rss_bytes();
    let start = Instant::now();
    let e = read(&path).unwrap_err().to_string();
    assert!(
        e.ends_with("dimensions [32, 8192, 8192] describe 2147483648 bytes of data, more than the 1073741824-byte limit of an IDX file"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    if let (Some(b), Some(a)) = (before, peak_rss_bytes()) {
        assert!(a < b + (64 << 20), "peak memory grew from {b} to {a} bytes");
    }

    // Claims 16 MiB but holds 2 GiB: reads the 16 MiB, then refuses the rest unread.
    let file = bomb(&[1, 4096, 4096], 32);
    std::fs::write(&path, &file).unwrap();
    let start = Instant::now();
    let e = read(&path).unwrap_err().to_string();
    assert!(
        e.ends_with("more than 65536 unexpected bytes after the 16777216 bytes of data that dimensions [1, 4096, 4096] describe"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));

    // Claims 512 MiB in a file far too small to inflate to it: refused before reading.
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&encode(&[2, 16384, 16384], &[0; 1000]))
        .unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let e = read(&path).unwrap_err().to_string();
    assert!(
        e.contains("need 536870912 bytes of data, more than a gzip file of"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
