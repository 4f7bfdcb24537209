//! `vramlab train`, `eval`, `predict` and `bench train`: the CPU engine on real data,
//! with the measured memory next to the planner's `native` prediction.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use vramlab_data::loader::{Loader, LoaderConfig};
use vramlab_data::transform::Pipeline;
use vramlab_data::Dataset;
use vramlab_engine::{checkpoint, Engine, OptimizerConfig, StepMemory};
use vramlab_graph::{fmt_shape, ModelOptions, Shaped};
use vramlab_memory::{plan, Optimizer, OptimizerKind, PlanConfig, Profile, StepReport};

use crate::data_cmd::Source;
use crate::fmt::{bytes, thousands, Table};
use crate::{print_json, Result, UserError};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Args, Clone)]
pub struct OptimArgs {
    /// sgd, adam, adamw, rmsprop or adagrad.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Learning rate (default: PyTorch's for the optimizer).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long)]
    pub amsgrad: bool,
    #[arg(long)]
    pub centered: bool,
    #[arg(long)]
    pub weight_decay: Option<f32>,
}

impl OptimArgs {
    pub fn engine(&self) -> Result<OptimizerConfig> {
        let mut c = OptimizerConfig::named(&self.optimizer, self.lr)?;
        match &mut c {
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
                ..
            } => {
                *momentum = self.momentum;
                *nesterov = self.nesterov;
                if let Some(w) = self.weight_decay {
                    *weight_decay = w;
                }
                if self.nesterov && self.momentum <= 0.0 {
                    return Err(UserError(
                        "--nesterov requires --momentum greater than 0".into(),
                    ));
                }
            }
            OptimizerConfig::Adam {
                amsgrad,
                weight_decay,
                ..
            } => {
                *amsgrad = self.amsgrad;
                if let Some(w) = self.weight_decay {
                    *weight_decay = w;
                }
            }
            OptimizerConfig::RmsProp {
                momentum,
                centered,
                weight_decay,
                ..
            } => {
                *momentum = self.momentum;
                *centered = self.centered;
                if let Some(w) = self.weight_decay {
                    *weight_decay = w;
                }
            }
            OptimizerConfig::Adagrad { weight_decay, .. } => {
                if let Some(w) = self.weight_decay {
                    *weight_decay = w;
                }
            }
        }
        if c.lr() <= 0.0 || !c.lr().is_finite() {
            return Err(UserError(format!("--lr must be positive, got {}", c.lr())));
        }
        Ok(c)
    }

    /// The same optimizer for the planner.
    pub fn planner(&self) -> Result<Optimizer> {
        let kind = OptimizerKind::parse(&self.optimizer)?;
        Ok(Optimizer {
            kind,
            momentum: self.momentum as f64,
            nesterov: self.nesterov,
            amsgrad: self.amsgrad,
            centered: self.centered,
            weight_decay: self.weight_decay.map(f64::from),
            implementation: None,
        })
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// A zoo model or a .toml model file; its input and classes follow the data.
    pub model: String,
    #[command(flatten)]
    pub source: DataArg,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, short = 'b', default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many steps in all.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Normalize with the training split's own mean and std (`auto`), none, or `MEAN,STD`.
    #[arg(long, default_value = "auto")]
    pub normalize: String,
    /// Augment training images as torchvision's CIFAR recipe does: RandomCrop(size,
    /// padding=4) and RandomHorizontalFlip() before ToTensor and Normalize.
    #[arg(long)]
    pub augment: bool,
    /// Save a checkpoint here after each epoch (and on Ctrl-C).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Continue from a checkpoint.
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// `--data DATASET [--root DIR]`.
#[derive(Args, Clone)]
pub struct DataArg {
    /// fashion-mnist, mnist, cifar10, ... or a folder.
    #[arg(long = "data")]
    pub dataset: String,
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl DataArg {
    pub fn open(&self) -> Result<Dataset> {
        Source {
            dataset: self.dataset.clone(),
            root: self.root.clone(),
            resize: None,
            center_crop: None,
            grayscale: false,
            coarse: false,
        }
        .open()
    }
}

/// `--threads`, or every core.
fn threads_or_all(threads: Option<usize>) -> usize {
    threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Builds the model for a dataset: input and number of classes follow the data.
pub fn model_for(name: &str, ds: &Dataset) -> Result<Shaped> {
    let opts = ModelOptions {
        num_classes: Some(ds.classes.len()),
        input_shape: Some(ds.shape.to_vec()),
    };
    let g = vramlab_graph::load(name, &opts)?.infer()?;
    if g.num_classes() != ds.classes.len() {
        return Err(UserError(format!(
            "{name} predicts {} classes but {} has {}",
            g.num_classes(),
            ds.name,
            ds.classes.len()
        )));
    }
    Ok(g)
}

fn normalization(spec: &str, ds: &Dataset) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = ds.shape[0];
    Ok(match spec {
        "auto" => {
            let s = vramlab_data::stats::channel_stats(ds, &ds.train);
            (
                s.mean.iter().map(|&v| v as f32).collect(),
                s.std.iter().map(|&v| (v as f32).max(1e-6)).collect(),
            )
        }
        "none" => (vec![0.0; c], vec![1.0; c]),
        other => {
            let v: std::result::Result<Vec<f32>, _> =
                other.split(',').map(|x| x.trim().parse::<f32>()).collect();
            match v {
                Ok(v) if v.len() == 2 && v[1] > 0.0 => (vec![v[0]; c], vec![v[1]; c]),
                _ => {
                    return Err(UserError(format!(
                        "--normalize `{other}`: expected auto, none or MEAN,STD"
                    )))
                }
            }
        }
    })
}

/// ToTensor and Normalize, after RandomCrop(padding=4) and RandomHorizontalFlip with
/// `augment`.
fn train_pipeline(ds: &Dataset, mean: &[f32], std: &[f32], augment: bool) -> Result<Pipeline> {
    use vramlab_data::transform::Transform;
    let mut t = Vec::new();
    if augment {
        t.push(Transform::RandomCrop {
            size: (ds.shape[1], ds.shape[2]),
            padding: 4,
        });
        t.push(Transform::RandomHorizontalFlip { p: 0.5 });
    }
    t.push(Transform::ToTensor);
    t.push(Transform::Normalize {
        mean: mean.to_vec(),
        std: std.to_vec(),
    });
    Ok(Pipeline::new(t, ds.shape)?)
}

#[derive(Serialize, Clone)]
struct EpochRow {
    epoch: usize,
    train_loss: f64,
    train_accuracy: f64,
    test_accuracy: Option<f64>,
    seconds: f64,
    images_per_s: f64,
}

#[derive(Serialize)]
struct Steps {
    steps: Vec<StepReport>,
}

#[derive(Serialize)]
struct MemoryPair {
    measured: Steps,
    planned: Steps,
}

#[derive(Serialize)]
struct TrainJson {
    model: String,
    dataset: String,
    num_params: u128,
    batch_size: usize,
    threads: usize,
    epochs: Vec<EpochRow>,
    memory: MemoryPair,
    stopped: Option<String>,
}

/// The engine's measurement as the planner's step object.
fn measured_step(step: u32, m: &StepMemory) -> StepReport {
    let phase = m.peak.phase;
    StepReport {
        step,
        peak_bytes: m.peak.bytes,
        peak_phase: phase,
        peak_at: format!("{phase} (measured by the engine's allocator)"),
        peak_layer: String::new(),
        peak_op: String::new(),
        before_step: m.before_step,
        at_peak: m.peak.at,
        after_step: m.after_step,
    }
}

fn metadata(
    a: &TrainArgs,
    ds: &Dataset,
    mean: &[f32],
    std: &[f32],
    epoch: usize,
    batch_in_epoch: usize,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "vramlab checkpoint 1".into());
    m.insert("model".into(), a.model.clone());
    m.insert("input_shape".into(), fmt_shape(&ds.shape));
    m.insert(
        "classes".into(),
        serde_json::to_string(&ds.classes).expect("strings"),
    );
    m.insert("mean".into(), serde_json::to_string(mean).expect("floats"));
    m.insert("std".into(), serde_json::to_string(std).expect("floats"));
    m.insert("epoch".into(), epoch.to_string());
    m.insert("batch_in_epoch".into(), batch_in_epoch.to_string());
    m.insert("seed".into(), a.seed.to_string());
    m.insert("dataset".into(), ds.name.clone());
    m
}

/// Accuracy and mean loss over a split, in eval mode.
fn evaluate(
    e: &mut Engine,
    ds: &Arc<Dataset>,
    split: &str,
    mean: &[f32],
    std: &[f32],
    batch: usize,
) -> Result<(f64, f64)> {
    let p = Pipeline::normalize(ds.shape, mean.to_vec(), std.to_vec())?;
    let cfg = LoaderConfig {
        batch_size: batch,
        shuffle: false,
        workers: 1,
        ..Default::default()
    };
    let loader = Loader::new(Arc::clone(ds), split, p, cfg)?;
    let k = e.graph.num_classes();
    let (mut correct, mut loss, mut n) = (0usize, 0.0f64, 0usize);
    for b in loader.epoch(0) {
        let bs = b.labels.len();
        let x = e.batch(b.images, bs)?;
        let logits = e.predict(&x)?;
        for (r, &y) in b.labels.iter().enumerate() {
            let row = &logits[r * k..(r + 1) * k];
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            loss += (lse - row[y as usize]) as f64;
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |a, (j, &v)| if v > row[a] { j } else { a });
            correct += usize::from(arg == y as usize);
        }
        n += bs;
    }
    Ok((correct as f64 / n.max(1) as f64, loss / n.max(1) as f64))
}

pub fn train(a: &TrainArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(UserError("batch size must be at least 1, got 0".into()));
    }
    let ds = Arc::new(a.source.open()?);
    let g = model_for(&a.model, &ds)?;
    let threads = threads_or_all(a.threads);
    let opt = a.optim.engine()?;
    let (mean, std) = normalization(&a.normalize, &ds)?;
    let mut e = Engine::new(g.clone(), opt, a.seed, threads)?;
    let (mut start_epoch, mut skip) = (0usize, 0usize);
    if let Some(r) = &a.resume {
        let ck = checkpoint::read(r)?;
        if ck.metadata.get("input_shape").map(String::as_str) != Some(fmt_shape(&ds.shape).as_str())
        {
            return Err(UserError(format!(
                "{}: the checkpoint was trained on other images than {}",
                r.display(),
                ds.name
            )));
        }
        ck.load_into(&mut e)?;
        start_epoch = ck
            .metadata
            .get("epoch")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        skip = ck
            .metadata
            .get("batch_in_epoch")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
    }
    let mut pcfg = PlanConfig::new(a.batch_size as u64);
    pcfg.profile = Profile::Native;
    pcfg.optimizer = a.optim.planner()?;
    pcfg.threads = threads;
    let planned = plan(&g, &pcfg)?;
    let pipeline = train_pipeline(&ds, &mean, &std, a.augment)?;
    let lcfg = LoaderConfig {
        batch_size: a.batch_size,
        shuffle: true,
        seed: a.seed,
        drop_last: false,
        workers: 1,
        prefetch: 4,
    };
    let loader = Loader::new(Arc::clone(&ds), "train", pipeline, lcfg)?;
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    let show_bar = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut measured = Vec::new();
    let mut rows = Vec::new();
    let mut steps_done = 0usize;
    let mut stopped = None;
    if !a.json {
        eprintln!(
            "training {} ({} params) on {} ({} images, {}), batch {}, {}, {} threads; planned peak {}",
            g.graph.name,
            thousands(g.num_params()),
            ds.name,
            thousands(ds.train.len() as u128),
            fmt_shape(&ds.shape),
            a.batch_size,
            a.optim.optimizer,
            threads,
            bytes(planned.peak_bytes)
        );
    }
    'epochs: for epoch in start_epoch..a.epochs {
        let t0 = Instant::now();
        let bar = if show_bar {
            let b = indicatif::ProgressBar::new(loader.num_batches() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} {bar:30} {pos}/{len} {msg} eta {eta}",
                )
                .expect("a valid template"),
            );
            b.set_prefix(format!("{}/{}", epoch + 1, a.epochs));
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let skip_now = std::mem::take(&mut skip);
        bar.set_position(skip_now as u64);
        for (bi, batch) in loader.epoch(epoch as u64).enumerate().skip(skip_now) {
            let n = batch.labels.len();
            let x = e.batch(batch.images, n)?;
            let y = e.labels(batch.labels);
            let r = e.train_step(&x, &y)?;
            if !r.loss.is_finite() {
                stopped = Some(format!(
                    "the loss became {} at epoch {} step {}; training stopped{}",
                    r.loss,
                    epoch + 1,
                    bi + 1,
                    a.checkpoint
                        .as_ref()
                        .map(|c| format!(" and the last good checkpoint {} was kept", c.display()))
                        .unwrap_or_default()
                ));
                break 'epochs;
            }
            if measured.len() < 2 {
                measured.push(measured_step(measured.len() as u32 + 1, &r.memory));
            }
            loss_sum += r.loss as f64 * n as f64;
            correct += r.correct;
            seen += n;
            steps_done += 1;
            if show_bar && bi % 10 == 0 {
                let s = t0.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} {:.0} img/s",
                    loss_sum / seen as f64,
                    correct as f64 / seen as f64,
                    seen as f64 / s
                ));
            }
            bar.set_position(bi as u64 + 1);
            if INTERRUPTED.load(Ordering::SeqCst) {
                bar.finish_and_clear();
                if let Some(c) = &a.checkpoint {
                    checkpoint::save(&e, c, metadata(a, &ds, &mean, &std, epoch, bi + 1))?;
                    stopped = Some(format!(
                        "interrupted: saved to {} (resume with --resume)",
                        c.display()
                    ));
                } else {
                    stopped = Some("interrupted (no --checkpoint given, nothing saved)".into());
                }
                break 'epochs;
            }
            if a.max_steps.is_some_and(|m| steps_done >= m) {
                stopped = Some(format!("stopped after --max-steps {steps_done}"));
                break;
            }
        }
        bar.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        let test_accuracy = if ds.test.is_some() {
            Some(evaluate(&mut e, &ds, "test", &mean, &std, 256.max(a.batch_size))?.0)
        } else {
            None
        };
        let row = EpochRow {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_accuracy,
            seconds,
            images_per_s: seen as f64 / seconds,
        };
        if !a.json {
            eprintln!(
                "epoch {}: train loss {:.4}, train accuracy {:.4}, test accuracy {}, {:.1} s, {} images/s",
                row.epoch,
                row.train_loss,
                row.train_accuracy,
                row.test_accuracy.map(|t| format!("{t:.4}")).unwrap_or_else(|| "-".into()),
                row.seconds,
                thousands(row.images_per_s as u128)
            );
        }
        rows.push(row);
        if let Some(c) = &a.checkpoint {
            checkpoint::save(&e, c, metadata(a, &ds, &mean, &std, epoch + 1, 0))?;
        }
        if stopped.is_some() {
            break;
        }
    }
    let out = TrainJson {
        model: g.graph.name.clone(),
        dataset: ds.name.clone(),
        num_params: g.num_params(),
        batch_size: a.batch_size,
        threads,
        epochs: rows,
        memory: MemoryPair {
            measured: Steps { steps: measured },
            planned: Steps {
                steps: planned.steps.clone(),
            },
        },
        stopped: stopped.clone(),
    };
    if a.json {
        print_json(&out)?;
    } else {
        print!("{}", render_memory(&out));
    }
    match stopped {
        Some(s) if s.starts_with("the loss became") => Err(UserError(s)),
        Some(s) if s.starts_with("interrupted") => {
            eprintln!("{s}");
            std::process::exit(130);
        }
        Some(s) => {
            eprintln!("{s}");
            Ok(())
        }
        None => Ok(()),
    }
}

fn render_memory(o: &TrainJson) -> String {
    let mut s = String::from(
        "\nMemory, measured by the engine's allocator vs the planner's native profile:\n",
    );
    let mut t = Table::new(
        &[
            "step",
            "category",
            "measured at peak",
            "planned at peak",
            "",
        ],
        &[true, false, true, true, false],
    );
    for (m, p) in o.memory.measured.steps.iter().zip(&o.memory.planned.steps) {
        for c in vramlab_memory::Category::ALL {
            let (mv, pv) = (m.at_peak.get(c), p.at_peak.get(c));
            if mv == 0 && pv == 0 {
                continue;
            }
            t.row(vec![
                m.step.to_string(),
                c.key().into(),
                bytes(mv),
                bytes(pv),
                if mv == pv {
                    "exact".into()
                } else {
                    format!("{:+} B", pv as i128 - mv as i128)
                },
            ]);
        }
        t.row(vec![
            m.step.to_string(),
            format!("peak ({})", m.peak_phase),
            bytes(m.peak_bytes),
            bytes(p.peak_bytes),
            if m.peak_bytes == p.peak_bytes {
                "exact".into()
            } else {
                format!("{:+} B", p.peak_bytes as i128 - m.peak_bytes as i128)
            },
        ]);
    }
    s.push_str(&t.render());
    s
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    source: DataArg,
    /// train or test.
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, short = 'b', default_value_t = 256)]
    batch_size: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// A checkpoint's model, loaded, with the normalisation and classes it was trained with.
struct Restored {
    engine: Engine,
    mean: Vec<f32>,
    std: Vec<f32>,
    classes: Vec<String>,
}

/// Rebuilds the model a checkpoint was saved from and loads it.
fn engine_from(path: &std::path::Path, threads: Option<usize>) -> Result<Restored> {
    let ck = checkpoint::read(path)?;
    let meta = |k: &str| {
        ck.metadata.get(k).cloned().ok_or_else(|| {
            UserError(format!(
                "{}: not a vramlab checkpoint (no `{k}` in its metadata)",
                path.display()
            ))
        })
    };
    let classes: Vec<String> = serde_json::from_str(&meta("classes")?)?;
    let shape = vramlab_graph::parse_shape(&meta("input_shape")?)?;
    let opts = ModelOptions {
        num_classes: Some(classes.len()),
        input_shape: Some(shape),
    };
    let g = vramlab_graph::load(&meta("model")?, &opts)?.infer()?;
    let opt: OptimizerConfig = serde_json::from_str(&meta("optimizer")?)?;
    let threads = threads_or_all(threads);
    let mut e = Engine::new(g, opt, 0, threads)?;
    ck.load_into(&mut e)?;
    let mean: Vec<f32> = serde_json::from_str(&meta("mean")?)?;
    let std: Vec<f32> = serde_json::from_str(&meta("std")?)?;
    Ok(Restored {
        engine: e,
        mean,
        std,
        classes,
    })
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let Restored {
        engine: mut e,
        mean,
        std,
        classes,
    } = engine_from(&a.checkpoint, a.threads)?;
    let ds = Arc::new(a.source.open()?);
    if ds.shape.to_vec() != e.graph.shapes[0] || ds.classes.len() != classes.len() {
        return Err(UserError(format!(
            "{}: the checkpoint's model takes {} images and {} classes, {} has {} and {}",
            a.checkpoint.display(),
            fmt_shape(&e.graph.shapes[0]),
            classes.len(),
            ds.name,
            fmt_shape(&ds.shape),
            ds.classes.len()
        )));
    }
    let t0 = Instant::now();
    let (acc, loss) = evaluate(&mut e, &ds, &a.split, &mean, &std, a.batch_size.max(1))?;
    #[derive(Serialize)]
    struct EvalJson {
        split: String,
        samples: usize,
        accuracy: f64,
        loss: f64,
        seconds: f64,
    }
    let r = EvalJson {
        split: a.split.clone(),
        samples: ds.split(&a.split)?.len(),
        accuracy: acc,
        loss,
        seconds: t0.elapsed().as_secs_f64(),
    };
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} {} split, {} images: accuracy {:.4}, loss {:.4}",
        ds.name,
        r.split,
        thousands(r.samples as u128),
        acc,
        loss
    );
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// An image file (PNG, JPEG, BMP, GIF, WebP); resized to the model's input.
    image: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    let Restored {
        engine: mut e,
        mean,
        std,
        classes,
    } = engine_from(&a.checkpoint, Some(1))?;
    let s = e.graph.shapes[0].clone();
    let opts = vramlab_data::folder::FolderOptions {
        resize: Some(vec![s[1] as u32, s[2] as u32]),
        center_crop: None,
        grayscale: s[0] == 1,
    };
    let (shape, px) = vramlab_data::folder::decode(&a.image, &opts)?;
    let p = Pipeline::normalize([shape[0], shape[1], shape[2]], mean, std)?;
    let mut x = vec![0.0f32; px.len()];
    p.apply(&px, &mut vramlab_data::rng::Rng::new(0), &mut x);
    let t = e.batch(x, 1)?;
    let logits = e.predict(&t)?;
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|v| (v - m).exp()).sum();
    let mut probs: Vec<(usize, f32)> = logits
        .iter()
        .map(|v| (v - m).exp() / z)
        .enumerate()
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    #[derive(Serialize)]
    struct Guess {
        class: String,
        label: usize,
        probability: f32,
    }
    let top: Vec<Guess> = probs
        .iter()
        .take(5)
        .map(|&(i, p)| Guess {
            class: classes[i].clone(),
            label: i,
            probability: p,
        })
        .collect();
    if a.json {
        return print_json(&top);
    }
    for g in &top {
        println!(
            "{:>6.2} %  {} (label {})",
            g.probability * 100.0,
            g.class,
            g.label
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchTrainArgs {
    /// A zoo model or a .toml file.
    model: String,
    #[arg(long, value_name = "CxHxW")]
    input: Option<String>,
    #[arg(long, short = 'b', default_value_t = 64)]
    batch_size: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    optim: OptimArgs,
    /// Time at least this long after 5 warm-up steps.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long)]
    json: bool,
}

pub fn bench_train(a: &BenchTrainArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(UserError("batch size must be at least 1, got 0".into()));
    }
    let input = a
        .input
        .as_deref()
        .map(vramlab_graph::parse_shape)
        .transpose()?;
    let g = vramlab_graph::load(
        &a.model,
        &ModelOptions {
            num_classes: None,
            input_shape: input,
        },
    )?
    .infer()?;
    let threads = threads_or_all(a.threads);
    let mut e = Engine::new(g.clone(), a.optim.engine()?, 0, threads)?;
    let per: usize = g.shapes[0].iter().product();
    let k = g.num_classes();
    let mut rng = vramlab_data::rng::Rng::new(1);
    let images: Vec<f32> = (0..a.batch_size * per)
        .map(|_| rng.unit_f64() as f32 - 0.5)
        .collect();
    let labels: Vec<i64> = (0..a.batch_size).map(|i| (i % k) as i64).collect();
    let step = |e: &mut Engine| -> Result<()> {
        let x = e.batch(images.clone(), a.batch_size)?;
        let y = e.labels(labels.clone());
        e.train_step(&x, &y)?;
        Ok(())
    };
    for _ in 0..5 {
        step(&mut e)?;
    }
    e.op_seconds.clear();
    let t0 = Instant::now();
    let mut steps = 0;
    while steps < 3 || t0.elapsed().as_secs_f64() < a.seconds {
        step(&mut e)?;
        steps += 1;
    }
    let seconds = t0.elapsed().as_secs_f64();
    #[derive(Serialize)]
    struct BenchJson {
        model: String,
        batch_size: usize,
        threads: usize,
        steps: usize,
        seconds: f64,
        images_per_s: f64,
        ms_per_step: f64,
        /// Share of the timed steps spent in each op kind, largest first.
        op_share: Vec<(String, f64)>,
    }
    let r = BenchJson {
        model: g.graph.name.clone(),
        batch_size: a.batch_size,
        threads,
        steps,
        seconds,
        images_per_s: (steps * a.batch_size) as f64 / seconds,
        ms_per_step: seconds * 1e3 / steps as f64,
        op_share: {
            let total: f64 = e.op_seconds.values().sum::<f64>().max(1e-12);
            let mut v: Vec<(String, f64)> = e
                .op_seconds
                .iter()
                .map(|(k, t)| (k.clone(), t / total))
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v
        },
    };
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} batch {} ({} threads, {}): {} images/s, {:.2} ms per step ({} steps in {:.2} s)",
        r.model,
        r.batch_size,
        threads,
        a.optim.optimizer,
        thousands(r.images_per_s as u128),
        r.ms_per_step,
        steps,
        seconds
    );
    for (op, share) in r.op_share.iter().filter(|(_, s)| *s >= 0.005) {
        println!("  {op:<28} {:>5.1} %", share * 100.0);
    }
    Ok(())
}

#[derive(Args)]
pub struct SweepArgs {
    /// A zoo model or a .toml model file.
    pub model: String,
    #[command(flatten)]
    pub source: DataArg,
    /// Batch sizes to train with, from the same seed.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,1024")]
    pub batch_sizes: Vec<usize>,
    /// Epochs per batch size.
    #[arg(long, default_value_t = 1, conflicts_with = "samples")]
    pub epochs: usize,
    /// Train on this many samples per batch size instead of whole epochs.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Scale the learning rate from the first batch size: linear, sqrt or none.
    #[arg(long, default_value = "none")]
    pub scale_lr: String,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write plots here: accuracy and speed against batch size, loss curves.
    #[arg(long, value_name = "DIR")]
    pub plot_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, serde::Deserialize, Clone)]
pub struct SweepRow {
    pub batch_size: usize,
    pub lr: f32,
    pub steps: usize,
    pub samples: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    pub final_train_loss: f64,
    pub test_accuracy: Option<f64>,
    /// Standard deviation of the per-step loss over the last quarter of the steps.
    pub loss_noise: f64,
    pub measured_peak_bytes: u128,
    pub planned_peak_bytes: u128,
    /// (samples seen, loss) after each step.
    pub loss_curve: Vec<(usize, f32)>,
}

#[derive(Serialize, serde::Deserialize)]
pub struct SweepJson {
    pub model: String,
    pub dataset: String,
    pub optimizer: String,
    pub scale_lr: String,
    pub rows: Vec<SweepRow>,
}

pub fn sweep(a: &SweepArgs) -> Result<()> {
    if a.batch_sizes.is_empty() || a.batch_sizes.contains(&0) {
        return Err(UserError(
            "--batch-sizes needs positive sizes, e.g. 16,64,256,1024".into(),
        ));
    }
    if !["linear", "sqrt", "none"].contains(&a.scale_lr.as_str()) {
        return Err(UserError(format!(
            "--scale-lr `{}`: expected linear, sqrt or none",
            a.scale_lr
        )));
    }
    let ds = Arc::new(a.source.open()?);
    let g = model_for(&a.model, &ds)?;
    let threads = threads_or_all(a.threads);
    let (mean, std) = normalization("auto", &ds)?;
    let base = a.batch_sizes[0] as f32;
    let mut rows = Vec::new();
    for &bs in &a.batch_sizes {
        let mut opt = a.optim.engine()?;
        let k = bs as f32 / base;
        let factor = match a.scale_lr.as_str() {
            "linear" => k,
            "sqrt" => k.sqrt(),
            _ => 1.0,
        };
        opt.set_lr(opt.lr() * factor);
        let lr = opt.lr();
        let mut e = Engine::new(g.clone(), opt, a.seed, threads)?;
        let mut pcfg = PlanConfig::new(bs as u64);
        pcfg.profile = Profile::Native;
        pcfg.optimizer = a.optim.planner()?;
        pcfg.threads = threads;
        let planned = plan(&g, &pcfg)?.peak_bytes;
        let pipeline = Pipeline::normalize(ds.shape, mean.clone(), std.clone())?;
        let lcfg = LoaderConfig {
            batch_size: bs,
            shuffle: true,
            seed: a.seed,
            drop_last: false,
            workers: 1,
            prefetch: 4,
        };
        let loader = Loader::new(Arc::clone(&ds), "train", pipeline, lcfg)?;
        let budget = a.samples.unwrap_or(usize::MAX);
        let epochs = if a.samples.is_some() {
            usize::MAX
        } else {
            a.epochs
        };
        let (mut seen, mut steps, mut peak) = (0usize, 0usize, 0u128);
        let mut curve = Vec::new();
        let t0 = Instant::now();
        'run: for epoch in 0..epochs {
            for batch in loader.epoch(epoch as u64) {
                let n = batch.labels.len();
                let x = e.batch(batch.images, n)?;
                let y = e.labels(batch.labels);
                let r = e.train_step(&x, &y)?;
                peak = peak.max(r.memory.peak.bytes);
                seen += n;
                steps += 1;
                curve.push((seen, r.loss));
                if !r.loss.is_finite() {
                    break 'run;
                }
                if seen >= budget {
                    break 'run;
                }
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        let tail = &curve[curve.len() - (curve.len() / 4).max(1)..];
        let m = tail.iter().map(|p| p.1 as f64).sum::<f64>() / tail.len() as f64;
        let noise =
            (tail.iter().map(|p| (p.1 as f64 - m).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        let test_accuracy = if ds.test.is_some() {
            Some(evaluate(&mut e, &ds, "test", &mean, &std, 512)?.0)
        } else {
            None
        };
        let row = SweepRow {
            batch_size: bs,
            lr,
            steps,
            samples: seen,
            seconds,
            images_per_s: seen as f64 / seconds,
            final_train_loss: m,
            test_accuracy,
            loss_noise: noise,
            measured_peak_bytes: peak,
            planned_peak_bytes: planned,
            loss_curve: curve,
        };
        if !a.json {
            eprintln!(
                "batch {bs}: {} steps, {} images/s, final loss {:.4}, test accuracy {}",
                row.steps,
                thousands(row.images_per_s as u128),
                row.final_train_loss,
                row.test_accuracy
                    .map(|t| format!("{t:.4}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        rows.push(row);
    }
    let out = SweepJson {
        model: g.graph.name.clone(),
        dataset: ds.name.clone(),
        optimizer: a.optim.optimizer.clone(),
        scale_lr: a.scale_lr.clone(),
        rows,
    };
    if let Some(dir) = &a.plot_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| UserError(format!("{}: cannot create: {e}", dir.display())))?;
        for (name, chart) in sweep_charts(&out, crate::lang::Lang::En) {
            chart.save(&dir.join(format!("{name}.svg")))?;
            chart.save(&dir.join(format!("{name}.png")))?;
        }
    }
    if a.json {
        return print_json(&out);
    }
    let mut t = Table::new(
        &[
            "batch",
            "lr",
            "steps",
            "images/s",
            "final loss",
            "loss noise",
            "test acc",
            "measured peak",
            "planned peak",
        ],
        &[true, true, true, true, true, true, true, true, true],
    );
    for r in &out.rows {
        t.row(vec![
            r.batch_size.to_string(),
            format!("{:.2e}", r.lr),
            r.steps.to_string(),
            thousands(r.images_per_s as u128),
            format!("{:.4}", r.final_train_loss),
            format!("{:.4}", r.loss_noise),
            r.test_accuracy
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into()),
            bytes(r.measured_peak_bytes),
            bytes(r.planned_peak_bytes),
        ]);
    }
    print!("{}", t.render());
    println!("\nLarger batches: more images/s and fewer updates per epoch; at equal epochs, lower accuracy unless the learning rate is scaled (--scale-lr linear or sqrt).");
    if let Some(dir) = &a.plot_dir {
        println!("Plots in {}", dir.display());
    }
    Ok(())
}

/// Accuracy and speed against batch size, and the loss curves.
pub fn sweep_charts(
    o: &SweepJson,
    lang: crate::lang::Lang,
) -> Vec<(&'static str, crate::plot::Chart)> {
    use crate::lang::{s, t};
    use crate::plot::{Chart, Series, COLORS};
    let pts = |f: &dyn Fn(&SweepRow) -> Option<f64>| -> Vec<(f64, f64)> {
        o.rows
            .iter()
            .filter_map(|r| f(r).map(|v| (r.batch_size as f64, v)))
            .collect()
    };
    let acc = Chart {
        title: t(
            lang,
            "{0} on {1}: test accuracy by batch size",
            &[&o.model, &o.dataset],
        ),
        x_label: s(lang, "batch size"),
        y_label: s(lang, "test accuracy"),
        x_log: true,
        stacked: false,
        series: vec![Series {
            name: s(lang, "test accuracy"),
            points: pts(&|r| r.test_accuracy),
            color: COLORS[0].into(),
        }],
        hlines: vec![],
        vline: None,
    };
    let speed = Chart {
        title: t(
            lang,
            "{0} on {1}: training speed by batch size",
            &[&o.model, &o.dataset],
        ),
        x_label: s(lang, "batch size"),
        y_label: s(lang, "images per second"),
        x_log: true,
        stacked: false,
        series: vec![Series {
            name: s(lang, "images/s"),
            points: pts(&|r| Some(r.images_per_s)),
            color: COLORS[2].into(),
        }],
        hlines: vec![],
        vline: None,
    };
    let curves = Chart {
        title: t(lang, "{0} on {1}: training loss", &[&o.model, &o.dataset]),
        x_label: s(lang, "images seen"),
        y_label: s(lang, "loss per step"),
        x_log: false,
        stacked: false,
        series: o
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // At most 200 points a curve: averages over windows keep the SVG small.
                let w = r.loss_curve.len().div_ceil(200).max(1);
                let points = r
                    .loss_curve
                    .chunks(w)
                    .map(|c| {
                        (
                            c[c.len() - 1].0 as f64,
                            c.iter().map(|p| p.1 as f64).sum::<f64>() / c.len() as f64,
                        )
                    })
                    .collect();
                Series {
                    name: t(lang, "batch {0}", &[&r.batch_size]),
                    points,
                    color: COLORS[i % COLORS.len()].into(),
                }
            })
            .collect(),
        hlines: vec![],
        vline: None,
    };
    vec![
        ("accuracy_vs_batch", acc),
        ("speed_vs_batch", speed),
        ("loss_curves", curves),
    ]
}
