//! The Python package against the extension module this build made: python/tests (no torch
//! needed) and the same numbers as the CLI. Needs `python3` (3.9 or newer) on the PATH;
//! `.ci/run` installs it. Torch's capture step is checked by tools/check_python_torch.py.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the extension module: `cargo test` need not build a cdylib (no test links it),
/// so it is built here, as `cargo test --workspace` builds everything else (the test
/// profile, the targets it builds, so the same features): after that command's own
/// build, only the extension's link is new. Once per test binary.
fn build_extension() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--profile",
                "test",
                "--workspace",
                "--lib",
                "--bins",
                "--tests",
                "--examples",
            ])
            .current_dir(repo())
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building the extension failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The extension (target/<profile>/lib_native.so), installed with python/vramlab/*.py as a
/// package `vramlab` in a fresh folder, as maturin lays it out.
fn package() -> tempdir::Dir {
    build_extension();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let lib = ["lib_native.so", "lib_native.dylib", "_native.dll"]
        .iter()
        .map(|n| profile_dir.join(n))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no extension module built in {}", profile_dir.display()));
    let dir = tempdir::Dir::new("vramlab-py");
    let pkg = dir.path().join("vramlab");
    std::fs::create_dir(&pkg).unwrap();
    for e in std::fs::read_dir(repo().join("python/vramlab")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "py") {
            std::fs::copy(&p, pkg.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(lib, pkg.join("_native.abi3.so")).unwrap();
    dir
}

fn python(dir: &Path) -> Command {
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", dir)
        .env("VRAMLAB_REPO", repo())
        .env_remove("PYTHONHOME")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir);
    c
}

mod tempdir {
    use std::path::{Path, PathBuf};
    /// A folder under the target's tmp dir, removed when dropped.
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("{prefix}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn python_tests_pass_against_the_built_extension() {
    let dir = package();
    let out = python(dir.path())
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(repo().join("python/tests"))
        .output()
        .expect("python3 is needed for the Python package's tests (apt-get install python3)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // unittest reports on stderr: every test ran, none skipped.
    let ran: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(ran >= 15, "{err}");
    assert!(!err.contains("skipped"), "{err}");
}

#[test]
fn python_gets_the_clis_numbers() {
    let dir = package();
    let cases: [&[&str]; 3] = [
        &[
            "memory",
            "resnet18",
            "--batch-size",
            "16",
            "--optimizer",
            "sgd",
            "--momentum",
            "0.9",
        ],
        &[
            "memory",
            "vit_b_16",
            "--batch-size",
            "8",
            "--precision",
            "amp-bf16",
            "--gpu",
            "h100",
        ],
        &[
            "fit",
            "efficientnet_b0",
            "--gpu",
            "rtx-4090",
            "--optimizer",
            "adamw",
        ],
    ];
    for args in cases {
        let mut json = args.to_vec();
        json.push("--json");
        let cli = vramlab::run_captured(&json);
        assert_eq!(cli.code, 0, "{:?}", cli.error);
        let want: serde_json::Value = serde_json::from_str(&cli.stdout).unwrap();
        // The same command through the Python API's keyword arguments.
        let (cmd, model) = (args[0], args[1]);
        let kwargs: Vec<String> = args[2..]
            .chunks(2)
            .map(|kv| {
                format!(
                    "{}={:?}",
                    kv[0].trim_start_matches("--").replace('-', "_"),
                    kv[1]
                )
            })
            .collect();
        let script = format!(
            "import json, vramlab\nr = vramlab.{cmd}({model:?}, {})\nprint(json.dumps(r.to_dict()))",
            kwargs.join(", ").replace("batch_size=\"16\"", "batch_size=16").replace("batch_size=\"8\"", "batch_size=8")
        );
        let out = python(dir.path()).args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got, want, "{args:?}");
    }
}

/// The README's ```python blocks that need no torch, run as written (the one that
/// captures a torchvision model runs in tools/check_python_torch.py).
#[test]
fn readme_python_without_torch_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in readme.lines() {
        match (&mut cur, line.trim()) {
            (None, "```python") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    let plain: Vec<&String> = blocks
        .iter()
        .filter(|b| !b.contains("import torch"))
        .collect();
    assert_eq!((blocks.len(), plain.len()), (2, 1), "{blocks:?}");
    let dir = package();
    // The README's paths are the checkout's.
    let out = python(dir.path())
        .current_dir(repo())
        .args(["-c", plain[0]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    // summary of the .pt2 fixture: PyTorch's parameter count (pt2_fixtures.json).
    assert_eq!(lines[2], "19994", "{text}");
}
