//! Every `vramlab` command the README shows, run exactly as written (through `sh -c`,
//! in a fresh directory with `vramlab` on PATH, HOME inside it and the checkout's
//! `models/` and `crates/` (the .pt2 fixtures) linked in), in README order.
//! Commands that read Fashion-MNIST need `dataset-fashion-mnist`, which `.ci/run`
//! installs; `data fetch` is pointed at a local mirror on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `vramlab ...` lines of the README's `sh` blocks, without trailing comments.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md at the workspace root");
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        let l = line.trim();
        if l.starts_with("```") {
            in_sh = l == "```sh" && !in_sh;
            continue;
        }
        if in_sh && l.starts_with("vramlab ") {
            let cmd = match l.find("  #") {
                Some(i) => l[..i].trim_end(),
                None => l,
            };
            out.push(cmd.to_string());
        }
    }
    out
}

/// A mirror that answers every request with 404, so `data fetch` fails cleanly.
fn local_mirror() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    format!("http://{addr}/")
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vramlab"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

#[test]
fn readme_lists_the_commands_a_user_needs() {
    let cmds = readme_commands();
    for needle in [
        "vramlab tour",
        "vramlab memory",
        "vramlab fit",
        "vramlab train",
        "vramlab eval",
        "vramlab predict",
        "vramlab data fetch",
    ] {
        assert!(
            cmds.iter().any(|c| c.starts_with(needle)),
            "README shows no `{needle}`: {cmds:?}"
        );
    }
}

#[test]
fn every_readme_command_runs_as_written() {
    if !Path::new("/usr/share/datasets/fashion-mnist").is_dir() {
        panic!("this test needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist (.ci/run does)");
    }
    let dir = std::env::temp_dir().join(format!("vramlab-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("temp dir");
    // The README's paths are relative to a checkout (models/simple_cnn.toml).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::os::unix::fs::symlink(repo.join("models"), dir.join("models")).expect("link models/");
    std::os::unix::fs::symlink(repo.join("crates"), dir.join("crates")).expect("link crates/");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mirror = local_mirror();
    let mut failures = Vec::new();
    for cmd in readme_commands() {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(&dir)
            .env("PATH", &path)
            .env("HOME", &home)
            .env("VRAMLAB_MIRROR", &mirror)
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = if cmd.starts_with("vramlab data fetch") {
            // The local mirror has no files: one clear line, exit 2, nothing left behind.
            out.status.code() == Some(2)
                && stderr.lines().count() == 1
                && std::fs::read_dir(home.join("data"))
                    .map(|d| d.count() == 0)
                    .unwrap_or(true)
        } else {
            out.status.success() && (!stdout.trim().is_empty() || cmd.contains("--out "))
        };
        if !ok || stderr.contains("panicked") {
            failures.push(format!(
                "`{cmd}`: {:?}\n{}\n{}",
                out.status.code(),
                stdout.chars().take(600).collect::<String>(),
                stderr
            ));
        }
    }
    for file in ["fit.png", "grid.png", "run.safetensors", "report.html"] {
        if !dir.join(file).is_file() {
            failures.push(format!("the README's commands wrote no {file}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
