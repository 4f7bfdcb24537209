//! Hostile and careless use of the binary as a whole: closed pipes, help, wide tables.

use std::process::{Command, Stdio};

fn vramlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
}

#[test]
fn a_closed_stdout_ends_the_program_quietly() {
    // `vramlab models --json | head -c 0`: the reader is gone before the first write.
    for args in [
        &["models", "--json"][..],
        &["summary", "resnet50"][..],
        &["memory", "resnet18", "--json"][..],
        &["gpus"][..],
    ] {
        let mut child = vramlab()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vramlab");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        // Killed by SIGPIPE (as `cat` is) or done before noticing: never exit 101.
        assert_ne!(out.status.code(), Some(101), "{args:?}");
    }
}

#[test]
fn summary_of_a_batchnorm_model_at_a_small_input_works_at_its_default_batch() {
    let out = vramlab()
        .args([
            "summary",
            "resnet18",
            "--input",
            "3x32x32",
            "--num-classes",
            "10",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("batch 2 for the bytes kept for backward"),
        "{stdout}"
    );
    assert!(stdout.contains("layer4.0.bn1"), "{stdout}");
    assert!(stdout.contains("11,181,642"), "{stdout}");
    // An explicit batch 1 is PyTorch's error, named.
    let out = vramlab()
        .args(["summary", "resnet18", "--input", "3x32x32", "-b", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Expected more than 1 value per channel"));
}

#[test]
fn the_memory_table_fits_an_80_column_terminal() {
    for lang in ["en", "zh"] {
        let out = vramlab()
            .args(["memory", "resnet50", "--lang", lang])
            .env("COLUMNS", "80")
            .output()
            .expect("run");
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let table: Vec<&str> = stdout
            .lines()
            .skip(2)
            .take_while(|l| !l.is_empty())
            .collect();
        assert!(table.len() > 9, "{stdout}");
        for l in table {
            let w: usize = l
                .chars()
                .map(|c| if (c as u32) >= 0x2E80 { 2 } else { 1 })
                .sum();
            assert!(w <= 80, "{lang}: {w} columns: {l}");
        }
    }
}

#[test]
fn bench_help_names_both_benchmarks() {
    let out = vramlab().args(["bench", "--help"]).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("loader") && stdout.contains("train"),
        "{stdout}"
    );
    assert!(stdout.contains("training engine"), "{stdout}");
}

#[test]
fn an_unwritable_report_path_is_refused_before_any_work() {
    let dir = std::env::temp_dir().join(format!("vramlab-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (out, why) in [
        (dir.join("missing/r.html"), "No such file"),
        (dir.clone(), "it is a folder"),
    ] {
        let t = std::time::Instant::now();
        let o = vramlab()
            .args(["report", "resnet50", "--gpu", "h100", "--out"])
            .arg(&out)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--out") && stderr.contains(why), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(t.elapsed().as_secs() < 5);
    }
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_full_disk_on_stdout_is_one_error_line_not_a_panic() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // not Linux
    };
    let o = vramlab()
        .args(["models", "--json"])
        .stdout(full)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: cannot write the output: No space left on device (os error 28)"
    );
}

#[test]
fn a_shape_error_in_a_model_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("vramlab-shape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join("m.toml");
    std::fs::write(
        &f,
        "name = \"m\"\ninput = [1, 28, 28]\nlayers = [\n  { type = \"Conv2d\", in_channels = 3, out_channels = 4, kernel_size = 3 },\n]\n",
    )
    .expect("write");
    let o = vramlab().arg("memory").arg(&f).output().expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr.starts_with(&format!("error: {}: layer `0`", f.display())),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_plot_path_that_cannot_be_written_is_refused_before_the_search() {
    for (plot, why) in [
        ("/nonexistent-dir/fit.svg", "No such file"),
        ("fit.txt", "a plot is .svg or .png"),
    ] {
        let o = vramlab()
            .args(["fit", "resnet50", "--gpu", "h100", "--plot", plot])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--plot") && stderr.contains(why),
            "{stderr}"
        );
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn every_command_takes_lang_and_an_untranslated_one_says_so() {
    // Before the option or after the command, on the command line or from VRAMLAB_LANG.
    let o = vramlab()
        .args(["--lang", "zh", "memory", "simple_cnn"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("批大小 64"));
    let o = vramlab()
        .args(["fit", "simple_cnn", "--memory", "1GiB"])
        .env("VRAMLAB_LANG", "zh")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("使用 Adam() 训练"));
    // A bad variable is named as the variable (it was reported as `--lang`).
    let o = vramlab()
        .args(["models"])
        .env("VRAMLAB_LANG", "xx")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: VRAMLAB_LANG `xx`: expected en or zh (or unset it)\n"
    );
    // ...and only read where --lang is not given: --help and an explicit --lang work.
    for args in [&["--help"][..], &["models", "--lang", "en"][..]] {
        let o = vramlab()
            .args(args)
            .env("VRAMLAB_LANG", "xx")
            .output()
            .expect("run");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for args in [
        &["models", "--lang", "zh"][..],
        &["gpus", "--lang", "zh"][..],
    ] {
        let o = vramlab().args(args).output().expect("run");
        assert!(o.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("prints English only"), "{args:?}: {stderr}");
    }
    let o = vramlab()
        .args(["tour", "--lang", "zh"])
        .output()
        .expect("run");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn absurd_batches_and_clusters_are_refused_by_name() {
    let out = vramlab()
        .args(["memory", "resnet18", "--batch-size", "18446744073709551615"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: --batch-size 18446744073709551615: the batch of"),
        "{err}"
    );
    let out = vramlab()
        .args([
            "fit",
            "resnet18",
            "--memory",
            "8GiB",
            "--gpus",
            "4294967295",
            "--nodes",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than the 1048576 planned"), "{err}");
}

/// Model files a hostile pass found accepted (session 11): a parameter used as a value
/// named like another layer's parameter (training then panicked saving its checkpoint:
/// a state_dict cannot hold two keys alike), an in-place ReLU over a Tanh's output
/// (which PyTorch refuses at backward; the engine trained it with a gradient no PyTorch
/// run gives), and a partition size whose square wraps to the input's (4.6e18-pixel
/// partitions planned as 8x8 ones).
#[test]
fn model_files_whose_names_collide_or_sizes_wrap_are_refused() {
    let dir = format!("{}/tests/fixtures/hostile11", env!("CARGO_MANIFEST_DIR"));
    for (file, want) in [
        (
            "duplicate_param_name.toml",
            "invalid graph: two parameters are both named `c.bias` (layers `c` and `c.bias`)",
        ),
        (
            "tanh_relu_inplace.toml",
            "layer `2`: PyTorch fails here: ReLU(inplace=True) overwrites the output of layer \
             `1` (Tanh), which its backward reads: RuntimeError: one of the variables needed \
             for gradient computation has been modified by an inplace operation",
        ),
        (
            "conv_pad_huge.toml",
            "layer `0`: padding 9223372036854775807x9223372036854775807 makes a padded input \
             of more than 2^128 elements per image",
        ),
        (
            "departition_wrap.toml",
            "layer `1`: shape '[B, 4, 4, 4611686018427387912, 4611686018427387912, 3]' is \
             invalid for input of size B*3072",
        ),
    ] {
        let path = format!("{dir}/{file}");
        for cmd in ["summary", "memory"] {
            let o = vramlab().args([cmd, &path]).output().expect("run");
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{cmd} {file}: {stderr}");
            assert!(stderr.contains(want), "{cmd} {file}: {stderr}");
            // Each names the file, PyTorch's own errors included.
            assert!(stderr.starts_with(&format!("error: {path}: ")), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
}

/// A layer name of a megabyte, padded into each of 20,000 table rows, made `summary`
/// of a 1.4 MB file allocate 20 GB; names are now at most 512 characters. A Concat
/// branch's name follows the rules of a layer's.
#[test]
fn layer_names_are_bounded_and_branch_names_checked() {
    let dir = std::env::temp_dir().join(format!("vramlab-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let long = dir.join("long.toml");
    let mut text = format!(
        "input = [3, 8, 8]\n[[layers]]\ntype = \"Conv2d\"\nname = \"{}\"\nin_channels = 3\n\
         out_channels = 4\nkernel_size = 3\n",
        "a".repeat(513)
    );
    for _ in 0..2000 {
        text.push_str("[[layers]]\ntype = \"ReLU\"\n");
    }
    std::fs::write(&long, text).expect("write");
    let branch = dir.join("branch.toml");
    std::fs::write(
        &branch,
        "input = [4, 8, 8]\n[[layers]]\ntype = \"Concat\"\nname = \"dense\"\n\
         [[layers.branches]]\nname = \"a..b\"\n[[layers.branches.layers]]\ntype = \"ReLU\"\n",
    )
    .expect("write");
    for (file, want) in [
        (
            &long,
            "invalid graph: a layer's name (`aaaaaaaaaaaaaaaaaaaaaaaa...`) is 513 characters \
             long, more than the 512 a name may have",
        ),
        (
            &branch,
            "layer `dense` (Concat): branch 0: `name` \"a..b\" has an empty part",
        ),
    ] {
        let o = vramlab().arg("summary").arg(file).output().expect("run");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(o.stdout.len() < 1000, "nothing but the error");
    }
    std::fs::remove_dir_all(&dir).ok();
}
