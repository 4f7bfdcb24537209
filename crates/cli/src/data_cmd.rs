//! `vramlab data info|stats|show|fetch` and `vramlab bench loader`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde::Serialize;
use vramlab_data::folder::FolderOptions;
use vramlab_data::loader::{Loader, LoaderConfig};
use vramlab_data::transform::Pipeline;
use vramlab_data::{fetch, show, stats, Dataset, OpenOptions};

use crate::fmt::{bytes, count, thousands, Table};
use crate::{print_json, Result, UserError};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Samples per split, shape, classes with counts, bytes per image and per batch.
    #[command(
        after_help = "Examples:\n  vramlab data info fashion-mnist\n  vramlab data info cifar10 --root ~/data --batch-size 128 --json\n  vramlab data info ./my_photos --resize 64 --center-crop 64"
    )]
    Info(InfoArgs),
    /// Per-channel mean and std in one pass: what to pass to Normalize.
    #[command(after_help = "Example:\n  vramlab data stats fashion-mnist --split train --json")]
    Stats(StatsArgs),
    /// Write a sample (or a grid of K per class) as PNG, and print its class.
    #[command(
        after_help = "Examples:\n  vramlab data show fashion-mnist --index 0 --out boot.png\n  vramlab data show fashion-mnist --grid 8 --out grid.png"
    )]
    Show(ShowArgs),
    /// Download a dataset from its official location, verified by MD5.
    #[command(after_help = "Example:\n  vramlab data fetch mnist --root ~/data")]
    Fetch(FetchArgs),
}

/// Which dataset, and how to read it.
#[derive(Args, Clone)]
pub struct Source {
    /// fashion-mnist, mnist, kmnist, emnist-<split>, cifar10, cifar100, or a folder.
    pub dataset: String,
    /// Folder with the dataset's files (fashion-mnist defaults to /usr/share/datasets/fashion-mnist).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub folder: FolderArgs,
    /// CIFAR-100: the 20 coarse classes instead of the 100 fine ones.
    #[arg(long)]
    pub coarse: bool,
}

/// How image folders are read: torchvision's Resize, CenterCrop and Grayscale, for every
/// command that opens a dataset.
#[derive(Args, Clone, Default)]
pub struct FolderArgs {
    /// Image folders: Resize (N: shorter side; HxW: exact); images of different sizes
    /// need it.
    #[arg(long, value_name = "N|HxW")]
    pub resize: Option<String>,
    /// Image folders: CenterCrop (N or HxW), after --resize.
    #[arg(long, value_name = "N|HxW")]
    pub center_crop: Option<String>,
    /// Image folders: Grayscale() (one channel).
    #[arg(long)]
    pub grayscale: bool,
}

fn sizes(s: &str, what: &str) -> Result<Vec<u32>> {
    let v: std::result::Result<Vec<u32>, _> = s
        .split(['x', 'X'])
        .map(|p| p.trim().parse::<u32>())
        .collect();
    match v {
        Ok(v) if (v.len() == 1 || v.len() == 2) && v.iter().all(|&d| d > 0) => Ok(v),
        _ => Err(UserError(format!(
            "{what} `{s}`: expected N or HxW with positive sizes"
        ))),
    }
}

impl Source {
    pub fn open(&self) -> Result<Dataset> {
        Ok(vramlab_data::open(
            &self.dataset,
            self.root.as_deref(),
            &self.options()?,
        )?)
    }

    /// What `data info` shows: an image folder's headers are read, not its pixels.
    pub fn summarize(&self) -> Result<vramlab_data::Summary> {
        Ok(vramlab_data::summarize(
            &self.dataset,
            self.root.as_deref(),
            &self.options()?,
        )?)
    }

    fn options(&self) -> Result<OpenOptions> {
        let resize = self
            .folder
            .resize
            .as_deref()
            .map(|s| sizes(s, "--resize"))
            .transpose()?;
        let center_crop = match self
            .folder
            .center_crop
            .as_deref()
            .map(|s| sizes(s, "--center-crop"))
            .transpose()?
        {
            Some(v) if v.len() == 1 => Some([v[0], v[0]]),
            Some(v) => Some([v[0], v[1]]),
            None => None,
        };
        Ok(OpenOptions {
            folder: FolderOptions {
                resize,
                center_crop,
                grayscale: self.folder.grayscale,
            },
            coarse_labels: self.coarse,
        })
    }
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    source: Source,
    /// Batch size for the bytes per batch.
    #[arg(long, short = 'b', default_value_t = 64)]
    batch_size: u64,
    /// Print the description as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct SplitInfo {
    samples: usize,
    class_counts: Vec<usize>,
}

#[derive(Serialize)]
struct Splits {
    train: SplitInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<SplitInfo>,
}

impl Splits {
    fn all(&self) -> Vec<(&'static str, &SplitInfo)> {
        std::iter::once(("train", &self.train))
            .chain(self.test.as_ref().map(|t| ("test", t)))
            .collect()
    }
}

#[derive(Serialize)]
struct Info {
    name: String,
    source: String,
    shape: [usize; 3],
    classes: Vec<String>,
    splits: Splits,
    /// False for an image folder: its images' headers were read, not their pixels.
    decoded: bool,
    bytes_per_image_u8: u128,
    bytes_per_image_f32: u128,
    batch_size: u64,
    /// f32 images plus i64 labels, as the batch sits on the device.
    bytes_per_batch: u128,
}

pub fn info(a: &InfoArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(UserError("--batch-size must be at least 1".into()));
    }
    let ds = a.source.summarize()?;
    let per = ds.shape.iter().map(|&d| d as u128).product::<u128>();
    let split = |counts: &Vec<usize>| SplitInfo {
        samples: counts.iter().sum(),
        class_counts: counts.clone(),
    };
    let splits = Splits {
        train: split(&ds.train),
        test: ds.test.as_ref().map(split),
    };
    let b = a.batch_size as u128;
    let info = Info {
        name: ds.name.clone(),
        source: ds.source.display().to_string(),
        shape: ds.shape,
        classes: ds.classes.clone(),
        splits,
        decoded: ds.decoded,
        bytes_per_image_u8: per,
        bytes_per_image_f32: per * 4,
        batch_size: a.batch_size,
        bytes_per_batch: b * per * 4 + b * 8,
    };
    if a.json {
        return print_json(&info);
    }
    let [c, h, w] = info.shape;
    println!(
        "{} ({}): {c}x{h}x{w} images, {}",
        info.name,
        info.source,
        count(info.classes.len() as u128, "class", "classes")
    );
    for (name, s) in info.splits.all() {
        println!("  {name}: {}", count(s.samples as u128, "image", "images"));
    }
    if !info.decoded {
        println!(
            "  (sizes from each image's header, after the preprocessing asked for; the pixels \
             are decoded when training)"
        );
    }
    println!(
        "  one image: {} as uint8, {} as float32 ({}x{}x{} x 4 B)",
        bytes(info.bytes_per_image_u8),
        bytes(info.bytes_per_image_f32),
        c,
        h,
        w
    );
    println!(
        "  one batch of {}: {} (float32 images {} + int64 labels {})\n",
        a.batch_size,
        bytes(info.bytes_per_batch),
        bytes(b * per * 4),
        bytes(b * 8)
    );
    let mut header = vec!["label", "class"];
    let names: Vec<&str> = info.splits.all().iter().map(|(n, _)| *n).collect();
    header.extend(names.iter().copied());
    let mut right = vec![true, false];
    right.extend(names.iter().map(|_| true));
    let mut t = Table::new(&header, &right);
    for (i, cname) in info.classes.iter().enumerate() {
        let mut row = vec![i.to_string(), cname.clone()];
        for (_, s) in info.splits.all() {
            row.push(thousands(s.class_counts[i] as u128));
        }
        t.row(row);
    }
    print!("{}", t.render());
    Ok(())
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    source: Source,
    /// train or test.
    #[arg(long, default_value = "train")]
    split: String,
    /// Print the statistics as JSON.
    #[arg(long)]
    json: bool,
}

pub fn stats(a: &StatsArgs) -> Result<()> {
    let ds = a.source.open()?;
    let split = ds.split(&a.split)?;
    let s = stats::channel_stats(&ds, split);
    if a.json {
        return print_json(&s);
    }
    // Four decimals, or three significant digits where four decimals would print a
    // small std as 0.0000 (a Normalize that divides by zero).
    let f = |v: &[f64]| {
        v.iter()
            .map(|&x| {
                if x != 0.0 && x.abs() < 1e-3 {
                    format!("{x:.3e}")
                } else {
                    format!("{x:.4}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{} {} split, {} pixels per channel:\n  mean: {}\n  std:  {}\n\ntransforms.Normalize(mean=({},), std=({},))",
        ds.name,
        a.split,
        thousands(s.pixels_per_channel as u128),
        f(&s.mean),
        f(&s.std),
        f(&s.mean),
        f(&s.std)
    );
    let constant: Vec<String> = s
        .std
        .iter()
        .enumerate()
        .filter(|(_, &v)| v == 0.0)
        .map(|(c, _)| c.to_string())
        .collect();
    if !constant.is_empty() {
        println!(
            "\nnote: channel {} is the same in every pixel (std 0): torchvision's Normalize \
             refuses a std of 0 (a division by zero); `vramlab train --normalize auto` uses \
             1e-6 there",
            constant.join(", ")
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    source: Source,
    /// The sample to show.
    #[arg(long, conflicts_with = "grid", required_unless_present = "grid")]
    index: Option<usize>,
    /// K samples of every class, one labelled row per class.
    #[arg(long, value_name = "K")]
    grid: Option<usize>,
    /// train or test.
    #[arg(long, default_value = "train")]
    split: String,
    /// The PNG to write.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,
    /// Each pixel becomes SCALE x SCALE (nearest neighbour).
    #[arg(long, default_value_t = 8)]
    scale: u32,
}

pub fn show_cmd(a: &ShowArgs) -> Result<()> {
    // Options and the output first, before a dataset is read.
    if a.scale == 0 || a.scale > 64 {
        return Err(UserError("--scale must be between 1 and 64".into()));
    }
    if a.grid.is_some_and(|k| k == 0 || k > 100) {
        return Err(UserError("--grid must be between 1 and 100".into()));
    }
    // The picture is written as PNG: another extension would name the wrong format.
    let png = a
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png {
        return Err(UserError(format!(
            "--out {}: the picture is written as PNG; name it .png",
            a.out.display()
        )));
    }
    vramlab_graph::io::check_writable(&a.out)
        .map_err(|e| UserError(format!("--out {}: cannot write: {e}", a.out.display())))?;
    let ds = a.source.open()?;
    let split = ds.split(&a.split)?;
    let terminal = std::io::stdout().is_terminal();
    if let Some(k) = a.grid {
        let img = show::grid(&ds, split, k, a.scale.min(4))?;
        show::save_png(&img, &a.out)?;
        println!(
            "{} of each of {} -> {}",
            count(k as u128, "sample", "samples"),
            count(ds.classes.len() as u128, "class", "classes"),
            a.out.display()
        );
        return Ok(());
    }
    let i = a.index.expect("clap requires --index or --grid");
    if i >= split.len() {
        return Err(UserError(format!(
            "--index {i} is out of range: the {} split has {} images (0 to {})",
            a.split,
            split.len(),
            split.len().saturating_sub(1)
        )));
    }
    let label = split.labels[i] as usize;
    let img = show::sample(&ds, split, i, a.scale)?;
    show::save_png(&img, &a.out)?;
    // A preview wider or taller than a terminal would only scroll.
    let [_, h, w] = ds.shape;
    if terminal && w <= 200 && h <= 200 {
        print!("{}", show::ansi_preview(&show::sample(&ds, split, i, 1)?));
    }
    println!(
        "{} {} #{i}: {} (label {label}) -> {}",
        ds.name,
        a.split,
        ds.classes[label],
        a.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct FetchArgs {
    /// mnist, fashion-mnist, kmnist, cifar10 or cifar100.
    name: String,
    /// Where to put the files.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Download the same files from this base URL instead of the official one (a local
    /// mirror); each is still checked against the official MD5.
    #[arg(long, value_name = "URL", env = "VRAMLAB_MIRROR")]
    mirror: Option<String>,
    /// Give up a server that does not connect, answer or send more data for this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
    /// Print what was downloaded or found as JSON.
    #[arg(long)]
    json: bool,
}

pub fn fetch_cmd(a: &FetchArgs) -> Result<()> {
    let mut res = fetch::resources(&a.name)?;
    if let Some(base) = &a.mirror {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(UserError(format!(
                "--mirror `{base}`: expected an http:// or https:// URL"
            )));
        }
        let base = base.trim_end_matches('/');
        for r in &mut res {
            r.url = format!("{base}/{}", r.file);
        }
    }
    if a.timeout == 0 || a.timeout > 3600 {
        return Err(UserError(format!(
            "--timeout {}: expected 1 to 3600 seconds",
            a.timeout
        )));
    }
    let t = std::time::Duration::from_secs(a.timeout);
    let opts = fetch::FetchOptions {
        connect_timeout: t,
        response_timeout: t,
        stall_timeout: t,
        ..Default::default()
    };
    // Ctrl-C ends the program at once: remove the partial files first.
    ctrlc::set_handler(|| {
        fetch::remove_partial_files();
        eprintln!("\ninterrupted: the partial download was removed");
        std::process::exit(130);
    })
    .map_err(|e| UserError(format!("cannot install the Ctrl-C handler: {e}")))?;
    let mut last = 0u64;
    let mut printed = false;
    // A progress line rewritten in place is for a terminal, not a log.
    let progress = std::io::stderr().is_terminal();
    let out = fetch::fetch(&res, &a.root, &opts, |r, got, total| {
        if progress && (got >= last + (4 << 20) || Some(got) == total) {
            last = got;
            printed = true;
            eprint!(
                "\r{}: {}{}",
                r.file,
                bytes(got as u128),
                total
                    .map(|t| format!(" of {}", bytes(t as u128)))
                    .unwrap_or_default()
            );
        }
    });
    // The progress line ends before what follows, an error included.
    if printed {
        eprintln!();
    }
    let out = out?;
    if a.json {
        #[derive(Serialize)]
        struct Fetched {
            path: PathBuf,
            downloaded_bytes: Option<u64>,
            md5_verified: bool,
        }
        let rows: Vec<Fetched> = out
            .iter()
            .map(|(path, outcome)| Fetched {
                path: path.clone(),
                downloaded_bytes: match outcome {
                    fetch::Outcome::Downloaded { bytes: n } => Some(*n),
                    fetch::Outcome::AlreadyThere => None,
                },
                md5_verified: true,
            })
            .collect();
        return print_json(&rows);
    }
    for (path, outcome) in out {
        match outcome {
            fetch::Outcome::Downloaded { bytes: n } => println!(
                "{}: downloaded {}, MD5 verified",
                path.display(),
                bytes(n as u128)
            ),
            fetch::Outcome::AlreadyThere => {
                println!("{}: already there, MD5 verified", path.display())
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct LoaderBenchArgs {
    /// The dataset (as for `data info`).
    #[arg(long = "data")]
    dataset: String,
    /// Folder with the dataset's files (as for `data info`).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, short = 'b', default_value_t = 64)]
    batch_size: usize,
    /// Worker threads (0: on the main thread).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seed of the shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the measurement as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LoaderBench {
    dataset: String,
    images: usize,
    batches: usize,
    batch_size: usize,
    workers: usize,
    seconds: f64,
    images_per_s: f64,
}

pub fn bench_loader(a: &LoaderBenchArgs) -> Result<()> {
    let source = Source {
        dataset: a.dataset.clone(),
        root: a.root.clone(),
        folder: FolderArgs::default(),
        coarse: false,
    };
    let ds = Arc::new(source.open()?);
    let c = ds.shape[0];
    // torchvision's reference run: ToTensor + Normalize((0.5,), (0.5,)), shuffled.
    let pipeline = Pipeline::normalize(ds.shape, vec![0.5; c], vec![0.5; c])?;
    let cfg = LoaderConfig {
        batch_size: a.batch_size,
        shuffle: true,
        seed: a.seed,
        drop_last: false,
        workers: a.workers,
        prefetch: 4,
    };
    let loader = Loader::new(Arc::clone(&ds), "train", pipeline, cfg)?;
    let start = Instant::now();
    let mut images = 0;
    let mut batches = 0;
    let mut checksum = 0.0f64;
    for b in loader.epoch(0) {
        images += b.labels.len();
        batches += 1;
        checksum += b.images.first().copied().unwrap_or(0.0) as f64;
    }
    // A clock that did not move still gives a finite rate.
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(checksum);
    let r = LoaderBench {
        dataset: ds.name.clone(),
        images,
        batches,
        batch_size: a.batch_size,
        workers: a.workers,
        seconds,
        images_per_s: images as f64 / seconds,
    };
    if a.json {
        return print_json(&r);
    }
    println!(
        "{}: one shuffled epoch of {} images in {} batches of {} (ToTensor + Normalize, {} workers): {:.3} s, {} images/s",
        r.dataset,
        thousands(images as u128),
        batches,
        a.batch_size,
        a.workers,
        seconds,
        thousands(r.images_per_s as u128)
    );
    Ok(())
}
