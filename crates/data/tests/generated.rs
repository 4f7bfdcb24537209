//! CIFAR-10/100 and image folders, on files generated in their exact formats.

use std::path::{Path, PathBuf};

use vramlab_data::cifar::{encode, PIXELS};
use vramlab_data::folder::FolderOptions;
use vramlab_data::{open, show, OpenOptions};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramlab-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 32x32 image whose pixel (y, x) is pure red at (0, 0), green at (0, 1), blue at (1, 0).
fn rgb_probe() -> Vec<u8> {
    let mut px = vec![0u8; PIXELS];
    px[0] = 255; // R plane, (0,0)
    px[1024 + 1] = 255; // G plane, (0,1)
    px[2048 + 32] = 255; // B plane, (1,0)
    px
}

fn write_cifar10(dir: &Path, per_file: usize) {
    for i in 1..=5 {
        let labels: Vec<Vec<u8>> = (0..per_file).map(|j| vec![((i + j) % 10) as u8]).collect();
        let pixels: Vec<Vec<u8>> = (0..per_file).map(|_| rgb_probe()).collect();
        std::fs::write(
            dir.join(format!("data_batch_{i}.bin")),
            encode(&labels, &pixels),
        )
        .unwrap();
    }
    let labels: Vec<Vec<u8>> = (0..per_file).map(|j| vec![(j % 10) as u8]).collect();
    let pixels: Vec<Vec<u8>> = (0..per_file).map(|_| rgb_probe()).collect();
    std::fs::write(dir.join("test_batch.bin"), encode(&labels, &pixels)).unwrap();
}

#[test]
fn cifar10_reads_all_batches_and_keeps_the_colour_order_into_the_png() {
    let root = tmp("c10");
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    write_cifar10(&dir, 7);
    let ds = open("cifar10", Some(&root), &Default::default()).unwrap();
    assert_eq!(ds.shape, [3, 32, 32]);
    assert_eq!(ds.train.len(), 35);
    assert_eq!(ds.test.as_ref().unwrap().len(), 7);
    assert_eq!(ds.classes[ds.train.labels[0] as usize], "automobile");
    // End to end: the PNG that `show` writes has a red, a green and a blue pixel.
    let img = show::sample(&ds, &ds.train, 0, 4).unwrap();
    let png = root.join("probe.png");
    show::save_png(&img, &png).unwrap();
    let back = image::open(&png).unwrap().to_rgb8();
    assert_eq!(back.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(back.get_pixel(4, 0).0, [0, 255, 0]);
    assert_eq!(back.get_pixel(0, 4).0, [0, 0, 255]);
    assert_eq!(back.get_pixel(4, 4).0, [0, 0, 0]);
    // A path works as well as a name.
    let by_path = open(root.to_str().unwrap(), None, &Default::default()).unwrap();
    assert_eq!(by_path.train.len(), 35);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn cifar10_with_a_truncated_batch_names_the_file() {
    let root = tmp("c10bad");
    write_cifar10(&root, 2);
    let f = root.join("data_batch_3.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&f, bytes).unwrap();
    let e = open("cifar10", Some(&root), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "data_batch_3.bin: size 6046 bytes is not a multiple of the 3073-byte CIFAR-10 record"
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn cifar100_gives_fine_or_coarse_classes() {
    let root = tmp("c100");
    let labels: Vec<Vec<u8>> = (0..20)
        .map(|j| vec![(j % 20) as u8, (j * 5 % 100) as u8])
        .collect();
    let pixels: Vec<Vec<u8>> = (0..20).map(|_| rgb_probe()).collect();
    std::fs::write(root.join("train.bin"), encode(&labels, &pixels)).unwrap();
    std::fs::write(root.join("test.bin"), encode(&labels[..4], &pixels[..4])).unwrap();
    let fine = open("cifar100", Some(&root), &Default::default()).unwrap();
    assert_eq!(fine.classes.len(), 100);
    assert_eq!(fine.classes[fine.train.labels[1] as usize], "bed");
    let coarse = open(
        "cifar100",
        Some(&root),
        &OpenOptions {
            coarse_labels: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(coarse.classes.len(), 20);
    assert_eq!(coarse.classes[coarse.train.labels[1] as usize], "fish");
    std::fs::remove_dir_all(&root).ok();
}

fn save(img: &image::RgbImage, path: &Path) {
    img.save(path).unwrap();
}

fn folder_with_formats() -> PathBuf {
    let root = tmp("folder");
    for (class, colour) in [("cats", [200u8, 10, 10]), ("dogs", [10, 10, 200])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        let img = image::RgbImage::from_pixel(8, 6, image::Rgb(colour));
        for ext in ["png", "jpg", "bmp", "gif", "webp"] {
            save(&img, &root.join(class).join(format!("a.{ext}")));
        }
    }
    root
}

#[test]
fn image_folders_read_every_format_with_sorted_classes() {
    let root = folder_with_formats();
    let ds = open(root.to_str().unwrap(), None, &Default::default()).unwrap();
    assert_eq!(ds.classes, vec!["cats", "dogs"]);
    assert_eq!(ds.shape, [3, 6, 8]);
    assert_eq!(ds.train.len(), 10);
    // The PNG of a cat is red: planar R first.
    let cat = ds.image(&ds.train, 4); // cats/a.png, after bmp, gif, jpg
    assert_eq!((cat[0], cat[48], cat[96]), (200, 10, 10));
    let opts = OpenOptions {
        folder: FolderOptions {
            resize: Some(vec![4]),
            center_crop: Some([4, 4]),
            grayscale: true,
        },
        ..Default::default()
    };
    let small = open(root.to_str().unwrap(), None, &opts).unwrap();
    assert_eq!(small.shape, [1, 4, 4]);
    // PIL luma of (200, 10, 10): (200*299 + 10*587 + 10*114) / 1000 = 66.8 -> 67.
    assert_eq!(small.image(&small.train, 4)[0], 67);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bad_folders_are_clear_errors_naming_the_file() {
    let root = folder_with_formats();
    std::fs::write(root.join("cats/empty.png"), b"").unwrap();
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.png: zero-byte file"), "{e}");
    std::fs::remove_file(root.join("cats/empty.png")).unwrap();
    std::fs::write(root.join("cats/notes.txt"), b"hello").unwrap();
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("notes.txt: not an image file"), "{e}");
    std::fs::remove_file(root.join("cats/notes.txt")).unwrap();
    std::fs::write(root.join("cats/fake.png"), b"this is not a png").unwrap();
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fake.png: cannot decode the image"), "{e}");
    std::fs::remove_file(root.join("cats/fake.png")).unwrap();
    save(&image::RgbImage::new(5, 5), &root.join("dogs/big.png"));
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("big.png: is 3x5x5 but") && e.contains("need --resize"),
        "{e}"
    );
    std::fs::remove_file(root.join("dogs/big.png")).unwrap();
    std::fs::create_dir_all(root.join("birds")).unwrap();
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("birds: empty class folder"), "{e}");
    let empty = tmp("emptyroot");
    let e = open(empty.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no class folders"), "{e}");
    std::fs::remove_dir_all(&root).ok();
    std::fs::remove_dir_all(&empty).ok();
}

#[test]
fn idx_sets_check_counts_and_labels() {
    use vramlab_data::idx::encode as idx;
    let root = tmp("idx");
    std::fs::write(
        root.join("train-images-idx3-ubyte"),
        idx(&[3, 2, 2], &[0; 12]),
    )
    .unwrap();
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx(&[2], &[0, 1])).unwrap();
    let e = open("mnist", Some(&root), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte: 2 labels, but") && e.contains("has 3 images"),
        "{e}"
    );
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx(&[3], &[0, 1, 12])).unwrap();
    let e = open("mnist", Some(&root), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label 12 at index 2 is out of range: mnist has 10 classes"),
        "{e}"
    );
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx(&[3], &[0, 1, 9])).unwrap();
    let ds = open("mnist", Some(&root), &Default::default()).unwrap();
    assert_eq!(ds.classes[9], "9 - nine");
    assert!(ds.test.is_none());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn emnist_images_are_transposed_back_as_torchvision_does() {
    use vramlab_data::idx::encode as idx;
    let root = tmp("emnist");
    // One 2x3 image stored transposed: rows [1 2 3] [4 5 6] read back as 3x2 [1 4] [2 5] [3 6].
    std::fs::write(
        root.join("emnist-balanced-train-images-idx3-ubyte"),
        idx(&[1, 2, 3], &[1, 2, 3, 4, 5, 6]),
    )
    .unwrap();
    std::fs::write(
        root.join("emnist-balanced-train-labels-idx1-ubyte"),
        idx(&[1], &[36]),
    )
    .unwrap();
    let ds = open("emnist-balanced", Some(&root), &Default::default()).unwrap();
    assert_eq!(ds.shape, [1, 3, 2]);
    assert_eq!(ds.image(&ds.train, 0), &[1, 4, 2, 5, 3, 6]);
    assert_eq!(ds.classes.len(), 47);
    assert_eq!(ds.classes[36], "a");
    assert!(open("emnist-nonsense", Some(&root), &Default::default())
        .unwrap_err()
        .to_string()
        .contains("unknown EMNIST split"));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn the_terminal_preview_uses_true_colour_half_blocks() {
    let img = image::RgbImage::from_fn(2, 3, |x, y| image::Rgb([x as u8 * 100, y as u8 * 50, 7]));
    let s = show::ansi_preview(&img);
    // 3 pixel rows make 2 text rows of 2 cells; each cell is an upper half block.
    assert_eq!(s.lines().count(), 2);
    assert_eq!(s.matches('\u{2580}').count(), 4);
    assert!(
        s.starts_with("\x1b[38;2;0;0;7m\x1b[48;2;0;50;7m\u{2580}"),
        "{s:?}"
    );
    assert!(s.contains("\x1b[0m\n"));
}

/// Runs `f` on another thread and fails (instead of hanging) if it takes over `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("finished in time instead of hanging")
}

#[test]
fn idx_sets_of_empty_images_or_no_images_are_refused_naming_the_file() {
    use vramlab_data::idx::encode as idx;
    let root = tmp("idx-zero");
    std::fs::write(root.join("train-images-idx3-ubyte"), idx(&[5, 0, 0], &[])).unwrap();
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx(&[5], &[0; 5])).unwrap();
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "train-images-idx3-ubyte: images of 0x0 pixels: height and width must be at least 1"
        ),
        "{e}"
    );
    std::fs::write(root.join("train-images-idx3-ubyte"), idx(&[0, 28, 28], &[])).unwrap();
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx(&[0], &[])).unwrap();
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "train-images-idx3-ubyte: no images: the train split is empty (dimensions [0, 28, 28])"
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[cfg(unix)]
fn mkfifo(path: &Path) -> bool {
    std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(unix)]
#[test]
fn a_fifo_named_like_a_data_file_is_refused_without_blocking() {
    let root = folder_with_formats();
    if !mkfifo(&root.join("cats/1.png")) {
        eprintln!("skipped: no mkfifo");
        return;
    }
    let r = root.clone();
    let e = within(20, move || {
        open(r.to_str().unwrap(), None, &Default::default())
            .unwrap_err()
            .to_string()
    });
    assert!(
        e.ends_with(
            "cats/1.png: not a regular file (a FIFO, socket or device): only regular files are read"
        ),
        "{e}"
    );
    // A CIFAR batch that is a FIFO, too.
    let c10 = tmp("c10fifo");
    write_cifar10(&c10, 1);
    std::fs::remove_file(c10.join("data_batch_2.bin")).unwrap();
    assert!(mkfifo(&c10.join("data_batch_2.bin")));
    let c = c10.clone();
    let e = within(20, move || {
        open("cifar10", Some(&c), &Default::default())
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("data_batch_2.bin: not a regular file"), "{e}");
    std::fs::remove_dir_all(&root).ok();
    std::fs::remove_dir_all(&c10).ok();
}

#[test]
fn a_resize_beyond_the_limit_is_an_error_not_an_abort() {
    let root = folder_with_formats();
    let opts = |resize: Vec<u32>| OpenOptions {
        folder: FolderOptions {
            resize: Some(resize),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = open(root.to_str().unwrap(), None, &opts(vec![u32::MAX]))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--resize 4294967295: a size must be between 1 and 65536");
    let e = open(root.to_str().unwrap(), None, &opts(vec![60000, 60000]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--resize 60000x60000 gives images of 60000x60000 pixels (height x width), larger than the limit of 65536 pixels a side and 128 megapixels"
    );
    // The shorter side of 6x8 images to 60000 makes the longer 80000: refused per image.
    let e = open(root.to_str().unwrap(), None, &opts(vec![60000]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            ": --resize 60000 makes this 6x8 image 60000x80000 pixels (height x width), larger than the limit"
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_grid_of_large_photos_is_made_of_bounded_thumbnails() {
    let root = tmp("photos");
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        let img = image::RgbImage::from_pixel(4000, 3000, image::Rgb([30, 60, 90]));
        save(&img, &root.join(class).join("photo.png"));
    }
    let ds = open(root.to_str().unwrap(), None, &Default::default()).unwrap();
    assert_eq!(ds.shape, [3, 3000, 4000]);
    // What `report --data` draws: 6 per class at scale 3 would be 72000 pixels wide.
    let g = show::grid(&ds, &ds.train, 6, 3).unwrap();
    // Label column 16 + 8*2 = 32 wide; cells 256x192 with a 4-pixel gap.
    assert_eq!((g.width(), g.height()), (32 + 6 * 260, 2 * 196));
    assert_eq!(g.get_pixel(32, 0).0, [30, 60, 90]);
    // One sample at scale 8 is 32000x24000: refused.
    let e = show::sample(&ds, &ds.train, 0, 8).unwrap_err().to_string();
    assert_eq!(
        e,
        "a 3000x4000 image at --scale 8 would be 24000x32000 pixels (height x width), larger than the limit of 65536 pixels a side and 128 megapixels"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_long_thin_idx_image_at_a_large_scale_is_refused() {
    use vramlab_data::idx::encode as idx;
    let root = tmp("thin");
    std::fs::write(
        root.join("train-images-idx3-ubyte"),
        idx(&[1, 1, 4_000_000], &vec![9u8; 4_000_000]),
    )
    .unwrap();
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx(&[1], &[0])).unwrap();
    let ds = open(root.to_str().unwrap(), None, &Default::default()).unwrap();
    let e = show::sample(&ds, &ds.train, 0, 64).unwrap_err().to_string();
    assert_eq!(
        e,
        "a 1x4000000 image at --scale 64 would be 64x256000000 pixels (height x width), larger than the limit of 65536 pixels a side and 128 megapixels"
    );
    // The grid shrinks it into one cell: 256x1.
    let g = show::grid(&ds, &ds.train, 1, 4).unwrap();
    assert_eq!((g.width(), g.height()), (16 + 16 + 260, 20));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn an_image_claiming_huge_dimensions_is_an_error_naming_the_file() {
    let root = folder_with_formats();
    // A valid 1x1 PNG whose header then claims 100000x100000.
    let mut png = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(root.join("cats/huge.png"), &png).unwrap();
    let e = open(root.to_str().unwrap(), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("huge.png: cannot decode the image"), "{e}");
    std::fs::remove_dir_all(&root).ok();
}

#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_an_idx_file_is_named_not_skipped() {
    use vramlab_data::idx::encode as idx;
    let root = tmp("idx-fifo");
    std::fs::write(root.join("train-labels-idx1-ubyte"), idx(&[1], &[0])).unwrap();
    if !mkfifo(&root.join("train-images-idx3-ubyte")) {
        return;
    }
    let r = root.clone();
    let e = within(20, move || {
        open("mnist", Some(&r), &Default::default())
            .unwrap_err()
            .to_string()
    });
    assert!(
        e.ends_with("train-images-idx3-ubyte: not a regular file (a FIFO, socket or device): only regular files are read"),
        "{e}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// A small fuzz run without a fuzzer: valid files of every format with random bytes
/// changed never panic the readers (errors are fine).
#[test]
fn mutated_files_of_every_format_are_parsed_or_refused_never_a_panic() {
    use vramlab_data::folder::decode_bytes;
    use vramlab_data::idx::{encode as idx, parse, parse_gzip};
    use vramlab_data::rng::Rng;
    let img = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 99]));
    let mut files: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, fmt) in [
        ("a.png", image::ImageFormat::Png),
        ("a.jpg", image::ImageFormat::Jpeg),
        ("a.gif", image::ImageFormat::Gif),
        ("a.bmp", image::ImageFormat::Bmp),
        ("a.webp", image::ImageFormat::WebP),
    ] {
        let mut b = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut b), fmt)
            .unwrap();
        files.push((name, b));
    }
    let raw = idx(&[2, 3, 4], &[5; 24]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    files.push(("a.idx", raw));
    files.push(("a.idx.gz", gz.finish().unwrap()));
    let opts = FolderOptions {
        resize: Some(vec![5]),
        center_crop: Some([4, 4]),
        grayscale: false,
    };
    let mut rng = Rng::new(17);
    for (name, good) in &files {
        let path = Path::new(name);
        for _ in 0..300 {
            let mut b = good.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len() as u64) as usize;
                b[at] = rng.below(256) as u8;
            }
            if rng.below(4) == 0 {
                b.truncate(rng.below(b.len() as u64) as usize);
            }
            if name.contains(".idx") {
                let _ = parse(&b, path);
                let _ = parse_gzip(&b, path);
            } else if let Ok(([c, h, w], px)) = decode_bytes(&b, path, &opts) {
                assert_eq!(px.len(), c * h * w);
            }
        }
    }
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A 70-byte PNG whose header declares 20000x20000 pixels is refused by its header,
/// before its pixels are decoded (it decoded 400 MB first).
#[test]
fn an_image_is_refused_by_its_declared_size_before_decoding() {
    let root = tmp("declared");
    std::fs::create_dir_all(root.join("a")).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit grayscale
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // The first bytes of a zlib stream: the header is all that is read.
    let idat = b"IDAT\x78\x9c";
    png.extend(2u32.to_be_bytes());
    png.extend(idat);
    png.extend(crc32(idat).to_be_bytes());
    png.extend(0u32.to_be_bytes());
    png.extend(b"IEND");
    png.extend(crc32(b"IEND").to_be_bytes());
    let file = root.join("a").join("bomb.png");
    std::fs::write(&file, &png).unwrap();
    let e = vramlab_data::folder::decode(&file, &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the image is 20000x20000 pixels (height x width), larger than the limit"),
        "{e}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// A --resize whose images cannot fit the split's cap is refused before any image is
/// decoded (50 tiny images at --resize 11000 would be 18 GB: it started resizing them).
#[test]
fn a_resize_past_the_split_cap_is_refused_before_decoding() {
    let root = tmp("resize-cap");
    std::fs::create_dir_all(root.join("a")).unwrap();
    let img = image::RgbImage::from_pixel(2, 2, image::Rgb([1, 2, 3]));
    for i in 0..50 {
        img.save(root.join("a").join(format!("{i}.png"))).unwrap();
    }
    let r = root.clone();
    let e = within(20, move || {
        let opts = OpenOptions {
            folder: FolderOptions {
                resize: Some(vec![11000]),
                ..Default::default()
            },
            ..Default::default()
        };
        open(r.to_str().unwrap(), None, &opts)
            .unwrap_err()
            .to_string()
    });
    assert!(
        e.contains("the images decode to more than 16 GiB") && e.contains("(smaller) --resize"),
        "{e}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// `data info` describes an image folder from its images' headers: the same shape,
/// classes and counts as reading it, for every preprocessing, and the same errors for
/// sizes that disagree; only pixels broken past a valid header are left to decoding.
#[test]
fn summarize_describes_a_folder_as_open_reads_it_without_decoding() {
    use vramlab_data::summarize;
    let root = tmp("summary");
    let sizes = [(8, 6), (10, 7), (6, 12), (9, 9)];
    for (split, n) in [("train", 3), ("val", 2)] {
        for (k, class) in ["ants", "bees", "wasps"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n + k % 2 {
                let (w, h) = sizes[(i + k) % sizes.len()];
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([(x * 20) as u8, (y * 20) as u8, (i * 50) as u8])
                });
                let ext = ["png", "jpg", "bmp", "gif", "webp"][(i + k) % 5];
                save(&img, &dir.join(format!("{i}.{ext}")));
            }
        }
    }
    let spec = root.to_str().unwrap();
    let with =
        |resize: Option<Vec<u32>>, center_crop: Option<[u32; 2]>, grayscale: bool| OpenOptions {
            folder: FolderOptions {
                resize,
                center_crop,
                grayscale,
            },
            ..Default::default()
        };
    let cases = [
        with(Some(vec![5]), Some([5, 5]), false),
        with(Some(vec![4, 6]), None, false),
        with(Some(vec![7]), Some([6, 7]), true),
        with(Some(vec![3, 3]), None, true),
    ];
    for opts in &cases {
        let s = summarize(spec, None, opts).unwrap();
        let d = open(spec, None, opts).unwrap();
        assert!(!s.decoded);
        assert_eq!(s.shape, d.shape, "{opts:?}");
        assert_eq!(s.classes, d.classes);
        assert_eq!(s.train, d.class_counts(&d.train));
        assert_eq!(s.train, vec![3, 4, 3]);
        assert_eq!(s.test, Some(d.class_counts(d.test.as_ref().unwrap())));
        assert_eq!(s.test, Some(vec![2, 3, 2]));
        assert_eq!(
            (s.name.as_str(), s.source.as_path()),
            (d.name.as_str(), d.source.as_path())
        );
    }
    assert_eq!(summarize(spec, None, &cases[0]).unwrap().shape, [3, 5, 5]);
    assert_eq!(summarize(spec, None, &cases[2]).unwrap().shape, [1, 6, 7]);
    // Errors: sizes that differ, a crop larger than the resized image.
    for opts in [
        OpenOptions::default(),
        with(Some(vec![4]), Some([5, 5]), false),
        with(None, Some([7, 7]), false),
    ] {
        let s = summarize(spec, None, &opts).unwrap_err().to_string();
        let d = open(spec, None, &opts).unwrap_err().to_string();
        assert_eq!(s, d, "{opts:?}");
    }
    // A PNG cut short inside its pixel data: its header is whole, so it is described,
    // and reading it fails naming it.
    let noisy = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([((x * 7) ^ (y * 13)) as u8, (x * y) as u8, (x + 3 * y) as u8])
    });
    let cut = root.join("train/ants/cut.png");
    save(&noisy, &cut);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let opts = &cases[0];
    assert_eq!(summarize(spec, None, opts).unwrap().train, vec![4, 4, 3]);
    let e = open(spec, None, opts).unwrap_err().to_string();
    assert!(e.contains("cut.png: cannot decode the image"), "{e}");
    // An empty file fails in both, with the same words.
    std::fs::write(&cut, b"").unwrap();
    let s = summarize(spec, None, opts).unwrap_err().to_string();
    assert_eq!(s, open(spec, None, opts).unwrap_err().to_string());
    assert!(s.contains("cut.png: zero-byte file: not an image"), "{s}");
    std::fs::remove_dir_all(&root).ok();
}
