//! `vramlab`: the command-line program. It parses arguments, calls the graph and memory
//! libraries, and prints their results as tables or JSON. Errors print one line and
//! exit with code 2.

mod data_cmd;
mod device_fit_text;
mod fit_cmd;
mod fmt;
mod lang;
mod memory_cmd;
mod models_cmd;
mod plot;
mod report_cmd;
mod tour;
mod train_cmd;

use clap::{Args, Parser, Subcommand};
use vramlab_graph::{parse_shape, ModelOptions, Shaped};
use vramlab_memory::{Mode, OptimizerImpl, PlanConfig, Precision, Profile};

/// A user-facing error: printed as `error: ...`, exit code 2.
#[derive(Debug)]
pub struct UserError(pub String);

impl<E: std::fmt::Display> From<E> for UserError {
    fn from(e: E) -> Self {
        UserError(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, UserError>;

#[derive(Parser)]
#[command(
    name = "vramlab",
    version,
    about = "See how much GPU memory training an image model takes, where it goes, and which batch size fits, before you train.",
    after_help = "Examples:\n  vramlab tour\n  vramlab memory resnet18 --input 3x32x32 --num-classes 10 --batch-size 64 --optimizer adam\n  vramlab summary simple_cnn\n  vramlab models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Language of the output: en or zh (tour, memory, fit and report are translated;
    /// the other commands print English and say so). Default: the VRAMLAB_LANG
    /// variable, or en.
    #[arg(long, value_enum, global = true)]
    lang: Option<lang::Lang>,
}

#[derive(Subcommand)]
enum Command {
    /// The lesson end to end: image formats, SimpleCNN, the four places memory goes.
    #[command(after_help = "Example:\n  vramlab tour")]
    Tour(tour::TourArgs),
    /// List the built-in models.
    #[command(after_help = "Example:\n  vramlab models --json")]
    Models(models_cmd::ModelsArgs),
    /// Per layer: output shape, parameters, MACs and bytes kept for backward.
    #[command(
        after_help = "Examples:\n  vramlab summary simple_cnn\n  vramlab summary resnet50 --batch-size 32\n  vramlab summary models/simple_cnn.toml --json"
    )]
    Summary(models_cmd::SummaryArgs),
    /// Training memory by category, the peak, and where it happens.
    #[command(
        after_help = "Examples:\n  vramlab memory simple_cnn --batch-size 64 --optimizer adam\n  vramlab memory vgg11 --input 3x32x32 --num-classes 10 --batch-size 256 --profile pytorch-cpu\n  vramlab memory resnet50 --batch-size 32 --precision amp-bf16 --json\n  vramlab memory resnet50 --batch-size 128 --gpu t4\n  vramlab memory resnet18 --batch-size 16 --profile pytorch-cpu --precision amp-bf16"
    )]
    Memory(memory_cmd::MemoryArgs),
    /// The largest batch size that fits a GPU, the doubling procedure, and what to change
    /// when nothing fits.
    #[command(
        after_help = "Examples:\n  vramlab fit resnet50 --input 3x224x224 --gpu h100\n  vramlab fit simple_cnn --memory 8GiB --optimizer sgd --momentum 0.9 --target-batch 4096\n  vramlab fit vgg16 --memory 2GiB --json"
    )]
    Fit(fit_cmd::FitArgs),
    /// Train a model on a dataset with vramlab's CPU engine; shows measured vs planned memory.
    #[command(
        after_help = "Examples:\n  vramlab train lenet5 --data fashion-mnist --epochs 2 --batch-size 64 --optimizer adam --lr 1e-3\n  vramlab train simple_cnn --data cifar10 --root ~/data --checkpoint run.safetensors\n  vramlab train simple_cnn --data cifar10 --root ~/data --resume run.safetensors --epochs 4"
    )]
    Train(train_cmd::TrainArgs),
    /// Train once per batch size from the same seed: speed, loss, accuracy, noise, memory.
    #[command(
        after_help = "Examples:\n  vramlab sweep lenet5 --data fashion-mnist --batch-sizes 16,64,256,1024 --epochs 1 --plot-dir sweep/\n  vramlab sweep simple_cnn --data cifar10 --root ~/data --samples 20000 --scale-lr sqrt --json"
    )]
    Sweep(train_cmd::SweepArgs),
    /// Accuracy and loss of a checkpoint on a dataset split.
    #[command(
        after_help = "Example:\n  vramlab eval --checkpoint run.safetensors --data fashion-mnist"
    )]
    Eval(train_cmd::EvalArgs),
    /// Top-5 classes of an image with a checkpoint.
    #[command(after_help = "Example:\n  vramlab predict --checkpoint run.safetensors boot.png")]
    Predict(train_cmd::PredictArgs),
    /// One self-contained HTML report: samples, model, memory, batch-size curve, sweep.
    #[command(
        after_help = "Examples:\n  vramlab report lenet5 --data fashion-mnist --gpu t4 --out report.html\n  vramlab report resnet18 --input 3x32x32 --num-classes 10 --memory 8GiB --sweep sweep.json --lang zh --out report.html"
    )]
    Report(report_cmd::ReportArgs),
    /// Image datasets: info, stats, show, fetch.
    #[command(
        subcommand,
        after_help = "Examples:\n  vramlab data info fashion-mnist\n  vramlab data show fashion-mnist --grid 8 --out grid.png"
    )]
    Data(data_cmd::DataCommand),
    /// Benchmarks: the data loader and the training engine.
    #[command(
        subcommand,
        after_help = "Examples:\n  vramlab bench loader --data fashion-mnist --batch-size 64\n  vramlab bench train simple_cnn --batch-size 64 --json"
    )]
    Bench(BenchCommand),
    /// List the GPU catalog (name and memory).
    #[command(after_help = "Example:\n  vramlab gpus --json")]
    Gpus(fit_cmd::GpusArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// One shuffled epoch of the train split through ToTensor and Normalize.
    #[command(
        after_help = "Example:\n  vramlab bench loader --data fashion-mnist --batch-size 64 --json"
    )]
    Loader(data_cmd::LoaderBenchArgs),
    /// Training images/s of the CPU engine on random data, after warm-up.
    #[command(
        after_help = "Example:\n  vramlab bench train simple_cnn --batch-size 64 --threads 2 --json"
    )]
    Train(train_cmd::BenchTrainArgs),
}

/// The model to use: a zoo name or a model file, with its input shape.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A zoo model (see `vramlab models`), a path to a .toml model file, a .onnx file
    /// exported from PyTorch, or a .pt2 archive written by torch.export.save.
    pub model: String,
    /// Input shape per image, CxHxW (default: the model's own, e.g. 3x224x224).
    #[arg(long, value_name = "CxHxW")]
    pub input: Option<String>,
    /// Number of classes of the classifier head (zoo models).
    #[arg(long, value_name = "N")]
    pub num_classes: Option<usize>,
    /// ONNX models: which ops ran in place, which ONNX cannot say: torchvision
    /// (ReLU(inplace=True), `out += identity` before a ReLU) or none (F.relu, `x + y`).
    #[arg(long, value_name = "STYLE", default_value = "torchvision")]
    pub onnx_inplace: String,
    /// ONNX models: a BatchNorm the exporter folded into a convolution is planned as
    /// Conv2d(bias=False) + BatchNorm2d (restore) or as the file has it (folded).
    #[arg(long, value_name = "HOW", default_value = "restore")]
    pub onnx_bn: String,
    /// GoogLeNet and Inception v3: without their auxiliary classifiers (torchvision's
    /// aux_logits=False); by default they train with them, 0.3 x their loss.
    #[arg(long)]
    pub no_aux: bool,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Shaped> {
        let file = vramlab_graph::names_a_file(&self.model)
            || self.model.ends_with(".onnx")
            || self.model.ends_with(".pt2");
        // A file has its own head: the option would be ignored.
        if let (true, Some(n)) = (file, self.num_classes) {
            return Err(UserError(format!(
                "--num-classes {n} sets a zoo model's classifier; {} has its own (change it \
                 in the model)",
                self.model
            )));
        }
        let input_shape = self.input.as_deref().map(parse_shape).transpose()?;
        let opts = ModelOptions {
            num_classes: self.num_classes,
            input_shape,
        };
        let onnx = onnx_options(&self.onnx_inplace, &self.onnx_bn)?;
        let mut graph = load_graph(&self.model, &opts, &onnx)?;
        if self.no_aux {
            if graph.aux.is_empty() {
                return Err(UserError(format!(
                    "--no-aux: {} has no auxiliary classifiers (googlenet and inception_v3 do)",
                    self.model
                )));
            }
            graph = graph.without_aux();
        }
        // A shape error in a file the user wrote names that file; one that --input
        // caused says so.
        graph.infer().map_err(|e| {
            let e = match &self.input {
                Some(i) => format!("{e} (with --input {i})"),
                None => e.to_string(),
            };
            if file {
                UserError(format!("{}: {e}", self.model))
            } else {
                UserError(e)
            }
        })
    }
}

/// The ONNX reading options from their command-line words.
pub fn onnx_options(inplace: &str, bn: &str) -> Result<vramlab_onnx::Options> {
    let restore_bn = match bn {
        "restore" => true,
        "folded" => false,
        b => {
            return Err(UserError(format!(
                "unknown --onnx-bn `{b}`: expected restore or folded"
            )))
        }
    };
    Ok(vramlab_onnx::Options {
        inplace: vramlab_onnx::Inplace::parse(inplace)?,
        restore_bn,
    })
}

/// A zoo name, a .toml model file, a .onnx file or a .pt2 archive. What such a file could
/// not say and vramlab assumed is printed to stderr, one `note:` line each.
pub fn load_graph(
    name: &str,
    opts: &ModelOptions,
    onnx: &vramlab_onnx::Options,
) -> Result<vramlab_graph::Graph> {
    let lower = name.to_ascii_lowercase();
    let (mut g, notes) = if lower.ends_with(".pt2") {
        let l = vramlab_pt2::load(std::path::Path::new(name))?;
        (l.graph, l.notes)
    } else if lower.ends_with(".onnx") {
        let l = vramlab_onnx::load(std::path::Path::new(name), onnx)?;
        (l.graph, l.notes)
    } else {
        let mut g = vramlab_graph::load(name, opts)?;
        // A model file (not a zoo name) is named in the errors about its layers.
        if std::path::Path::new(name).is_file() {
            g.source = Some(name.to_string());
        }
        return Ok(g);
    };
    g.source = Some(name.to_string());
    for n in &notes {
        note(n);
    }
    if let Some(s) = &opts.input_shape {
        g.input_shape = s.clone();
    }
    Ok(g)
}

/// The most ranks `--gpus` x `--nodes` may make.
pub const MAX_WORLD_SIZE: u64 = 1 << 20;

/// Training settings shared by `memory` and `fit`.
#[derive(Args, Clone)]
pub struct PlanArgs {
    /// sgd, adam, adamw, rmsprop or adagrad, with PyTorch's defaults (default: adam;
    /// training only).
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Momentum (SGD, RMSprop).
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    /// AMSGrad (Adam, AdamW): a third state tensor.
    #[arg(long)]
    pub amsgrad: bool,
    /// Centered RMSprop: one more state tensor.
    #[arg(long)]
    pub centered: bool,
    /// Weight decay (default: PyTorch's, 0 or 0.01 for AdamW).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// for-loop, foreach or fused (default: what PyTorch picks for the profile's device).
    #[arg(long, value_name = "IMPL")]
    pub optimizer_impl: Option<String>,
    /// pytorch-cuda, pytorch-cpu or native.
    #[arg(long, default_value = "pytorch-cuda")]
    pub profile: String,
    /// fp32, amp-fp16, amp-bf16 or bf16.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Activation checkpointing in N segments (torch.utils.checkpoint.checkpoint_sequential).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub checkpoint_segments: u32,
    /// Gradient accumulation: N micro-batches of batch-size/N per optimizer step.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub accumulation_steps: u32,
    /// train, or inference (model.eval() under torch.no_grad()).
    #[arg(long, default_value = "train")]
    pub mode: String,
    /// Memory the CUDA context takes outside PyTorch's counters (default: the card's
    /// generation from docs/ARCHITECTURE.md's table, 760MiB on Hopper and newer, measured;
    /// 666MiB before it or for no card, an estimate).
    #[arg(long, value_name = "SIZE")]
    pub cuda_context: Option<String>,
    /// The CUDA version PyTorch was built with (torch.version.cuda), for the context:
    /// before 11.7 CUDA loads every kernel when a library loads, about 362MiB more
    /// (as CUDA_MODULE_LOADING=EAGER does) [default: 12.8]
    #[arg(long, value_name = "MAJOR.MINOR")]
    pub cuda_version: Option<String>,
    /// The native profile: threads of vramlab's engine (its scratch buffers scale with them).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// PYTORCH_CUDA_ALLOC_CONF for the simulated caching allocator, e.g.
    /// expandable_segments:True or max_split_size_mb:128 (pytorch-cuda).
    #[arg(long, value_name = "CONF")]
    pub alloc_conf: Option<String>,
    /// Cap on each cuDNN convolution workspace, as cuDNN's CUDNN_CONV_WSCAP_DBG caps it
    /// (default: none; each is estimated per convolution; 0: no workspaces).
    #[arg(long, value_name = "SIZE")]
    pub cudnn_workspace: Option<String>,
    /// cuBLAS workspace the first matmul takes from the caching allocator (default
    /// 8.125MiB; 32MiB on Hopper and newer, which `fit --gpu` picks by itself).
    #[arg(long, value_name = "SIZE")]
    pub cublas_workspace: Option<String>,
    /// Many GPUs: GPUs per node (the plan is one rank's; the batch size is per rank).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub gpus: u32,
    /// Many GPUs: nodes.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub nodes: u32,
    /// Many GPUs: ddp, zero1, zero2, zero3, fsdp (FSDP2 fully_shard), fsdp1 (FSDP1
    /// FULL_SHARD, flat parameters), fsdp-grad-op (SHARD_GRAD_OP) or hybrid (HYBRID_SHARD).
    #[arg(long, value_name = "S")]
    pub strategy: Option<String>,
    /// DDP's bucket_cap_mb.
    #[arg(long, default_value_t = vramlab_memory::dist::DEFAULT_BUCKET_CAP_MB as f64, value_name = "MB")]
    pub bucket_cap_mb: f64,
    /// DDP's gradient_as_bucket_view: .grad tensors are views into the buckets.
    #[arg(long)]
    pub gradient_as_bucket_view: bool,
    /// DDP's find_unused_parameters: a used-parameter map (an int32 per parameter, and its
    /// copy), buckets built once at construction.
    #[arg(long)]
    pub find_unused_parameters: bool,
    /// DDP's static_graph: the same map; the buckets are rebuilt after the second step.
    #[arg(long)]
    pub static_graph: bool,
    /// FSDP2's reshard_after_forward (true or false; default true, false for
    /// fsdp-grad-op): false keeps each unit's gathered parameters from its forward to its
    /// backward. With fsdp1, false is FSDP1's SHARD_GRAD_OP.
    #[arg(long, value_name = "BOOL")]
    pub reshard_after_forward: Option<String>,
    /// FSDP2's MixedPrecisionPolicy param_dtype (bf16, fp16 or fp32): the dtype the
    /// parameters are gathered in and the model computes in; shards, gradients and
    /// optimizer state stay fp32.
    #[arg(long, value_name = "DTYPE")]
    pub param_dtype: Option<String>,
    /// FSDP2's MixedPrecisionPolicy reduce_dtype (default: the param_dtype): the dtype
    /// gradients are reduce-scattered in.
    #[arg(long, value_name = "DTYPE")]
    pub reduce_dtype: Option<String>,
    /// FSDP2's CPUOffloadPolicy (sharded parameters, gradients and optimizer state in host
    /// memory) or, for zero1-3, DeepSpeed's offload_optimizer (gradient partitions and
    /// optimizer state in host memory); the optimizer steps on the CPU. Modelled from the
    /// sources.
    #[arg(long)]
    pub cpu_offload: bool,
    /// DeepSpeed ZeRO's reduce_bucket_size, in elements (default 500000000): the IPG
    /// buffer gradients are copied into (modelled from DeepSpeed's source).
    #[arg(long, value_name = "ELEMENTS")]
    pub reduce_bucket_size: Option<f64>,
    /// DeepSpeed ZeRO's overlap_comm (true or false; default false for zero1 and zero2,
    /// true for zero3): two IPG buffers instead of one in stages 1 and 2.
    #[arg(long, value_name = "BOOL")]
    pub overlap_comm: Option<String>,
    /// NCCL's buffers outside PyTorch's allocator (default 256MiB, an estimate).
    #[arg(long, value_name = "SIZE")]
    pub nccl_buffer: Option<String>,
    /// Sharding units: comma-separated module names (default: one per torchvision block).
    #[arg(long, value_name = "NAMES")]
    pub wrap: Option<String>,
}

impl PlanArgs {
    pub fn config(&self, batch_size: u64) -> Result<PlanConfig> {
        let mut cfg = PlanConfig::new(batch_size);
        // Inference runs no optimizer: its options are refused, not ignored.
        if self.mode == "inference" {
            for (given, flag) in [
                (self.optimizer.is_some(), "--optimizer"),
                (self.momentum != 0.0, "--momentum"),
                (self.nesterov, "--nesterov"),
                (self.amsgrad, "--amsgrad"),
                (self.centered, "--centered"),
                (self.weight_decay.is_some(), "--weight-decay"),
                (self.optimizer_impl.is_some(), "--optimizer-impl"),
            ] {
                if given {
                    return Err(UserError(format!(
                        "{flag} is for training (--mode train): inference runs no optimizer"
                    )));
                }
            }
        }
        cfg.profile = Profile::parse(&self.profile)?;
        // One validation for every command that takes optimizer options.
        cfg.optimizer = train_cmd::planner_optimizer(
            self.optimizer.as_deref().unwrap_or("adam"),
            self.momentum,
            self.nesterov,
            self.amsgrad,
            self.centered,
            self.weight_decay,
        )?;
        cfg.optimizer.implementation = self
            .optimizer_impl
            .as_deref()
            .map(OptimizerImpl::parse)
            .transpose()?;
        cfg.precision = Precision::parse(&self.precision)?;
        cfg.mode = match self.mode.as_str() {
            "train" => Mode::Train,
            "inference" => Mode::Inference,
            m => {
                return Err(UserError(format!(
                    "unknown mode `{m}`: expected train or inference"
                )))
            }
        };
        cfg.checkpoint_segments = self.checkpoint_segments;
        if self.accumulation_steps == 0 {
            return Err(UserError("--accumulation-steps must be at least 1".into()));
        }
        cfg.accumulation_steps = self.accumulation_steps;
        if let Some(t) = self.threads {
            if t == 0 {
                return Err(UserError("--threads must be at least 1".into()));
            }
            cfg.threads = t;
        }
        cfg.cuda_context_bytes = self
            .cuda_context
            .as_deref()
            .map(|c| fmt::parse_size(c).map_err(|e| UserError(format!("--cuda-context: {e}"))))
            .transpose()?;
        if let Some(v) = &self.cuda_version {
            cfg.module_loading =
                vramlab_memory::ModuleLoading::from_cuda_version(v).map_err(UserError)?;
        }
        if let Some(c) = &self.alloc_conf {
            cfg.alloc_conf = vramlab_memory::cuda_alloc::AllocConf::parse(c).map_err(UserError)?;
        }
        // `0` (no workspaces) needs no unit.
        let workspace = |w: &str| match w.trim() {
            "0" => Ok(0),
            w => fmt::parse_size(w).map_err(|e| UserError(format!("--cudnn-workspace: {e}"))),
        };
        cfg.cudnn_workspace_bytes = self.cudnn_workspace.as_deref().map(workspace).transpose()?;
        if let Some(w) = &self.cublas_workspace {
            cfg.cublas_workspace_bytes =
                fmt::parse_size(w).map_err(|e| UserError(format!("--cublas-workspace: {e}")))?;
        }
        cfg.distributed = self.distributed()?;
        if self.cpu_offload && !cfg.profile.is_cuda() {
            note(
                "--cpu-offload: on the CPU the shards are in host memory already, so nothing \
                 moves (measured: CPUOffloadPolicy(pin_memory=False) on a CPU mesh is byte for \
                 byte the plan without it)",
            );
        }
        // What only a GPU has: refused on the CPU profiles rather than ignored.
        if !cfg.profile.is_cuda() {
            for (given, flag) in [
                (self.cuda_context.is_some(), "--cuda-context"),
                (self.cuda_version.is_some(), "--cuda-version"),
                (self.cublas_workspace.is_some(), "--cublas-workspace"),
                (self.cudnn_workspace.is_some(), "--cudnn-workspace"),
                (self.alloc_conf.is_some(), "--alloc-conf"),
            ] {
                if given {
                    return Err(UserError(format!(
                        "{flag} is for the pytorch-cuda profile (got --profile {})",
                        cfg.profile.name()
                    )));
                }
            }
        }
        if self.threads.is_some() && cfg.profile != vramlab_memory::Profile::Native {
            return Err(UserError(format!(
                "--threads is for the native profile, whose engine's scratch scales with them \
                 (got --profile {})",
                cfg.profile.name()
            )));
        }
        Ok(cfg)
    }

    /// `--gpu` names a CUDA card: refused with a CPU profile rather than planned as
    /// if the CPU's memory were the card's; `otherwise` says what the command takes
    /// instead (fit's and report's --memory; nothing for memory).
    pub fn gpu_needs_cuda(
        &self,
        gpu: Option<&str>,
        profile: vramlab_memory::Profile,
        otherwise: &str,
    ) -> Result<()> {
        if gpu.is_some() && !profile.is_cuda() {
            return Err(UserError(format!(
                "--gpu is for the pytorch-cuda profile (got --profile {}){otherwise}",
                profile.name()
            )));
        }
        Ok(())
    }

    /// `--gpus`, `--nodes`, `--strategy` and their options; `None` for one device.
    pub fn distributed(&self) -> Result<Option<vramlab_memory::dist::Distributed>> {
        use vramlab_memory::dist::{Distributed, Strategy};
        if self.gpus == 0 || self.nodes == 0 {
            return Err(UserError("--gpus and --nodes must be at least 1".into()));
        }
        let strategy = self
            .strategy
            .as_deref()
            .map(Strategy::parse)
            .transpose()
            .map_err(UserError)?;
        let world = self.gpus as u64 * self.nodes as u64;
        // The largest clusters have about 10^5 GPUs.
        if world > MAX_WORLD_SIZE {
            return Err(UserError(format!(
                "--gpus {} x --nodes {} is {world} ranks, more than the {MAX_WORLD_SIZE} planned",
                self.gpus, self.nodes
            )));
        }
        // Options of many GPUs are refused on one, not ignored.
        let many_gpu_options = [
            (
                self.bucket_cap_mb != vramlab_memory::dist::DEFAULT_BUCKET_CAP_MB as f64,
                "--bucket-cap-mb",
            ),
            (self.gradient_as_bucket_view, "--gradient-as-bucket-view"),
            (self.find_unused_parameters, "--find-unused-parameters"),
            (self.static_graph, "--static-graph"),
            (
                self.reshard_after_forward.is_some(),
                "--reshard-after-forward",
            ),
            (self.param_dtype.is_some(), "--param-dtype"),
            (self.reduce_dtype.is_some(), "--reduce-dtype"),
            (self.cpu_offload, "--cpu-offload"),
            (self.reduce_bucket_size.is_some(), "--reduce-bucket-size"),
            (self.overlap_comm.is_some(), "--overlap-comm"),
            (self.nccl_buffer.is_some(), "--nccl-buffer"),
            (self.wrap.is_some(), "--wrap"),
        ];
        if world == 1 {
            if let Some(s) = strategy {
                return Err(UserError(format!(
                    "--strategy {} with one rank: nothing is sharded or reduced; give --gpus \
                     2 or more (and --nodes), or leave --strategy out for one GPU",
                    s.name()
                )));
            }
            if let Some((_, flag)) = many_gpu_options.iter().find(|(given, _)| *given) {
                return Err(UserError(format!(
                    "{flag} is an option of many GPUs: give --gpus 2 or more (and --strategy)"
                )));
            }
        }
        let Some(strategy) = strategy.or((world > 1).then_some(Strategy::Ddp)) else {
            return Ok(None);
        };
        if !(self.bucket_cap_mb.is_finite()
            && self.bucket_cap_mb > 0.0
            && self.bucket_cap_mb <= 1e6)
        {
            return Err(UserError(format!(
                "--bucket-cap-mb must be a positive number of MiB up to 1000000, got {}",
                self.bucket_cap_mb
            )));
        }
        let mut d = Distributed::new(self.gpus, self.nodes, strategy);
        d.bucket_cap_bytes = (self.bucket_cap_mb * 1024.0 * 1024.0) as u128;
        d.gradient_as_bucket_view = self.gradient_as_bucket_view;
        if (self.find_unused_parameters || self.static_graph || self.gradient_as_bucket_view)
            && strategy != Strategy::Ddp
        {
            let flag = if self.find_unused_parameters {
                "--find-unused-parameters"
            } else if self.static_graph {
                "--static-graph"
            } else {
                "--gradient-as-bucket-view"
            };
            return Err(UserError(format!(
                "{flag} is DDP's (got --strategy {})",
                strategy.name()
            )));
        }
        d.find_unused_parameters = self.find_unused_parameters;
        d.static_graph = self.static_graph;
        if let Some(v) = &self.reshard_after_forward {
            let on = match v.as_str() {
                "true" | "True" => true,
                "false" | "False" => false,
                _ => {
                    return Err(UserError(format!(
                        "--reshard-after-forward: expected true or false, got `{v}`"
                    )))
                }
            };
            if !matches!(
                strategy,
                Strategy::Fsdp | Strategy::Hybrid | Strategy::FsdpGradOp | Strategy::Fsdp1
            ) {
                return Err(UserError(format!(
                    "--reshard-after-forward is FSDP's (fsdp, fsdp-grad-op, hybrid; fsdp1 with \
                     false is FSDP1's SHARD_GRAD_OP; got --strategy {})",
                    strategy.name()
                )));
            }
            d.reshard_after_forward = Some(on);
        }
        if self.cpu_offload {
            if matches!(strategy, Strategy::Ddp | Strategy::Fsdp1) {
                return Err(UserError(format!(
                    "--cpu-offload is FSDP2's CPUOffloadPolicy or DeepSpeed's offload_optimizer \
                     (fsdp, fsdp-grad-op, hybrid, zero1, zero2, zero3; got --strategy {})",
                    strategy.name()
                )));
            }
            d.cpu_offload = true;
        }
        let zero = matches!(
            strategy,
            Strategy::Zero1 | Strategy::Zero2 | Strategy::Zero3
        );
        if let Some(r) = self.reduce_bucket_size {
            if !zero {
                return Err(UserError(format!(
                    "--reduce-bucket-size is DeepSpeed ZeRO's (zero1, zero2, zero3; got --strategy {})",
                    strategy.name()
                )));
            }
            if !(r.is_finite() && (1.0..=1e12).contains(&r) && r.fract() == 0.0) {
                return Err(UserError(format!(
                    "--reduce-bucket-size must be a whole number of elements from 1 to 1e12, got {r}"
                )));
            }
            d.reduce_bucket_elems = r as u128;
        }
        if let Some(v) = &self.overlap_comm {
            if !zero {
                return Err(UserError(format!(
                    "--overlap-comm is DeepSpeed ZeRO's (zero1, zero2, zero3; got --strategy {})",
                    strategy.name()
                )));
            }
            d.overlap_comm = Some(match v.as_str() {
                "true" | "True" => true,
                "false" | "False" => false,
                _ => {
                    return Err(UserError(format!(
                        "--overlap-comm: expected true or false, got `{v}`"
                    )))
                }
            });
        }
        let dtype = |flag: &str, v: &str| -> Result<u128> {
            match v {
                "bf16" | "bfloat16" | "fp16" | "float16" => Ok(2),
                "fp32" | "float32" => Ok(4),
                _ => Err(UserError(format!(
                    "{flag}: expected bf16, fp16 or fp32, got `{v}`"
                ))),
            }
        };
        for (flag, v) in [
            ("--param-dtype", &self.param_dtype),
            ("--reduce-dtype", &self.reduce_dtype),
        ] {
            let Some(v) = v else { continue };
            if !matches!(
                strategy,
                Strategy::Fsdp | Strategy::Hybrid | Strategy::FsdpGradOp
            ) {
                return Err(UserError(format!(
                    "{flag} is FSDP2's MixedPrecisionPolicy (fsdp, fsdp-grad-op, hybrid; got \
                     --strategy {})",
                    strategy.name()
                )));
            }
            if self.precision != "fp32" {
                return Err(UserError(format!(
                    "{flag} sets the precision FSDP2 computes in: use it with --precision fp32 \
                     (got --precision {})",
                    self.precision
                )));
            }
            let b = dtype(flag, v)?;
            if flag == "--param-dtype" {
                d.param_dtype_bytes = Some(b);
            } else {
                d.reduce_dtype_bytes = Some(b);
            }
        }
        d.nccl_bytes = self
            .nccl_buffer
            .as_deref()
            .map(|v| fmt::parse_size(v).map_err(|e| UserError(format!("--nccl-buffer: {e}"))))
            .transpose()?;
        if let Some(w) = &self.wrap {
            if strategy == Strategy::Ddp {
                return Err(UserError(
                    "--wrap names sharding units: it is for the sharding strategies (zero3, \
                     fsdp, fsdp1, fsdp-grad-op, hybrid), not ddp"
                        .into(),
                ));
            }
            d.wrap = w
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            if d.wrap.is_empty() {
                return Err(UserError(
                    "--wrap: expected comma-separated module names".into(),
                ));
            }
        }
        Ok(Some(d))
    }
}

/// A closed stdout (`vramlab models --json | head -c 600`) ends the program quietly, as
/// in other Unix tools: Rust ignores SIGPIPE, so every print would otherwise fail with
/// "Broken pipe" and panic.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A print to stdout that fails for another reason than a closed pipe (`> /dev/full`,
/// a disk that filled up) is one error line with exit code 2, not a panic.
fn report_failed_output_as_an_error() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if let Some(why) = msg.strip_prefix("failed printing to stdout: ") {
            eprintln!("error: cannot write the output: {why}");
            std::process::exit(2);
        }
        default_hook(info);
    }));
}

/// The program: `vramlab ARGS`, printing to stdout and stderr, exit code 2 on a user error.
pub fn main() {
    restore_default_sigpipe();
    report_failed_output_as_an_error();
    let mut cli = Cli::parse();
    // VRAMLAB_LANG where --lang is not given: a bad value is named as the variable, and
    // read only then (--help and an explicit --lang do not depend on it).
    if cli.lang.is_none() {
        cli.lang = Some(match std::env::var("VRAMLAB_LANG").as_deref() {
            Ok("zh") => lang::Lang::Zh,
            // Set but empty reads as unset, as shells' `VAR= cmd` means.
            Ok("en") | Ok("") | Err(_) => lang::Lang::En,
            Ok(v) => {
                eprintln!("error: VRAMLAB_LANG `{v}`: expected en or zh (or unset it)");
                std::process::exit(2);
            }
        });
    }
    if let Err(UserError(msg)) = dispatch(cli) {
        eprintln!("error: {msg}");
        std::process::exit(2);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let lang = cli.lang.unwrap_or(lang::Lang::En);
    let translated = matches!(
        cli.command,
        Command::Tour(_) | Command::Memory(_) | Command::Fit(_) | Command::Report(_)
    );
    if lang == lang::Lang::Zh && !translated {
        note("this command prints English only; --lang zh translates tour, memory, fit and report (此命令仅输出英文)");
    }
    match cli.command {
        Command::Tour(mut a) => {
            a.lang = lang;
            tour::run(&a)
        }
        Command::Models(a) => models_cmd::models(&a),
        Command::Summary(a) => models_cmd::summary(&a),
        Command::Memory(mut a) => {
            a.lang = lang;
            memory_cmd::run(&a)
        }
        Command::Fit(mut a) => {
            a.lang = lang;
            fit_cmd::fit(&a)
        }
        Command::Gpus(a) => fit_cmd::gpus(&a),
        Command::Data(data_cmd::DataCommand::Info(a)) => data_cmd::info(&a),
        Command::Data(data_cmd::DataCommand::Stats(a)) => data_cmd::stats(&a),
        Command::Data(data_cmd::DataCommand::Show(a)) => data_cmd::show_cmd(&a),
        Command::Data(data_cmd::DataCommand::Fetch(a)) => data_cmd::fetch_cmd(&a),
        Command::Bench(BenchCommand::Loader(a)) => data_cmd::bench_loader(&a),
        Command::Bench(BenchCommand::Train(a)) => train_cmd::bench_train(&a),
        Command::Train(a) => train_cmd::train(&a),
        Command::Sweep(a) => train_cmd::sweep(&a),
        Command::Report(mut a) => {
            a.lang = lang;
            report_cmd::report(&a)
        }
        Command::Eval(a) => train_cmd::eval(&a),
        Command::Predict(a) => train_cmd::predict(&a),
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    write_out(format_args!("{}\n", serde_json::to_string_pretty(v)?));
    Ok(())
}

/// What one in-process run of a command printed (`run_captured`).
#[derive(Debug, Default)]
pub struct Captured {
    /// 0, or 2 for a user error (as the program's exit code).
    pub code: i32,
    /// What the command printed to stdout: its table or its JSON.
    pub stdout: String,
    /// Its `note:` lines (what a model file could not say and vramlab assumed), without the prefix.
    pub notes: Vec<String>,
    /// The error line, without `error: `, when `code` is 2.
    pub error: Option<String>,
}

thread_local! {
    /// Set while `run_captured` runs a command on this thread: prints land here.
    static CAPTURE: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// The commands a library caller (the Python package) may run in-process: they plan and
/// print, and neither train, write files nor wait on a terminal.
const LIBRARY_COMMANDS: [&str; 5] = ["memory", "fit", "summary", "models", "gpus"];

/// Runs `vramlab ARGS` (ARGS without the program name) in this process and returns what it
/// printed, as the program would have printed it: the same parser, checks and planner.
/// Only the planning commands (`memory`, `fit`, `summary`, `models`, `gpus`) may run.
pub fn run_captured<S: AsRef<str>>(args: &[S]) -> Captured {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let Some(first) = args.first() else {
        return refused("no command: expected one of memory, fit, summary, models, gpus".into());
    };
    if !LIBRARY_COMMANDS.contains(first) {
        return refused(format!(
            "`{first}` does not run in-process: expected one of {}",
            LIBRARY_COMMANDS.join(", ")
        ));
    }
    let cli = match Cli::try_parse_from(std::iter::once("vramlab").chain(args.iter().copied())) {
        Ok(c) => c,
        Err(e) => {
            let text = e.to_string();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Captured {
                        stdout: text,
                        ..Captured::default()
                    }
                }
                _ => refused(first_error_line(&text)),
            };
        }
    };
    CAPTURE.with(|c| *c.borrow_mut() = Some(Captured::default()));
    let result = dispatch(cli);
    let mut out = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    if let Err(UserError(msg)) = result {
        out.code = 2;
        out.error = Some(msg);
    }
    out
}

fn refused(msg: String) -> Captured {
    Captured {
        code: 2,
        error: Some(msg),
        ..Captured::default()
    }
}

/// clap's error text without its `error: ` prefix and usage lines: the one line that says
/// what was wrong.
fn first_error_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "the following required arguments were not provided:" names them on the next line.
    match (first.ends_with(':'), lines.next()) {
        (true, Some(next)) => format!("{first} {next}"),
        _ => first.to_string(),
    }
}

/// Writes to stdout, or to the capture of `run_captured`.
pub fn write_out(args: std::fmt::Arguments) {
    let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(cap) => {
            use std::fmt::Write;
            let _ = cap.stdout.write_fmt(args);
            true
        }
        None => false,
    });
    if !captured {
        print!("{args}");
    }
}

/// One `note:` line on stderr (or in the capture of `run_captured`).
pub fn note(n: &str) {
    let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(cap) => {
            cap.notes.push(n.to_string());
            true
        }
        None => false,
    });
    if !captured {
        eprintln!("note: {n}");
    }
}

/// `print!` through `write_out`.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::write_out(format_args!($($t)*)) };
}

/// `println!` through `write_out`.
#[macro_export]
macro_rules! outln {
    () => { $crate::write_out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::write_out(format_args!("{}\n", format_args!($($t)*))) };
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every leaf command, with its path (`bench train`).
    fn leaves(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        let subs: Vec<_> = cmd.get_subcommands().collect();
        if subs.is_empty() {
            out.push((path.clone(), cmd.clone()));
        }
        for s in subs {
            let p = format!("{path} {}", s.get_name()).trim().to_string();
            leaves(s, p, out);
        }
    }

    #[test]
    fn every_option_of_every_command_has_a_description() {
        let mut all = Vec::new();
        leaves(&Cli::command(), String::new(), &mut all);
        let mut missing = Vec::new();
        for (path, cmd) in &all {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
        }
        assert!(missing.is_empty(), "options without help: {missing:?}");
        assert!(all.len() >= 17, "{}", all.len());
    }

    #[test]
    fn every_command_has_an_example_in_its_help() {
        let mut all = Vec::new();
        leaves(&Cli::command(), String::new(), &mut all);
        for (path, cmd) in &all {
            let after = cmd
                .get_after_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            assert!(
                after.contains(&format!("vramlab {path}")),
                "`vramlab {path} --help` shows no example: {after:?}"
            );
        }
    }

    #[test]
    fn every_command_that_prints_results_takes_json() {
        let mut all = Vec::new();
        leaves(&Cli::command(), String::new(), &mut all);
        for (path, cmd) in &all {
            // show writes images, tour is the lesson as prose, report writes HTML.
            if ["tour", "data show", "report"].contains(&path.as_str()) {
                continue;
            }
            assert!(
                cmd.get_arguments().any(|a| a.get_id() == "json"),
                "`vramlab {path}` has no --json"
            );
        }
    }
}
