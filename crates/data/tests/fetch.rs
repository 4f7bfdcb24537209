//! Downloads against a local HTTP server on 127.0.0.1: a good file, a wrong checksum,
//! a connection cut in the middle of the file, an endless body, a server that never
//! answers or stops sending. Each failure leaves no file and ends in bounded time.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vramlab_data::fetch::{fetch, md5_file, FetchOptions, Outcome, Resource};

/// Serves `count` requests: each gets `body`, announced with `announce` bytes of
/// Content-Length; a cut connection sends only half the body.
fn serve(body: Vec<u8>, announce: usize, cut: bool, count: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let mut s = stream.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {announce}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes());
            let part = if cut {
                &body[..body.len() / 2]
            } else {
                &body[..]
            };
            let _ = s.write_all(part);
            let _ = s.flush();
        }
    });
    format!("http://{addr}/")
}

/// Short timeouts, so that the tests of a silent server end quickly.
fn opts() -> FetchOptions {
    FetchOptions {
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_millis(400),
        stall_timeout: Duration::from_millis(500),
        min_rate: 100,
    }
}

/// A server that accepts one connection and runs `answer` on it.
fn serve_with(answer: impl FnOnce(std::net::TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Some(Ok(s)) = listener.incoming().next() {
            answer(s);
        }
    });
    format!("http://{addr}/")
}

fn resource(url: &str, max_bytes: u64) -> Resource {
    Resource {
        url: format!("{url}data.bin"),
        file: "data.bin".into(),
        md5: "0".repeat(32),
        max_bytes,
        unpack: false,
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramlab-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn md5_of(bytes: &[u8], name: &str) -> String {
    let dir = tmp(&format!("md5-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("f");
    std::fs::write(&p, bytes).unwrap();
    let m = md5_file(&p).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    m
}

fn listing(dir: &PathBuf) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_good_file_is_verified_and_written_under_its_name() {
    let b = body();
    let url = serve(b.clone(), b.len(), false, 1);
    let root = tmp("good");
    let r = Resource {
        url: format!("{url}data.bin"),
        file: "data.bin".into(),
        md5: md5_of(&b, "good"),
        max_bytes: 1 << 20,
        unpack: false,
    };
    let out = fetch(std::slice::from_ref(&r), &root, &opts(), |_, _, _| {}).unwrap();
    assert_eq!(
        out[0].1,
        Outcome::Downloaded {
            bytes: b.len() as u64
        }
    );
    assert_eq!(std::fs::read(root.join("data.bin")).unwrap(), b);
    assert_eq!(listing(&root), vec!["data.bin"]);
    // A second fetch finds it verified and downloads nothing (the server is gone).
    let again = fetch(&[r], &root, &opts(), |_, _, _| {}).unwrap();
    assert_eq!(again[0].1, Outcome::AlreadyThere);
    std::fs::remove_dir_all(&root).ok();
}

#[cfg(target_os = "linux")]
#[test]
fn partial_files_of_killed_downloads_are_removed() {
    let b = body();
    let url = serve(b.clone(), b.len(), false, 1);
    let root = tmp("stale");
    std::fs::create_dir_all(&root).unwrap();
    // Left by a process that no longer runs (above any pid_max), and by one that runs
    // (init): only the first is removed.
    std::fs::write(root.join(".data.bin.part-4294967295"), b"old").unwrap();
    std::fs::write(root.join(".data.bin.part-1"), b"busy").unwrap();
    let r = Resource {
        url: format!("{url}data.bin"),
        file: "data.bin".into(),
        md5: md5_of(&b, "stale"),
        max_bytes: 1 << 20,
        unpack: false,
    };
    fetch(&[r], &root, &opts(), |_, _, _| {}).unwrap();
    assert_eq!(listing(&root), vec![".data.bin.part-1", "data.bin"]);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_wrong_checksum_leaves_no_file() {
    let b = body();
    let url = serve(b.clone(), b.len(), false, 1);
    let root = tmp("badsum");
    let r = Resource {
        url: format!("{url}data.bin"),
        file: "data.bin".into(),
        md5: "0".repeat(32),
        max_bytes: 1 << 20,
        unpack: false,
    };
    let e = fetch(&[r], &root, &opts(), |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum mismatch: expected MD5 000"), "{e}");
    assert!(listing(&root).is_empty(), "{:?}", listing(&root));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_connection_cut_mid_file_leaves_no_file() {
    let b = body();
    let url = serve(b.clone(), b.len(), true, 1);
    let root = tmp("cut");
    let r = Resource {
        url: format!("{url}data.bin"),
        file: "data.bin".into(),
        md5: md5_of(&b, "cut"),
        max_bytes: 1 << 20,
        unpack: false,
    };
    let e = fetch(&[r], &root, &opts(), |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("broke off after"), "{e}");
    assert!(listing(&root).is_empty(), "{:?}", listing(&root));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = tmp("refused");
    let r = Resource {
        url: format!("http://127.0.0.1:{port}/x"),
        file: "x".into(),
        md5: "0".repeat(32),
        max_bytes: 1 << 20,
        unpack: false,
    };
    let e = fetch(&[r], &root, &opts(), |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("download from http://127.0.0.1"), "{e}");
    std::fs::remove_dir_all(&root).ok();
}

/// Fetches from `url` with a cap of `max_bytes`: it must fail within 10 s and leave
/// nothing behind. Returns the error.
fn fails_cleanly(url: &str, max_bytes: u64, name: &str) -> String {
    let root = tmp(name);
    let start = Instant::now();
    let e = fetch(&[resource(url, max_bytes)], &root, &opts(), |_, _, _| {})
        .unwrap_err()
        .to_string();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}: {e}");
    assert!(listing(&root).is_empty(), "{:?}", listing(&root));
    std::fs::remove_dir_all(&root).ok();
    e
}

/// Answers the request with `head` (and what follows it), then holds the connection
/// open, silent, until `until` is dropped.
fn answer_then_stall(head: &'static [u8], until: std::sync::mpsc::Receiver<()>) -> String {
    serve_with(move |mut s| {
        if !head.is_empty() {
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let _ = s.write_all(head);
            let _ = s.flush();
        }
        let _ = until.recv_timeout(Duration::from_secs(60));
    })
}

#[test]
fn an_endless_body_is_cut_at_the_cap_and_leaves_no_file() {
    let url = serve_with(|mut s| {
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let chunk = vec![7u8; 1 << 16];
        // Endless: until the client hangs up.
        while s.write_all(&chunk).is_ok() {}
    });
    let e = fails_cleanly(&url, 1 << 20, "endless");
    assert!(
        e.contains("the server sent more than the 1048576 bytes expected of data.bin"),
        "{e}"
    );
}

#[test]
fn a_body_announced_larger_than_the_cap_is_refused_before_writing() {
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let url = answer_then_stall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4294967296\r\n\r\nabc",
        rx,
    );
    let e = fails_cleanly(&url, 1000, "announced");
    assert!(
        e.contains("the server announces 4294967296 bytes, more than the 1000 expected"),
        "{e}"
    );
}

#[test]
fn a_server_that_accepts_and_never_answers_times_out() {
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let url = answer_then_stall(b"", rx);
    let e = fails_cleanly(&url, 1000, "silent");
    assert!(
        e.contains("timed out waiting for the server to answer: nothing for 0.4 s"),
        "{e}"
    );
}

#[test]
fn a_body_that_stops_coming_times_out_and_leaves_no_file() {
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let url = answer_then_stall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst bytes",
        rx,
    );
    let e = fails_cleanly(&url, 1000, "stall");
    assert!(
        e.contains(
            "broke off after 11 bytes of 1000: timed out: the server sent nothing for 0.5 s"
        ),
        "{e}"
    );
}

#[test]
fn a_tls_handshake_that_stalls_times_out() {
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let url = answer_then_stall(b"", rx).replace("http://", "https://");
    let e = fails_cleanly(&url, 1000, "tls");
    assert!(
        e.contains("failed: timed out: the server sent nothing for 0.5 s"),
        "{e}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn an_archive_is_unpacked_and_leaves_no_temporary_folder() {
    // A .tar.gz with one folder holding one file.
    let mut tar = tar::Builder::new(Vec::new());
    let content = b"records";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "set/data_batch_1.bin", &content[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let archive = gz.finish().unwrap();
    let url = serve(archive.clone(), archive.len(), false, 1);
    let root = tmp("unpack");
    std::fs::create_dir_all(root.join(".unpack-4294967295/set")).unwrap();
    let r = Resource {
        url: format!("{url}set.tar.gz"),
        file: "set.tar.gz".into(),
        md5: md5_of(&archive, "unpack"),
        max_bytes: 1 << 20,
        unpack: true,
    };
    fetch(&[r], &root, &opts(), |_, _, _| {}).unwrap();
    assert_eq!(listing(&root), vec!["set", "set.tar.gz"]);
    assert_eq!(
        std::fs::read(root.join("set/data_batch_1.bin")).unwrap(),
        content
    );
    std::fs::remove_dir_all(&root).ok();
}

#[cfg(unix)]
#[test]
fn a_fifo_where_the_file_goes_is_refused_before_the_download_and_kept() {
    // The download's rename replaced it (and would replace a device node, as root).
    use std::os::unix::fs::FileTypeExt;
    let b = body();
    let url = serve(b.clone(), b.len(), false, 1);
    let root = tmp("fifo");
    std::fs::create_dir_all(&root).unwrap();
    let fifo = root.join("data.bin");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        return;
    }
    let r = Resource {
        url: format!("{url}data.bin"),
        file: "data.bin".into(),
        md5: md5_of(&b, "fifo"),
        max_bytes: 1 << 20,
        unpack: false,
    };
    let e = fetch(&[r], &root, &opts(), |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.bin: cannot write: not a regular file"),
        "{e}"
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(listing(&root), vec!["data.bin"]);
    std::fs::remove_dir_all(&root).ok();
}
