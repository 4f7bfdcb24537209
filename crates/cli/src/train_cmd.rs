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
    /// sgd, adam, adamw, rmsprop or adagrad (default adam; with --resume, the
    /// checkpoint's).
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Learning rate (default: PyTorch's for the optimizer; with --resume, the
    /// checkpoint's).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Momentum (SGD, RMSprop), 0 or more.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov momentum (SGD, needs --momentum).
    #[arg(long)]
    pub nesterov: bool,
    /// AMSGrad (Adam, AdamW): a third state tensor.
    #[arg(long)]
    pub amsgrad: bool,
    /// Centered RMSprop: one more state tensor.
    #[arg(long)]
    pub centered: bool,
    /// Weight decay, 0 or more (default: PyTorch's, 0 or 0.01 for AdamW).
    #[arg(long)]
    pub weight_decay: Option<f64>,
}

/// A float32 option of the engine from its f64: values past float32's range (which
/// read as inf, or a positive one as 0) are refused naming the option.
fn as_f32(flag: &str, v: f64) -> Result<f32> {
    let a = v.abs();
    // NaN, infinity and 0 are the planner's to judge, in its words.
    if !a.is_finite() || a == 0.0 || (f32::MIN_POSITIVE as f64..=f32::MAX as f64).contains(&a) {
        return Ok(v as f32);
    }
    Err(UserError(format!(
        "{flag} {v:e} is outside float32's range (1.2e-38 to 3.4e38), the precision the \
         weights are updated in"
    )))
}

/// The planner's optimizer from command-line options, checked as one: the `memory`,
/// `fit`, `train`, `sweep` and `bench train` commands all refuse the same options with
/// the same words.
pub fn planner_optimizer(
    name: &str,
    momentum: f64,
    nesterov: bool,
    amsgrad: bool,
    centered: bool,
    weight_decay: Option<f64>,
) -> Result<Optimizer> {
    let kind = OptimizerKind::parse(name)?;
    if momentum < 0.0 || !momentum.is_finite() {
        return Err(UserError(format!(
            "--momentum must be 0 or more, got {momentum}"
        )));
    }
    if momentum != 0.0 && !matches!(kind, OptimizerKind::Sgd | OptimizerKind::RmsProp) {
        return Err(UserError(format!(
            "--momentum applies to sgd and rmsprop, not {name}"
        )));
    }
    if amsgrad && !matches!(kind, OptimizerKind::Adam | OptimizerKind::AdamW) {
        return Err(UserError("--amsgrad applies to adam and adamw".into()));
    }
    if centered && kind != OptimizerKind::RmsProp {
        return Err(UserError("--centered applies to rmsprop".into()));
    }
    if nesterov && kind != OptimizerKind::Sgd {
        return Err(UserError("--nesterov applies to sgd".into()));
    }
    if nesterov && momentum <= 0.0 {
        return Err(UserError(
            "--nesterov requires --momentum greater than 0".into(),
        ));
    }
    if let Some(w) = weight_decay {
        if w < 0.0 || !w.is_finite() {
            return Err(UserError(format!(
                "--weight-decay must be 0 or more, got {w}"
            )));
        }
    }
    Ok(Optimizer {
        kind,
        momentum,
        nesterov,
        amsgrad,
        centered,
        weight_decay,
        implementation: None,
    })
}

/// The planner's optimizer for the engine's (a resumed checkpoint's).
fn planner_optimizer_of(c: &OptimizerConfig) -> Result<Optimizer> {
    let (momentum, nesterov, amsgrad, centered, weight_decay) = match *c {
        OptimizerConfig::Sgd {
            momentum,
            nesterov,
            weight_decay,
            ..
        } => (momentum, nesterov, false, false, weight_decay),
        OptimizerConfig::Adam {
            amsgrad,
            weight_decay,
            ..
        } => (0.0, false, amsgrad, false, weight_decay),
        OptimizerConfig::RmsProp {
            momentum,
            centered,
            weight_decay,
            ..
        } => (momentum, false, false, centered, weight_decay),
        OptimizerConfig::Adagrad { weight_decay, .. } => (0.0, false, false, false, weight_decay),
    };
    planner_optimizer(
        c.name(),
        momentum as f64,
        nesterov,
        amsgrad,
        centered,
        Some(weight_decay as f64),
    )
}

impl OptimArgs {
    /// `--optimizer`, or adam.
    pub fn name(&self) -> &str {
        self.optimizer.as_deref().unwrap_or("adam")
    }

    /// `--lr` as the engine's float32, refused rather than rounded to 0 or infinity.
    fn lr(&self) -> Result<Option<f32>> {
        let Some(lr) = self.lr else { return Ok(None) };
        if lr <= 0.0 || !lr.is_finite() {
            return Err(UserError(format!("--lr must be positive, got {lr}")));
        }
        as_f32("--lr", lr).map(Some)
    }

    fn momentum(&self) -> Result<f32> {
        as_f32("--momentum", self.momentum.unwrap_or(0.0))
    }

    fn weight_decay(&self) -> Result<Option<f32>> {
        self.weight_decay
            .map(|w| as_f32("--weight-decay", w))
            .transpose()
    }

    pub fn engine(&self) -> Result<OptimizerConfig> {
        self.planner()?;
        let mut c = OptimizerConfig::named(self.name(), self.lr()?)?;
        let m = self.momentum()?;
        let wd = self.weight_decay()?;
        match &mut c {
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
                ..
            } => {
                *momentum = m;
                *nesterov = self.nesterov;
                if let Some(w) = wd {
                    *weight_decay = w;
                }
            }
            OptimizerConfig::Adam {
                amsgrad,
                weight_decay,
                ..
            } => {
                *amsgrad = self.amsgrad;
                if let Some(w) = wd {
                    *weight_decay = w;
                }
            }
            OptimizerConfig::RmsProp {
                momentum,
                centered,
                weight_decay,
                ..
            } => {
                *momentum = m;
                *centered = self.centered;
                if let Some(w) = wd {
                    *weight_decay = w;
                }
            }
            OptimizerConfig::Adagrad { weight_decay, .. } => {
                if let Some(w) = wd {
                    *weight_decay = w;
                }
            }
        }
        c.validate().map_err(UserError)?;
        Ok(c)
    }

    /// The same optimizer for the planner.
    pub fn planner(&self) -> Result<Optimizer> {
        planner_optimizer(
            self.name(),
            self.momentum.unwrap_or(0.0),
            self.nesterov,
            self.amsgrad,
            self.centered,
            self.weight_decay,
        )
    }

    /// The optimizer to continue a checkpoint with: the checkpoint's own, with `--lr`
    /// and `--weight-decay` applied when given; any other option given must agree with
    /// it, since its state tensors were made by that optimizer.
    fn resumed(&self, stored: &OptimizerConfig, ck: &std::path::Path) -> Result<OptimizerConfig> {
        let given = self.optimizer.is_some()
            || self.momentum.is_some()
            || self.nesterov
            || self.amsgrad
            || self.centered;
        if given {
            let mut wanted = self.engine()?;
            wanted.set_lr(stored.lr());
            let mut same = stored.clone();
            if let Some(w) = self.weight_decay()? {
                set_weight_decay(&mut same, w);
            }
            let mut wanted_cmp = wanted.clone();
            if self.weight_decay.is_none() {
                set_weight_decay(&mut wanted_cmp, weight_decay_of(stored));
            }
            if wanted_cmp != same {
                return Err(UserError(format!(
                    "{}: the checkpoint was trained with {}; --resume continues with it, so \
                     drop the optimizer options or give the same ones (only --lr and \
                     --weight-decay may change)",
                    ck.display(),
                    describe_optimizer(stored)
                )));
            }
        }
        let mut c = stored.clone();
        if let Some(lr) = self.lr()? {
            c.set_lr(lr);
        }
        if let Some(w) = self.weight_decay()? {
            planner_optimizer(c.name(), 0.0, false, false, false, Some(w as f64))?;
            set_weight_decay(&mut c, w);
        }
        Ok(c)
    }
}

fn weight_decay_of(c: &OptimizerConfig) -> f32 {
    match *c {
        OptimizerConfig::Sgd { weight_decay, .. }
        | OptimizerConfig::Adam { weight_decay, .. }
        | OptimizerConfig::RmsProp { weight_decay, .. }
        | OptimizerConfig::Adagrad { weight_decay, .. } => weight_decay,
    }
}

fn set_weight_decay(c: &mut OptimizerConfig, w: f32) {
    match c {
        OptimizerConfig::Sgd { weight_decay, .. }
        | OptimizerConfig::Adam { weight_decay, .. }
        | OptimizerConfig::RmsProp { weight_decay, .. }
        | OptimizerConfig::Adagrad { weight_decay, .. } => *weight_decay = w,
    }
}

/// `adam (lr 0.001, weight decay 0)`, with the options that change its state.
fn describe_optimizer(c: &OptimizerConfig) -> String {
    let mut extra = String::new();
    match *c {
        OptimizerConfig::Sgd {
            momentum, nesterov, ..
        } => {
            if momentum != 0.0 {
                extra += &format!(", momentum {momentum}");
            }
            if nesterov {
                extra += ", nesterov";
            }
        }
        OptimizerConfig::Adam { amsgrad: true, .. } => extra += ", amsgrad",
        OptimizerConfig::RmsProp {
            momentum, centered, ..
        } => {
            if momentum != 0.0 {
                extra += &format!(", momentum {momentum}");
            }
            if centered {
                extra += ", centered";
            }
        }
        _ => {}
    }
    format!(
        "{} (lr {}, weight decay {}{extra})",
        c.name(),
        c.lr(),
        weight_decay_of(c)
    )
}

#[derive(Args)]
pub struct TrainArgs {
    /// A zoo model, a .toml model file, or a .onnx or .pt2 file whose layers the engine runs;
    /// its input and classes follow the data.
    pub model: String,
    #[command(flatten)]
    pub source: DataArg,
    /// Epochs in all (with --resume, counting the checkpoint's).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Images per optimizer step.
    #[arg(long, short = 'b', default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Seed of the initial weights, the shuffling and the augmentation (with --resume,
    /// the checkpoint's is used).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: every core; at most 4 per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many steps of this run (at least 1; a resumed run counts its own);
    /// the checkpoint records the step within the epoch, and --resume continues from it.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Normalize with the training split's own mean and std (`auto`), none, or `MEAN,STD`.
    #[arg(long, default_value = "auto")]
    pub normalize: String,
    /// Augment training images as torchvision's CIFAR recipe does: RandomCrop(size,
    /// padding=4) and RandomHorizontalFlip() before ToTensor and Normalize.
    #[arg(long)]
    pub augment: bool,
    /// Save a checkpoint here after each epoch, at --max-steps and on Ctrl-C (checked
    /// for writing before training starts).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Continue from a checkpoint: its weights, optimizer and state, epoch and step.
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--data DATASET [--root DIR]`.
#[derive(Args, Clone)]
pub struct DataArg {
    /// fashion-mnist, mnist, cifar10, ... or a folder.
    #[arg(long = "data")]
    pub dataset: String,
    /// Folder the dataset's files are in (default: the dataset cache).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub folder: crate::data_cmd::FolderArgs,
}

impl DataArg {
    pub fn open(&self) -> Result<Dataset> {
        Source {
            dataset: self.dataset.clone(),
            root: self.root.clone(),
            folder: self.folder.clone(),
            coarse: false,
        }
        .open()
    }

    /// Opens the dataset and checks it has training images.
    fn open_for_training(&self) -> Result<Dataset> {
        let ds = self.open()?;
        if ds.train.is_empty() {
            return Err(UserError(format!(
                "{}: the training split has no images",
                ds.name
            )));
        }
        Ok(ds)
    }
}

/// The most threads `--threads` takes: 4 per core, and never more than 1024.
fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_mul(4).min(1024)
}

/// `--threads` (checked), or every core.
fn threads_or_all(threads: Option<usize>) -> Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match threads {
        None => Ok(cores.min(1024)),
        Some(0) => Err(UserError("--threads must be at least 1, got 0".into())),
        Some(t) if t > max_threads() => Err(UserError(format!(
            "--threads {t}: at most {} on this machine ({cores} cores, 4 threads per core)",
            max_threads()
        ))),
        Some(t) => Ok(t),
    }
}

/// `--max-steps` and `--samples`: when given, at least 1.
fn at_least_one(option: &str, v: Option<usize>) -> Result<()> {
    if v == Some(0) {
        return Err(UserError(format!("{option} must be at least 1, got 0")));
    }
    Ok(())
}

/// The memory this machine can give now (`MemAvailable` of /proc/meminfo), if known.
fn available_memory() -> Option<u128> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open("/proc/meminfo")
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses, before anything is allocated, a step whose planned peak (the planner's
/// `native` profile, which the engine matches to the byte) exceeds the memory free now,
/// or the address space where that is unknown.
fn check_fits_in_memory(planned_peak: u128, what: &str) -> Result<()> {
    let (limit, source) = match available_memory() {
        Some(m) => (m, "available on this machine (MemAvailable)"),
        None => (isize::MAX as u128, "a process can address"),
    };
    if planned_peak > limit {
        return Err(UserError(format!(
            "{what} needs {} at its peak (the planner's native profile), more than the {} \
             {source}; use a smaller batch",
            bytes(planned_peak),
            bytes(limit)
        )));
    }
    Ok(())
}

/// The planner's peak for the engine's step, checked against free memory.
fn planned_step(
    g: &Shaped,
    batch: usize,
    optimizer: Optimizer,
    threads: usize,
    what: &str,
) -> Result<vramlab_memory::MemoryReport> {
    let mut pcfg = PlanConfig::new(batch as u64);
    pcfg.profile = Profile::Native;
    pcfg.optimizer = optimizer;
    pcfg.threads = threads;
    let planned = plan(g, &pcfg)?;
    check_fits_in_memory(planned.peak_bytes, what)?;
    Ok(planned)
}

/// The last batch of an epoch of `n` images is smaller: a BatchNorm that it leaves one
/// value per channel fails there as in PyTorch, after an epoch of work; say so before.
fn check_last_batch(
    g: &Shaped,
    n: usize,
    batch: usize,
    optimizer: Optimizer,
    threads: usize,
) -> Result<()> {
    let last = n % batch.max(1);
    if last == 0 {
        return Ok(());
    }
    let mut pcfg = PlanConfig::new(last as u64);
    pcfg.profile = Profile::Native;
    pcfg.optimizer = optimizer;
    pcfg.threads = threads;
    match plan(g, &pcfg) {
        Ok(_) => Ok(()),
        Err(err) => Err(UserError(format!(
            "the last batch of each epoch holds {last} of the {n} training images (batch \
             {batch}), where {err}; choose a batch size that leaves more"
        ))),
    }
}

/// Where a model comes from, as a checkpoint records it: a zoo name, or a model file's
/// whole text (so that loading a checkpoint never opens a path its metadata names).
enum ModelSource {
    Zoo(String),
    File {
        name: String,
        text: String,
    },
    /// A model read from a .pt2 or .onnx file, as its graph's JSON: a checkpoint carries
    /// it, since such a file is too large to embed and may change.
    Graph {
        name: String,
        json: String,
    },
}

/// A model file is at most this large (a model file is a short list of layers).
const MAX_MODEL_FILE_BYTES: u64 = 1 << 20;

impl ModelSource {
    fn of(name: &str) -> Result<ModelSource> {
        if vramlab_graph::zoo::describe(name).is_some() {
            return Ok(ModelSource::Zoo(name.to_string()));
        }
        let path = std::path::Path::new(name);
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".onnx") || lower.ends_with(".pt2") {
            let mut g = crate::load_graph(
                name,
                &ModelOptions::default(),
                &vramlab_onnx::Options::default(),
            )?;
            // The engine trains without auxiliary classifiers, as for the zoo's.
            if !g.aux.is_empty() {
                eprintln!(
                    "note: {name} trains here without its {} auxiliary output(s) (the CPU \
                     engine trains the logits alone); `vramlab memory {name}` plans them",
                    g.aux.len()
                );
                g = g.without_aux();
            }
            eprintln!(
                "note: {name}'s weights are not read: training starts from PyTorch's default \
                 initialisation of its layers"
            );
            let json = serde_json::to_string(&g)?;
            return Ok(ModelSource::Graph {
                name: name.to_string(),
                json,
            });
        }
        if !path.is_file() {
            // Not a zoo name nor a file: the graph crate says which models exist.
            vramlab_graph::load(name, &ModelOptions::default())?;
            return Err(UserError(format!("{name}: not a model file")));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path)
                    .map_err(|e| UserError(format!("{name}: cannot read the model file: {e}")))?,
                MAX_MODEL_FILE_BYTES + 1,
            ),
            &mut text,
        )
        .map_err(|e| UserError(format!("{name}: cannot read the model file: {e}")))?;
        if text.len() as u64 > MAX_MODEL_FILE_BYTES {
            return Err(UserError(format!(
                "{name}: a model file is at most {} bytes",
                MAX_MODEL_FILE_BYTES
            )));
        }
        Ok(ModelSource::File {
            name: name.to_string(),
            text,
        })
    }

    /// The model from a checkpoint's metadata: a zoo name, or the embedded model file.
    fn from_checkpoint(meta: &BTreeMap<String, String>, ck: &std::path::Path) -> Result<Self> {
        let name = meta.get("model").ok_or_else(|| {
            UserError(format!(
                "{}: not a vramlab checkpoint (no `model` in its metadata)",
                ck.display()
            ))
        })?;
        if let Some(text) = meta.get("model_file") {
            return Ok(ModelSource::File {
                name: name.clone(),
                text: text.clone(),
            });
        }
        if let Some(json) = meta.get("model_graph") {
            return Ok(ModelSource::Graph {
                name: name.clone(),
                json: json.clone(),
            });
        }
        if vramlab_graph::zoo::describe(name).is_none() {
            return Err(UserError(format!(
                "{}: its metadata names the model {name:?}, which is not a zoo model, and it \
                 carries no model file (the file was changed, or saved by an older vramlab)",
                ck.display()
            )));
        }
        Ok(ModelSource::Zoo(name.clone()))
    }

    fn build(&self, opts: &ModelOptions, origin: &str) -> Result<Shaped> {
        let mut g = match self {
            // The engine trains GoogLeNet and Inception v3 without their auxiliary heads.
            ModelSource::Zoo(name) => {
                let g = vramlab_graph::zoo::build(name, opts)?;
                if !g.aux.is_empty() {
                    eprintln!(
                        "note: {name} trains here without its auxiliary classifiers \
                         (aux_logits=False); `vramlab memory {name}` plans them"
                    );
                }
                g.without_aux()
            }
            ModelSource::File { text, .. } => vramlab_graph::model_file::parse(text, origin)
                .map_err(|e| UserError(format!("{e}")))?,
            ModelSource::Graph { json, .. } => serde_json::from_str(json)
                .map_err(|e| UserError(format!("{origin}: not a model graph: {e}")))?,
        };
        if let Some(s) = &opts.input_shape {
            g.input_shape = s.clone();
        }
        // A model file is named in the planner's errors about its layers.
        if !matches!(self, ModelSource::Zoo(_)) {
            g.source = Some(origin.to_string());
        }
        // The layer an error names is in this model: say which model, and from where.
        g.infer().map_err(|e| UserError(format!("{origin}: {e}")))
    }

    fn record(&self, m: &mut BTreeMap<String, String>) {
        match self {
            ModelSource::Zoo(name) => {
                m.insert("model".into(), name.clone());
            }
            ModelSource::File { name, text } => {
                m.insert("model".into(), name.clone());
                m.insert("model_file".into(), text.clone());
            }
            ModelSource::Graph { name, json } => {
                m.insert("model".into(), name.clone());
                m.insert("model_graph".into(), json.clone());
            }
        }
    }
}

/// Builds the model for a dataset: input and number of classes follow the data.
pub fn model_for(name: &str, ds: &Dataset) -> Result<Shaped> {
    model_source_for(&ModelSource::of(name)?, name, ds)
}

fn model_source_for(src: &ModelSource, name: &str, ds: &Dataset) -> Result<Shaped> {
    let opts = ModelOptions {
        num_classes: Some(ds.classes.len()),
        input_shape: Some(ds.shape.to_vec()),
    };
    let g = src.build(&opts, name)?;
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

/// Checks a normalisation: one finite mean and one finite std > 0 per channel.
fn check_normalization(mean: &[f32], std: &[f32], channels: usize, what: &str) -> Result<()> {
    if mean.len() != channels || std.len() != channels {
        return Err(UserError(format!(
            "{what}: {} means and {} stds for {channels} channels",
            mean.len(),
            std.len()
        )));
    }
    if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
        return Err(UserError(format!(
            "{what}: the mean must be finite, got {m}"
        )));
    }
    if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(UserError(format!(
            "{what}: the std must be finite and greater than 0, got {s}"
        )));
    }
    // Pixels are 0 to 1 after ToTensor: both ends must stay finite in float32 once
    // normalised, or the first step's loss is inf or NaN.
    for (m, s) in mean.iter().zip(std) {
        if let Some(v) = [0.0f32, 1.0]
            .into_iter()
            .find(|v| !((v - m) / s).is_finite())
        {
            return Err(UserError(format!(
                "{what}: mean {m:?} and std {s:?} normalise the pixel value {v} to {}, beyond \
                 float32: give a std of at least about 1e-37",
                (v - m) / s
            )));
        }
    }
    Ok(())
}

fn normalization(spec: &str, ds: &Dataset) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = ds.shape[0];
    let (mean, std) = match spec {
        "auto" => {
            let s = vramlab_data::stats::channel_stats(ds, &ds.train);
            // A constant channel has std 0, where Normalize would divide by zero: its
            // values all equal the mean, so std 1 gives the same zeros, and says so.
            let std = s
                .std
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if (v as f32) < 1e-6 {
                        eprintln!("note: channel {i} of the training images is constant (std 0): it is normalised with std 1 instead of dividing by zero");
                        1.0
                    } else {
                        v as f32
                    }
                })
                .collect();
            (s.mean.iter().map(|&v| v as f32).collect(), std)
        }
        "none" => (vec![0.0; c], vec![1.0; c]),
        other => {
            let v: std::result::Result<Vec<f32>, _> =
                other.split(',').map(|x| x.trim().parse::<f32>()).collect();
            match v {
                Ok(v) if v.len() == 2 => (vec![v[0]; c], vec![v[1]; c]),
                _ => {
                    return Err(UserError(format!(
                        "--normalize `{other}`: expected auto, none or MEAN,STD"
                    )))
                }
            }
        }
    };
    check_normalization(&mean, &std, c, &format!("--normalize `{spec}`"))?;
    Ok((mean, std))
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

use vramlab_train::EpochRow;

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
    /// The optimizer trained with, e.g. `adam (lr 0.001, weight decay 0)`.
    optimizer: String,
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

/// What a checkpoint records besides the tensors and the engine's own (step, RNG,
/// optimizer).
struct RunInfo<'a> {
    model: &'a ModelSource,
    ds: &'a Dataset,
    mean: &'a [f32],
    std: &'a [f32],
    seed: u64,
    batch_size: usize,
}

/// The checkpoint's metadata at a position: `position` batches of `epoch` (from 0),
/// which has `batches`, are done. A stop inside the epoch records the batch reached, so
/// --resume goes on from there; a finished epoch records the start of the next one.
fn metadata(
    r: &RunInfo,
    epoch: usize,
    position: usize,
    batches: usize,
) -> BTreeMap<String, String> {
    let (epoch, batch_in_epoch) = if position >= batches {
        (epoch + 1, 0)
    } else {
        (epoch, position)
    };
    let mut m = BTreeMap::new();
    m.insert("format".into(), "vramlab checkpoint 2".into());
    r.model.record(&mut m);
    m.insert("input_shape".into(), fmt_shape(&r.ds.shape));
    m.insert(
        "classes".into(),
        serde_json::to_string(&r.ds.classes).expect("strings"),
    );
    m.insert(
        "mean".into(),
        serde_json::to_string(r.mean).expect("floats"),
    );
    m.insert("std".into(), serde_json::to_string(r.std).expect("floats"));
    m.insert("epoch".into(), epoch.to_string());
    m.insert("batch_in_epoch".into(), batch_in_epoch.to_string());
    m.insert("batch_size".into(), r.batch_size.to_string());
    m.insert("seed".into(), r.seed.to_string());
    m.insert("dataset".into(), r.ds.name.clone());
    m
}

/// Accuracy and mean loss over a split, in eval mode.
/// The largest batch up to `wanted` whose forward pass (the engine's `predict`, the
/// planner's native profile in inference mode) fits in free memory, halving from
/// `wanted`: an evaluation's batch changes only its speed, and `eval -b 4096` of a
/// ResNet-18 on 224x224 images needed 25 GiB (the process was killed for memory).
fn inference_batch(g: &Shaped, wanted: usize, threads: usize) -> Result<usize> {
    let mut b = wanted.max(1);
    loop {
        let mut pcfg = PlanConfig::new(b as u64);
        pcfg.profile = Profile::Native;
        pcfg.mode = vramlab_memory::Mode::Inference;
        pcfg.threads = threads;
        let peak = plan(g, &pcfg)?.peak_bytes;
        match check_fits_in_memory(peak, &format!("evaluating {} at batch {b}", g.graph.name)) {
            Ok(()) => {
                if b < wanted {
                    eprintln!(
                        "note: evaluating in batches of {b}, not {wanted}: a batch of {wanted} \
                         would not fit in free memory (the result is the same)"
                    );
                }
                return Ok(b);
            }
            Err(e) if b == 1 => return Err(e),
            Err(_) => b /= 2,
        }
    }
}

fn evaluate(
    e: &mut Engine,
    ds: &Arc<Dataset>,
    split: &str,
    mean: &[f32],
    std: &[f32],
    batch: usize,
) -> Result<(f64, f64)> {
    let p = Pipeline::normalize(ds.shape, mean.to_vec(), std.to_vec())?;
    let images = ds.split(split)?.len();
    let batch = inference_batch(&e.graph, batch.min(images).max(1), e.threads())?;
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
    let loss = loss / n.max(1) as f64;
    // Logits that overflow give a NaN loss and an argmax of NaNs: no accuracy to report.
    if !loss.is_finite() {
        return Err(UserError(format!(
            "the loss on {} {split} is {loss}: the model's outputs overflow, so no accuracy is \
             reported",
            ds.name
        )));
    }
    Ok((correct as f64 / n.max(1) as f64, loss))
}

/// Where a resumed run starts, and with what.
struct Resume {
    epoch: usize,
    batch_in_epoch: usize,
    seed: u64,
}

/// Reads a checkpoint to resume: checks it against the data and the run, and returns
/// the optimizer to continue with.
fn read_resume(
    a: &TrainArgs,
    r: &std::path::Path,
    ds: &Dataset,
) -> Result<(checkpoint::Checkpoint, OptimizerConfig, Resume)> {
    let ck = checkpoint::read(r)?;
    if ck.metadata.get("input_shape").map(String::as_str) != Some(fmt_shape(&ds.shape).as_str()) {
        return Err(UserError(format!(
            "{}: the checkpoint was trained on other images than {}",
            r.display(),
            ds.name
        )));
    }
    let number = |k: &str| -> Result<Option<u64>> {
        ck.metadata
            .get(k)
            .map(|s| {
                s.parse::<u64>().map_err(|_| {
                    UserError(format!(
                        "{}: `{k}` in its metadata is not a number: {s:?}",
                        r.display()
                    ))
                })
            })
            .transpose()
    };
    let epoch = number("epoch")?.unwrap_or(0);
    let batch_in_epoch = number("batch_in_epoch")?.unwrap_or(0);
    let seed = number("seed")?.unwrap_or(a.seed);
    let too_big = |k: &str| {
        UserError(format!(
            "{}: `{k}` in its metadata is too large",
            r.display()
        ))
    };
    // Every finished epoch and every batch of the current one took an optimizer step:
    // neither count can exceed the steps the checkpoint records (at most 2^53).
    let steps = number("step")?.unwrap_or(1 << 53).min(1 << 53);
    for (k, v) in [("epoch", epoch), ("batch_in_epoch", batch_in_epoch)] {
        if v > steps {
            return Err(UserError(format!(
                "{}: `{k}` in its metadata is {v}, more than the {steps} optimizer steps it \
                 records: the file is damaged",
                r.display()
            )));
        }
    }
    let epoch = usize::try_from(epoch).map_err(|_| too_big("epoch"))?;
    let batch_in_epoch = usize::try_from(batch_in_epoch).map_err(|_| too_big("batch_in_epoch"))?;
    if batch_in_epoch > 0 {
        let saved_batch = number("batch_size")?;
        if saved_batch == Some(0) {
            return Err(UserError(format!(
                "{}: `batch_size` in its metadata is 0: the file is damaged",
                r.display()
            )));
        }
        if saved_batch != Some(a.batch_size as u64) {
            let how = match saved_batch {
                Some(b) => format!("batch size {b}; resume it with --batch-size {b}"),
                None => "another batch size; resume it with the one it was trained with".into(),
            };
            return Err(UserError(format!(
                "{}: the checkpoint stopped {batch_in_epoch} batches into epoch {} with {how}",
                r.display(),
                epoch + 1
            )));
        }
    }
    let opt = match ck.optimizer()? {
        Some(stored) => a.optim.resumed(&stored, r)?,
        None => a.optim.engine()?,
    };
    Ok((
        ck,
        opt,
        Resume {
            epoch,
            batch_in_epoch,
            seed,
        },
    ))
}

pub fn train(a: &TrainArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(UserError("--batch-size must be at least 1, got 0".into()));
    }
    if a.epochs == 0 {
        return Err(UserError("--epochs must be at least 1, got 0".into()));
    }
    at_least_one("--max-steps", a.max_steps)?;
    let threads = threads_or_all(a.threads)?;
    a.optim.engine()?;
    if let Some(c) = &a.checkpoint {
        checkpoint::check_writable(c)?;
    }
    let ds = Arc::new(a.source.open_for_training()?);
    let model = ModelSource::of(&a.model)?;
    let g = model_source_for(&model, &a.model, &ds)?;
    let (mean, std) = normalization(&a.normalize, &ds)?;
    let resume = a
        .resume
        .as_ref()
        .map(|r| read_resume(a, r, &ds))
        .transpose()?;
    let opt = match &resume {
        Some((_, opt, _)) => opt.clone(),
        None => a.optim.engine()?,
    };
    let (start_epoch, skip, seed) = match &resume {
        Some((_, _, r)) => (r.epoch, r.batch_in_epoch, r.seed),
        None => (0, 0, a.seed),
    };
    if start_epoch >= a.epochs {
        return Err(UserError(format!(
            "{}: the checkpoint has finished {start_epoch} epoch(s); --epochs {} leaves \
             nothing to train (give --epochs {})",
            a.resume.as_ref().expect("resumed").display(),
            a.epochs,
            start_epoch + 1
        )));
    }
    let batch = a.batch_size.min(ds.train.len());
    let planned = planned_step(
        &g,
        batch,
        planner_optimizer_of(&opt)?,
        threads,
        &format!("training {} at batch {batch}", g.graph.name),
    )?;
    check_last_batch(
        &g,
        ds.train.len(),
        batch,
        planner_optimizer_of(&opt)?,
        threads,
    )?;
    let described = describe_optimizer(&opt);
    let mut e = Engine::new(g.clone(), opt, seed, threads)?;
    if let Some((ck, _, _)) = &resume {
        ck.load_into(&mut e)?;
    }
    let pipeline = train_pipeline(&ds, &mean, &std, a.augment)?;
    let lcfg = LoaderConfig {
        batch_size: a.batch_size,
        shuffle: true,
        seed,
        drop_last: false,
        workers: 1,
        prefetch: 4,
    };
    let loader = Loader::new(Arc::clone(&ds), "train", pipeline, lcfg)?;
    let batches = loader.num_batches();
    if skip >= batches {
        return Err(UserError(format!(
            "{}: the checkpoint stopped after batch {skip} of an epoch that has {batches}",
            a.resume.as_ref().expect("resumed").display()
        )));
    }
    let info = RunInfo {
        model: &model,
        ds: &ds,
        mean: &mean,
        std: &std,
        seed,
        batch_size: a.batch_size,
    };
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    let show_bar = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !a.json {
        eprintln!(
            "training {} ({} params) on {} ({} images, {}), batch {}, {}, {} threads; planned peak {}",
            g.graph.name,
            thousands(g.num_params()),
            ds.name,
            thousands(ds.train.len() as u128),
            fmt_shape(&ds.shape),
            a.batch_size,
            described,
            threads,
            bytes(planned.peak_bytes)
        );
        if a.batch_size > ds.train.len() {
            eprintln!(
                "note: batch {} is larger than the {} training images: each epoch is one step \
                 of {}",
                a.batch_size,
                ds.train.len(),
                ds.train.len()
            );
        }
    }
    let schedule = vramlab_train::Schedule {
        epochs: a.epochs,
        start_epoch,
        skip_batches: skip,
        max_steps: a.max_steps,
        checkpoint: a.checkpoint.clone(),
        checkpoint_is_start: a.resume.is_some() && a.resume == a.checkpoint,
    };
    let mut progress = Progress {
        bar: None,
        show_bar,
        quiet: a.json,
        epochs: a.epochs,
    };
    let eval_batch = 256.max(a.batch_size).min(4096);
    let outcome = vramlab_train::run(
        &mut e,
        &loader,
        &schedule,
        &INTERRUPTED,
        &|epoch, position, batches| metadata(&info, epoch, position, batches),
        &mut |e| {
            if ds.test.as_ref().is_some_and(|t| !t.is_empty()) {
                // After the epoch's last update, before its checkpoint: weights that
                // diverged on that update stop the run here (the training loss, taken
                // before each update, cannot see it).
                evaluate(e, &ds, "test", &mean, &std, eval_batch)
                    .map(|(acc, _)| Some(acc))
                    .map_err(|err| {
                        vramlab_train::TrainError::Eval(format!(
                            "training diverged: {}; the epoch's checkpoint was not written (a \
                             lower --lr?)",
                            err.0
                        ))
                    })
            } else {
                Ok(None)
            }
        },
        &mut progress,
    )?;
    let rows = outcome.epochs;
    let measured: Vec<StepReport> = outcome
        .measured
        .iter()
        .enumerate()
        .map(|(k, m)| measured_step(k as u32 + 1, m))
        .collect();
    let stopped = outcome.stopped;
    let out = TrainJson {
        model: g.graph.name.clone(),
        dataset: ds.name.clone(),
        num_params: g.num_params(),
        batch_size: a.batch_size,
        threads,
        optimizer: described,
        epochs: rows,
        memory: MemoryPair {
            measured: Steps { steps: measured },
            planned: Steps {
                steps: planned.steps.clone(),
            },
        },
        stopped: stopped.as_ref().map(|s| s.to_string()),
    };
    if a.json {
        print_json(&out)?;
    } else {
        print!("{}", render_memory(&out));
    }
    match stopped {
        Some(s @ vramlab_train::Stop::NonFiniteLoss { .. }) => Err(UserError(s.to_string())),
        Some(s @ vramlab_train::Stop::Interrupted { .. }) => {
            eprintln!("{s}");
            std::process::exit(130);
        }
        Some(s @ vramlab_train::Stop::MaxSteps { .. }) => {
            eprintln!("{s}");
            Ok(())
        }
        None => Ok(()),
    }
}

/// The training loop's progress on the terminal: a bar per epoch (when stderr is a
/// terminal) and one line per finished epoch (unless --json).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    show_bar: bool,
    quiet: bool,
    epochs: usize,
}

impl vramlab_train::Observer for Progress {
    fn epoch_started(&mut self, epoch: usize, batches: usize, done: usize) {
        if !self.show_bar {
            return;
        }
        let b = indicatif::ProgressBar::new(batches as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} {bar:30} {pos}/{len} {msg} eta {eta}",
            )
            .expect("a valid template"),
        );
        b.set_prefix(format!("{}/{}", epoch + 1, self.epochs));
        b.set_position(done as u64);
        self.bar = Some(b);
    }

    fn step(&mut self, index: usize, loss: f64, accuracy: f64, images_per_s: f64) {
        if let Some(b) = &self.bar {
            if index.is_multiple_of(10) {
                b.set_message(format!(
                    "loss {loss:.4} acc {accuracy:.3} {images_per_s:.0} img/s"
                ));
            }
            b.set_position(index as u64 + 1);
        }
    }

    fn epoch_steps_done(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn epoch_finished(&mut self, row: &EpochRow) {
        if self.quiet {
            return;
        }
        eprintln!(
            "epoch {}: train loss {:.4}, train accuracy {:.4}, test accuracy {}, {:.1} s, {} images/s",
            row.epoch,
            row.train_loss,
            row.train_accuracy,
            row.test_accuracy
                .map(|t| format!("{t:.4}"))
                .unwrap_or_else(|| "-".into()),
            row.seconds,
            thousands(row.images_per_s as u128)
        );
    }
}

fn render_memory(o: &TrainJson) -> String {
    if o.memory.measured.steps.is_empty() {
        // No step finished (the first one's loss was NaN): nothing was measured.
        return String::new();
    }
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
    /// A checkpoint saved by `vramlab train --checkpoint`.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    source: DataArg,
    /// train or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Images per forward pass (does not change the result, only speed and memory).
    #[arg(long, short = 'b', default_value_t = 256)]
    batch_size: usize,
    /// Threads (default: every core; at most 4 per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the result as JSON.
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

/// Rebuilds the model a checkpoint was saved from (a zoo name, or the model file it
/// carries: never a path its metadata names) and loads it.
fn engine_from(path: &std::path::Path, threads: usize) -> Result<Restored> {
    let ck = checkpoint::read(path)?;
    let meta = |k: &str| {
        ck.metadata.get(k).cloned().ok_or_else(|| {
            UserError(format!(
                "{}: not a vramlab checkpoint (no `{k}` in its metadata)",
                path.display()
            ))
        })
    };
    let bad = |k: &str, e: &dyn std::fmt::Display| {
        UserError(format!(
            "{}: `{k}` in its metadata is not valid: {e}",
            path.display()
        ))
    };
    let classes: Vec<String> =
        serde_json::from_str(&meta("classes")?).map_err(|e| bad("classes", &e))?;
    if classes.is_empty() {
        return Err(bad("classes", &"no classes"));
    }
    // predict prints them: a class named with a terminal escape must not drive it.
    for c in &classes {
        vramlab_graph::text::check_printable(c, "a class").map_err(|e| bad("classes", &e))?;
    }
    let shape =
        vramlab_graph::parse_shape(&meta("input_shape")?).map_err(|e| bad("input_shape", &e))?;
    let opts = ModelOptions {
        num_classes: Some(classes.len()),
        input_shape: Some(shape.clone()),
    };
    let source = ModelSource::from_checkpoint(&ck.metadata, path)?;
    let origin = match &source {
        ModelSource::File { .. } => format!("{} (its model file)", path.display()),
        ModelSource::Graph { .. } => format!("{} (its model graph)", path.display()),
        ModelSource::Zoo(name) => format!("{}: its model {name:?}", path.display()),
    };
    let g = source.build(&opts, &origin)?;
    if g.num_classes() != classes.len() {
        return Err(bad(
            "classes",
            &format!(
                "{} classes for a model with {}",
                classes.len(),
                g.num_classes()
            ),
        ));
    }
    let opt = ck
        .optimizer()?
        .unwrap_or_else(|| OptimizerConfig::named("sgd", None).expect("a known optimizer"));
    // The weights and the optimizer state are allocated before they are read: a model
    // (say, an embedded model file) too large for this machine is refused first. A
    // training step of 2 images, not 1: at 1 the planner refuses a BatchNorm over 1x1
    // maps as PyTorch's training mode does, which eval and predict are not in.
    planned_step(
        &g,
        2,
        planner_optimizer_of(&opt)?,
        threads,
        &format!("{}: its model {}", path.display(), g.graph.name),
    )?;
    let mut e = Engine::new(g, opt, 0, threads)?;
    ck.load_into(&mut e)?;
    let mean: Vec<f32> = serde_json::from_str(&meta("mean")?).map_err(|e| bad("mean", &e))?;
    let std: Vec<f32> = serde_json::from_str(&meta("std")?).map_err(|e| bad("std", &e))?;
    check_normalization(
        &mean,
        &std,
        shape[0],
        &format!("{}: its normalisation", path.display()),
    )?;
    Ok(Restored {
        engine: e,
        mean,
        std,
        classes,
    })
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(UserError("--batch-size must be at least 1, got 0".into()));
    }
    let threads = threads_or_all(a.threads)?;
    let Restored {
        engine: mut e,
        mean,
        std,
        classes,
    } = engine_from(&a.checkpoint, threads)?;
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
    // Labels are indices: scored against other classes (another dataset, folders in
    // another order) the accuracy would mean nothing.
    if ds.classes != classes {
        let few = |c: &[String]| {
            let mut s = c.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
            if c.len() > 4 {
                s.push_str(", ...");
            }
            s
        };
        return Err(UserError(format!(
            "{}: trained on the classes {}, but {} has {}: its labels would be scored against \
             other classes",
            a.checkpoint.display(),
            few(&classes),
            ds.name,
            few(&ds.classes)
        )));
    }
    let samples = ds.split(&a.split)?.len();
    if samples == 0 {
        return Err(UserError(format!(
            "{}: the {} split has no images",
            ds.name, a.split
        )));
    }
    let t0 = Instant::now();
    let (acc, loss) = evaluate(&mut e, &ds, &a.split, &mean, &std, a.batch_size.min(4096))
        .map_err(|err| UserError(format!("{}: {}", a.checkpoint.display(), err.0)))?;
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
        samples,
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
    /// A checkpoint saved by `vramlab train --checkpoint`.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// An image file (PNG, JPEG, BMP, GIF, WebP); resized to the model's input.
    image: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    let Restored {
        engine: mut e,
        mean,
        std,
        classes,
    } = engine_from(&a.checkpoint, 1)?;
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
    if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
        return Err(UserError(format!(
            "{}: the model's output for {} is {v}: it overflows, so no class is predicted",
            a.checkpoint.display(),
            a.image.display()
        )));
    }
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

/// The longest `bench train --seconds`.
const MAX_BENCH_SECONDS: f64 = 3600.0;

#[derive(Args)]
pub struct BenchTrainArgs {
    /// A zoo model or a .toml file.
    model: String,
    /// Input shape per image (default: the model's own).
    #[arg(long, value_name = "CxHxW")]
    input: Option<String>,
    /// Images per training step.
    #[arg(long, short = 'b', default_value_t = 64)]
    batch_size: usize,
    /// Threads (default: every core; at most 4 per core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    optim: OptimArgs,
    /// Time at least this long after 5 warm-up steps (more than 0, at most 3600).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn bench_train(a: &BenchTrainArgs) -> Result<()> {
    if a.batch_size == 0 {
        return Err(UserError("--batch-size must be at least 1, got 0".into()));
    }
    if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= MAX_BENCH_SECONDS) {
        return Err(UserError(format!(
            "--seconds must be more than 0 and at most {MAX_BENCH_SECONDS}, got {}",
            a.seconds
        )));
    }
    let threads = threads_or_all(a.threads)?;
    let opt = a.optim.engine()?;
    let input = a
        .input
        .as_deref()
        .map(vramlab_graph::parse_shape)
        .transpose()?;
    let g = crate::load_graph(
        &a.model,
        &ModelOptions {
            num_classes: None,
            input_shape: input,
        },
        &vramlab_onnx::Options::default(),
    )?
    .infer()?;
    let per = g.shapes[0]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let values = per.and_then(|p| p.checked_mul(a.batch_size));
    let what = format!("a step of {} at batch {}", g.graph.name, a.batch_size);
    let Some(values) = values.filter(|v| v.checked_mul(4).is_some()) else {
        return Err(UserError(format!(
            "{what}: a batch of {} images of {} does not fit in memory",
            a.batch_size,
            fmt_shape(&g.shapes[0])
        )));
    };
    planned_step(
        &g,
        a.batch_size,
        planner_optimizer_of(&opt)?,
        threads,
        &what,
    )?;
    let mut e = Engine::new(g.clone(), opt, 0, threads)?;
    let k = g.num_classes();
    let mut rng = vramlab_data::rng::Rng::new(1);
    let images: Vec<f32> = (0..values).map(|_| rng.unit_f64() as f32 - 0.5).collect();
    let labels: Vec<i64> = (0..a.batch_size).map(|i| (i % k) as i64).collect();
    // Weights that diverged make every later step non-finite arithmetic: timing that
    // would describe no real run, so the benchmark stops at the first such loss.
    let mut taken = 0usize;
    let mut step = |e: &mut Engine| -> Result<()> {
        let x = e.batch(images.clone(), a.batch_size)?;
        let y = e.labels(labels.clone());
        let loss = e.train_step(&x, &y)?.loss;
        taken += 1;
        if !loss.is_finite() {
            return Err(UserError(format!(
                "{what}: the loss is {loss} at step {taken} (the weights diverged with lr {:e}); \
                 timing non-finite arithmetic says nothing of a real run: a lower --lr?",
                e.optimizer.lr()
            )));
        }
        Ok(())
    };
    for _ in 0..5 {
        step(&mut e)?;
    }
    e.op_seconds.clear();
    let t0 = Instant::now();
    let mut steps = 0usize;
    // Bounded: --seconds is finite and capped.
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
        images_per_s: steps as f64 * a.batch_size as f64 / seconds,
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
        a.optim.name(),
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
    /// Batch sizes to train with, from the same seed (each at most the number of
    /// training images).
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,1024")]
    pub batch_sizes: Vec<usize>,
    /// Epochs per batch size (at least 1).
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
    /// Seed of the initial weights and the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: every core; at most 4 per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write plots here: accuracy and speed against batch size, loss curves (checked for
    /// writing before training starts).
    #[arg(long, value_name = "DIR")]
    pub plot_dir: Option<PathBuf>,
    /// Print the result as JSON.
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

/// The most batch sizes one sweep trains (and a sweep JSON may hold).
pub const MAX_SWEEP_ROWS: usize = 64;

impl SweepJson {
    /// Checks what a sweep would have written: batch sizes positive and distinct, rates,
    /// losses and accuracies finite and in range, curves ordered. `report --sweep` reads
    /// files that anyone may have edited.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.rows.is_empty() {
            return Err("`rows` is empty: a sweep has a row per batch size".into());
        }
        if self.rows.len() > MAX_SWEEP_ROWS {
            return Err(format!(
                "{} rows: a sweep has at most {MAX_SWEEP_ROWS} batch sizes",
                self.rows.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.rows.iter().enumerate() {
            let at = |field: &str, what: &str| format!("rows[{i}].{field}: {what}");
            if r.batch_size == 0 {
                return Err(at("batch_size", "expected 1 or more, got 0"));
            }
            if !seen.insert(r.batch_size) {
                return Err(at(
                    "batch_size",
                    &format!("batch {} appears twice", r.batch_size),
                ));
            }
            let finite_non_negative = [
                ("seconds", r.seconds),
                ("images_per_s", r.images_per_s),
                ("final_train_loss", r.final_train_loss),
                ("loss_noise", r.loss_noise),
            ];
            for (field, v) in finite_non_negative {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(at(
                        field,
                        &format!("expected a finite number of 0 or more, got {v}"),
                    ));
                }
            }
            if !(r.lr.is_finite() && r.lr > 0.0) {
                return Err(at(
                    "lr",
                    &format!("expected a finite number more than 0, got {}", r.lr),
                ));
            }
            if let Some(a) = r.test_accuracy {
                if !(0.0..=1.0).contains(&a) {
                    return Err(at("test_accuracy", &format!("expected 0 to 1, got {a}")));
                }
            }
            for (j, &(x, y)) in r.loss_curve.iter().enumerate() {
                if !(y.is_finite() && y >= 0.0) {
                    return Err(at(
                        &format!("loss_curve[{j}]"),
                        &format!("the loss must be a finite number of 0 or more, got {y}"),
                    ));
                }
                if j > 0 && x <= r.loss_curve[j - 1].0 {
                    return Err(at(
                        &format!("loss_curve[{j}]"),
                        &format!(
                            "samples seen must increase, got {x} after {}",
                            r.loss_curve[j - 1].0
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks that the plots can be written in `dir` (creating it, in a folder that
/// exists, as a checkpoint's folder must), before any training.
fn check_plot_dir(dir: &std::path::Path) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| {
        UserError(format!(
            "--plot-dir {}: cannot write plots there: {e}",
            dir.display()
        ))
    };
    if !dir.is_dir() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(fail(&format_args!(
                    "its folder {} does not exist",
                    parent.display()
                )));
            }
        }
        std::fs::create_dir(dir).map_err(|e| fail(&e))?;
    }
    // Every file the sweep will write: one that is a folder or a FIFO is found now,
    // not after the training.
    for name in SWEEP_PLOTS {
        for ext in ["svg", "png"] {
            let file = dir.join(format!("{name}.{ext}"));
            vramlab_graph::io::check_writable(&file).map_err(|e| {
                UserError(format!(
                    "--plot-dir {}: cannot write {}: {e}",
                    dir.display(),
                    file.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// The plots a sweep writes, by file name without extension (see [`sweep_charts`]).
const SWEEP_PLOTS: [&str; 3] = ["accuracy_vs_batch", "speed_vs_batch", "loss_curves"];

/// The sweep's conclusion, read from its own rows (sorted by batch size): which batch
/// was fastest, how the number of updates and the accuracy changed.
pub fn sweep_conclusion(rows: &[SweepRow], scale_lr: &str) -> String {
    let mut rows: Vec<&SweepRow> = rows.iter().collect();
    rows.sort_by_key(|r| r.batch_size);
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return String::new();
    };
    if rows.len() < 2 {
        return format!("One batch size ({}): nothing to compare.", first.batch_size);
    }
    let speed = |r: &SweepRow| thousands(r.images_per_s.max(0.0) as u128);
    let fastest = rows
        .iter()
        .copied()
        .max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s))
        .expect("two rows or more");
    let rising = rows
        .windows(2)
        .all(|w| w[1].images_per_s >= w[0].images_per_s);
    let falling = rows
        .windows(2)
        .all(|w| w[1].images_per_s <= w[0].images_per_s);
    let mut out = if rising {
        format!(
            "Larger batches trained faster here: {} images/s at batch {} up to {} at batch {}.",
            speed(first),
            first.batch_size,
            speed(last),
            last.batch_size
        )
    } else if falling {
        format!(
            "Larger batches trained slower here: {} images/s at batch {} down to {} at batch {}.",
            speed(first),
            first.batch_size,
            speed(last),
            last.batch_size
        )
    } else {
        format!(
            "Speed peaked at batch {} ({} images/s); batch {} ran at {} images/s and batch {} at {}.",
            fastest.batch_size,
            speed(fastest),
            first.batch_size,
            speed(first),
            last.batch_size,
            speed(last)
        )
    };
    out += &format!(
        " Updates: {} steps at batch {}, {} at batch {}.",
        first.steps, first.batch_size, last.steps, last.batch_size
    );
    if let (Some(a0), Some(a1)) = (first.test_accuracy, last.test_accuracy) {
        let (b0, b1) = (first.batch_size, last.batch_size);
        out += &if a1 == a0 {
            format!(" Test accuracy was {a0:.4} at both batch {b0} and batch {b1}")
        } else {
            let trend = if a1 < a0 { "fell" } else { "rose" };
            format!(" Test accuracy {trend} from {a0:.4} at batch {b0} to {a1:.4} at batch {b1}")
        };
        if a1 < a0 && scale_lr == "none" {
            out += " (the learning rate was not scaled: try --scale-lr linear or sqrt)";
        }
        out += ".";
    }
    out
}

pub fn sweep(a: &SweepArgs) -> Result<()> {
    if a.batch_sizes.is_empty() || a.batch_sizes.contains(&0) {
        return Err(UserError(
            "--batch-sizes needs positive sizes, e.g. 16,64,256,1024".into(),
        ));
    }
    if a.batch_sizes.len() > MAX_SWEEP_ROWS {
        return Err(UserError(format!(
            "--batch-sizes: {} sizes, at most {MAX_SWEEP_ROWS} per sweep",
            a.batch_sizes.len()
        )));
    }
    if let Some((i, b)) = a
        .batch_sizes
        .iter()
        .enumerate()
        .find(|(i, b)| a.batch_sizes[..*i].contains(b))
    {
        return Err(UserError(format!(
            "--batch-sizes: batch {b} is given twice (at positions {} and {})",
            a.batch_sizes.iter().position(|x| x == b).expect("found") + 1,
            i + 1
        )));
    }
    if !["linear", "sqrt", "none"].contains(&a.scale_lr.as_str()) {
        return Err(UserError(format!(
            "--scale-lr `{}`: expected linear, sqrt or none",
            a.scale_lr
        )));
    }
    if a.samples.is_none() && a.epochs == 0 {
        return Err(UserError("--epochs must be at least 1, got 0".into()));
    }
    at_least_one("--samples", a.samples)?;
    let threads = threads_or_all(a.threads)?;
    a.optim.engine()?;
    if let Some(dir) = &a.plot_dir {
        check_plot_dir(dir)?;
    }
    let ds = Arc::new(a.source.open_for_training()?);
    if let Some(&big) = a.batch_sizes.iter().find(|&&b| b > ds.train.len()) {
        return Err(UserError(format!(
            "--batch-sizes: batch {big} is larger than the {} training images of {}; every \
             batch size must be at most {}",
            ds.train.len(),
            ds.name,
            ds.train.len()
        )));
    }
    let g = model_for(&a.model, &ds)?;
    let (mean, std) = normalization("auto", &ds)?;
    let base = a.batch_sizes[0] as f32;
    let mut plans = Vec::new();
    for &bs in &a.batch_sizes {
        let mut opt = a.optim.engine()?;
        let k = bs as f32 / base;
        let factor = match a.scale_lr.as_str() {
            "linear" => k,
            "sqrt" => k.sqrt(),
            _ => 1.0,
        };
        opt.set_lr(opt.lr() * factor);
        opt.validate()
            .map_err(|m| UserError(format!("--scale-lr {} at batch {bs}: {m}", a.scale_lr)))?;
        let planned = planned_step(
            &g,
            bs,
            a.optim.planner()?,
            threads,
            &format!("training {} at batch {bs}", g.graph.name),
        )?
        .peak_bytes;
        check_last_batch(&g, ds.train.len(), bs, a.optim.planner()?, threads)?;
        plans.push((bs, opt, planned));
    }
    let mut rows = Vec::new();
    for (bs, opt, planned) in plans {
        let lr = opt.lr();
        let mut e = Engine::new(g.clone(), opt, a.seed, threads)?;
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
        // Bounded: the training split is not empty, so every epoch sees at least one
        // sample and `--samples` is reached.
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
                    return Err(UserError(format!(
                        "batch {bs}: the loss became {} at step {steps} (lr {lr:e}); the sweep \
                         stopped",
                        r.loss
                    )));
                }
                if seen >= budget {
                    break 'run;
                }
            }
        }
        let seconds = t0.elapsed().as_secs_f64().max(1e-9);
        if curve.is_empty() {
            return Err(UserError(format!("batch {bs}: no step was trained")));
        }
        let tail = &curve[curve.len() - (curve.len() / 4).max(1)..];
        let m = tail.iter().map(|p| p.1 as f64).sum::<f64>() / tail.len() as f64;
        let noise =
            (tail.iter().map(|p| (p.1 as f64 - m).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        let test_accuracy = if ds.test.as_ref().is_some_and(|t| !t.is_empty()) {
            Some(
                evaluate(&mut e, &ds, "test", &mean, &std, 512)
                    .map_err(|err| {
                        UserError(format!(
                            "batch {bs}: training diverged (lr {lr:e}): {}; the sweep stopped",
                            err.0
                        ))
                    })?
                    .0,
            )
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
        optimizer: a.optim.name().to_string(),
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
    println!("\n{}", sweep_conclusion(&out.rows, &out.scale_lr));
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
        (SWEEP_PLOTS[0], acc),
        (SWEEP_PLOTS[1], speed),
        (SWEEP_PLOTS[2], curves),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model of `channels` 1x1 convolutions over 1xHxW images: its forward pass needs
    /// about `channels * H * W * 4` bytes an image.
    fn wide(channels: usize, side: usize) -> Shaped {
        let text = format!(
            "input = [1, {side}, {side}]\nlayers = [\n  {{ type = \"Conv2d\", in_channels = 1, \
             out_channels = {channels}, kernel_size = 1 }},\n  {{ type = \"AdaptiveAvgPool2d\", \
             output_size = 1 }},\n  {{ type = \"Flatten\" }},\n  {{ type = \"Linear\", \
             in_features = {channels}, out_features = 10 }},\n]\n"
        );
        vramlab_graph::model_file::parse(&text, "wide.toml")
            .unwrap()
            .infer()
            .unwrap()
    }

    #[test]
    fn an_evaluation_batch_is_halved_until_its_forward_pass_fits_in_free_memory() {
        // `eval -b 4096` of a ResNet-18 on 224x224 images allocated 24 GB and was killed.
        let Some(avail) = available_memory() else {
            return;
        };
        let inference_peak = |g: &Shaped, b: usize| {
            let mut pcfg = PlanConfig::new(b as u64);
            pcfg.profile = Profile::Native;
            pcfg.mode = vramlab_memory::Mode::Inference;
            pcfg.threads = 1;
            plan(g, &pcfg).unwrap().peak_bytes
        };
        // 64 MiB an image: a batch of 1 fits, 2^20 of them (64 TiB) do not.
        let g = wide(64, 512);
        let b = inference_batch(&g, 1 << 20, 1).unwrap();
        assert!(b < 1 << 20 && b.is_power_of_two(), "{b}");
        assert!(inference_peak(&g, b) <= avail, "batch {b} does not fit");
        assert!(
            inference_peak(&g, b * 2) > avail || b * 2 > 1 << 20,
            "batch {b} halved too far"
        );
        // A small model keeps the batch asked for.
        assert_eq!(inference_batch(&wide(2, 8), 256, 1).unwrap(), 256);
        // One image that cannot fit (64 GiB x 16) is the planner's refusal, no allocation.
        let e = inference_batch(&wide(65536, 2048), 64, 1).unwrap_err().0;
        assert!(e.starts_with("evaluating wide at batch 1 needs "), "{e}");
    }

    fn row(batch_size: usize, images_per_s: f64, steps: usize, acc: f64) -> SweepRow {
        SweepRow {
            batch_size,
            lr: 1e-3,
            steps,
            samples: 0,
            seconds: 1.0,
            images_per_s,
            final_train_loss: 0.5,
            test_accuracy: Some(acc),
            loss_noise: 0.0,
            measured_peak_bytes: 0,
            planned_peak_bytes: 0,
            loss_curve: Vec::new(),
        }
    }

    /// The conclusion follows the table: batch 1024 slower than 64 is not "larger
    /// batches: more images/s".
    #[test]
    fn sweep_conclusion_reads_the_measured_rows() {
        let rows = [
            row(64, 9000.0, 938, 0.88),
            row(16, 5000.0, 3750, 0.90),
            row(1024, 7000.0, 59, 0.80),
            row(256, 8000.0, 235, 0.85),
        ];
        let c = sweep_conclusion(&rows, "none");
        assert_eq!(
            c,
            "Speed peaked at batch 64 (9,000 images/s); batch 16 ran at 5,000 images/s and \
             batch 1024 at 7,000. Updates: 3750 steps at batch 16, 59 at batch 1024. Test \
             accuracy fell from 0.9000 at batch 16 to 0.8000 at batch 1024 (the learning rate \
             was not scaled: try --scale-lr linear or sqrt)."
        );
        let rising = [row(16, 100.0, 10, 0.5), row(64, 200.0, 3, 0.6)];
        assert!(sweep_conclusion(&rising, "linear")
            .starts_with("Larger batches trained faster here: 100 images/s at batch 16 up to 200"));
        let falling = [row(16, 300.0, 10, 0.5), row(64, 200.0, 3, 0.5)];
        let c = sweep_conclusion(&falling, "none");
        assert!(c.starts_with("Larger batches trained slower here"), "{c}");
        assert!(
            c.ends_with("Test accuracy was 0.5000 at both batch 16 and batch 64."),
            "{c}"
        );
    }
}
