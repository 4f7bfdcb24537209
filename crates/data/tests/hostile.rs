//! Options that would be ignored, and names that would drive the terminal.

use std::path::PathBuf;

use vramlab_data::folder::FolderOptions;
use vramlab_data::{idx, open, OpenOptions};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vramlab-data-hostile-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn png(path: &std::path::Path) {
    image::GrayImage::from_pixel(4, 4, image::Luma([9]))
        .save(path)
        .unwrap();
}

#[test]
fn image_folder_options_are_refused_for_idx_and_cifar_not_ignored() {
    // `data info ./idx --resize 16` printed 1x28x28 images: the option did nothing.
    let root = tmp("opts");
    std::fs::write(
        root.join("train-images-idx3-ubyte"),
        idx::encode(&[2, 28, 28], &[0; 2 * 784]),
    )
    .unwrap();
    std::fs::write(
        root.join("train-labels-idx1-ubyte"),
        idx::encode(&[2], &[0, 1]),
    )
    .unwrap();
    let resize = OpenOptions {
        folder: FolderOptions {
            resize: Some(vec![16]),
            ..Default::default()
        },
        coarse_labels: false,
    };
    let e = open(root.to_str().unwrap(), None, &resize)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--resize, --center-crop and --grayscale apply to image folders;"),
        "{e}"
    );
    assert!(e.contains("is a folder of IDX files"), "{e}");
    let gray = OpenOptions {
        folder: FolderOptions {
            grayscale: true,
            ..Default::default()
        },
        coarse_labels: false,
    };
    let e = open("mnist", Some(&root), &gray).unwrap_err().to_string();
    assert!(e.contains("`mnist` is an IDX dataset"), "{e}");
    let e = open("cifar10", Some(&root), &gray).unwrap_err().to_string();
    assert!(e.contains("`cifar10` is CIFAR-10"), "{e}");
    let coarse = OpenOptions {
        coarse_labels: true,
        ..Default::default()
    };
    let e = open(root.to_str().unwrap(), None, &coarse)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--coarse applies to CIFAR-100"), "{e}");
    let e = open("fashion-mnist", Some(&root), &coarse)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--coarse applies to CIFAR-100"), "{e}");
    // Without them the folder reads.
    assert_eq!(
        open(root.to_str().unwrap(), None, &Default::default())
            .unwrap()
            .shape,
        [1, 28, 28]
    );
    // An image folder takes them, but not --coarse.
    let folder = tmp("opts-folder");
    std::fs::create_dir_all(folder.join("a")).unwrap();
    png(&folder.join("a/1.png"));
    let ds = open(folder.to_str().unwrap(), None, &resize).unwrap();
    assert_eq!(ds.shape, [3, 16, 16]);
    let e = open(folder.to_str().unwrap(), None, &coarse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is an image folder"), "{e}");
    std::fs::remove_dir_all(&root).ok();
    std::fs::remove_dir_all(&folder).ok();
}

#[test]
fn a_class_folder_named_with_a_terminal_escape_is_refused_escaped() {
    let root = tmp("names");
    for name in ["cat", "\u{1b}[2J\u{1b}[31mdog"] {
        std::fs::create_dir_all(root.join(name)).unwrap();
        png(&root.join(name).join("1.png"));
    }
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(r#"class folder "\u{1b}[2J\u{1b}[31mdog" contains the character U+001B"#),
        "{e}"
    );
    assert!(
        !e.contains('\u{1b}'),
        "the error itself holds the escape: {e:?}"
    );
    // Unicode names are fine.
    let ok = tmp("names-ok");
    for name in ["猫", "chien"] {
        std::fs::create_dir_all(ok.join(name)).unwrap();
        png(&ok.join(name).join("1.png"));
    }
    let ds = open(ok.to_str().unwrap(), None, &Default::default()).unwrap();
    assert_eq!(ds.classes, vec!["chien".to_string(), "猫".to_string()]);
    std::fs::remove_dir_all(&root).ok();
    std::fs::remove_dir_all(&ok).ok();
}
