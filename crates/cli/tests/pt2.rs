//! `.pt2` archives (torch.export.save) wherever a model is accepted: SimpleCNN's plan
//! equals the zoo model's to the byte, and a damaged archive is one error line, exit
//! code 2. Fixtures: crates/pt2/tests/fixtures (tools/export_pt2_fixtures.py).

use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    format!(
        "{}/../pt2/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn vramlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn simple_cnn_archive_plans_like_the_zoo_model() {
    let file = fixture("simple_cnn_train.pt2");
    let args = ["-b", "8", "--profile", "pytorch-cpu", "--json"];
    let out = vramlab(&[&["memory", file.as_str()][..], &args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        stderr,
        "note: the export traced a fixed batch of 2: planned with --batch-size\n"
    );
    let mut got = json(&out);
    assert_eq!(got["model"], "simple_cnn_train");
    assert_eq!(got["num_params"], 62006);
    assert_eq!(got["batch_size"], 8);
    let mut want = json(&vramlab(&[&["memory", "simple_cnn"][..], &args].concat()));
    assert_eq!(got["peak_bytes"], want["peak_bytes"]);
    // The same plan, but for layer names: the archive names F.relu after its node (`relu`),
    // the zoo after its layer (`relu1`).
    for v in [&mut got, &mut want] {
        v.as_object_mut().unwrap().remove("model");
        for step in v["steps"].as_array_mut().unwrap() {
            let step = step.as_object_mut().unwrap();
            step.remove("peak_layer");
            step.remove("peak_at");
        }
    }
    assert_eq!(got, want);
}

#[test]
fn a_damaged_archive_is_one_line_and_exit_code_2() {
    let dir = std::env::temp_dir().join(format!("vramlab-pt2-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("cut.pt2");
    let bytes = std::fs::read(fixture("small_resnet_train.pt2")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 30]).unwrap();
    let bad = bad.to_str().unwrap();
    let out = vramlab(&[
        "memory",
        bad,
        "-b",
        "8",
        "--profile",
        "pytorch-cpu",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("error: {bad}: not a readable torch.export archive: ");
    assert!(stderr.starts_with(&want), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // A file that is no zip at all.
    let junk = dir.join("junk.pt2");
    std::fs::write(&junk, b"not an archive").unwrap();
    let junk = junk.to_str().unwrap();
    let out = vramlab(&["memory", junk, "-b", "8"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {junk}: not a readable torch.export archive: not a zip archive (no end of \
             central directory record)\n"
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
