//! The training-memory planner of vramlab.
//!
//! It reads a shaped model graph and simulates one training step the way a framework
//! runs it: `zero_grad(set_to_none=True)`, forward, cross-entropy, backward through an
//! autograd engine (same execution order, same saved tensors, same gradient buffers),
//! then the optimizer step with its lazily created state and its temporaries. Every
//! allocation and free is tagged with a [`Category`]; the highest point is the peak.
//! Step 1 and step 2 differ (optimizer state appears during step 1; step 1's gradients
//! live until step 2's `zero_grad`), so both are reported.
//!
//! ```
//! use vramlab_memory::{plan, PlanConfig, Profile, OptimizerKind};
//! let g = vramlab_graph::zoo::build("simple_cnn", &Default::default()).unwrap().infer().unwrap();
//! let mut cfg = PlanConfig::new(64);
//! cfg.profile = Profile::PytorchCpu;
//! cfg.optimizer.kind = OptimizerKind::Adam;
//! let report = plan(&g, &cfg).unwrap();
//! // Real PyTorch 2.15 on the CPU measured 4,896,408 B at step 1 (shared/reference).
//! assert_eq!(report.steps[0].peak_bytes, 4_896_408);
//! ```
//!
//! Main types: [`PlanConfig`] in, [`MemoryReport`] out, through [`plan`].

pub mod cards;
pub mod cuda_alloc;
pub mod cudnn;
pub mod device_fit;
pub mod dist;
pub mod fit;
mod native;
mod optim;
pub mod sim;
mod train;

use serde::Serialize;
use std::fmt;
use vramlab_graph::{Op, Shaped};

pub use vramlab_graph::categories::{Category, CategoryBytes, Phase};

/// Which framework behaviour to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// PyTorch on an NVIDIA GPU: foreach optimizers, bool dropout masks, blocks rounded
    /// up to 512 B by the caching allocator, and the CUDA context as overhead.
    PytorchCuda,
    /// PyTorch on the CPU: for-loop optimizers, float32 dropout masks, exact bytes.
    PytorchCpu,
    /// vramlab's own CPU engine.
    Native,
}

impl Profile {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "pytorch-cuda" => Ok(Profile::PytorchCuda),
            "pytorch-cpu" => Ok(Profile::PytorchCpu),
            "native" => Ok(Profile::Native),
            _ => Err(format!(
                "unknown profile `{s}`: expected pytorch-cuda, pytorch-cpu or native"
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Profile::PytorchCuda => "pytorch-cuda",
            Profile::PytorchCpu => "pytorch-cpu",
            Profile::Native => "native",
        }
    }
    pub fn is_cuda(self) -> bool {
        self == Profile::PytorchCuda
    }
}

/// `torch.optim` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
    RmsProp,
    Adagrad,
}

impl OptimizerKind {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            "rmsprop" => Ok(OptimizerKind::RmsProp),
            "adagrad" => Ok(OptimizerKind::Adagrad),
            _ => Err(format!(
                "unknown optimizer `{s}`: expected sgd, adam, adamw, rmsprop or adagrad"
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "SGD",
            OptimizerKind::Adam => "Adam",
            OptimizerKind::AdamW => "AdamW",
            OptimizerKind::RmsProp => "RMSprop",
            OptimizerKind::Adagrad => "Adagrad",
        }
    }
}

/// How the optimizer loops over parameters (`foreach=`, `fused=` in PyTorch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerImpl {
    ForLoop,
    Foreach,
    Fused,
}

impl OptimizerImpl {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "for-loop" => Ok(OptimizerImpl::ForLoop),
            "foreach" => Ok(OptimizerImpl::Foreach),
            "fused" => Ok(OptimizerImpl::Fused),
            _ => Err(format!(
                "unknown optimizer implementation `{s}`: expected for-loop, foreach or fused"
            )),
        }
    }
}

/// An optimizer with PyTorch's arguments. `weight_decay: None` is PyTorch's default
/// (0, or 0.01 for AdamW).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub nesterov: bool,
    pub amsgrad: bool,
    pub centered: bool,
    pub weight_decay: Option<f64>,
    /// `None`: what PyTorch picks for the device (foreach on CUDA, for-loop on CPU).
    pub implementation: Option<OptimizerImpl>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind) -> Self {
        Optimizer {
            kind,
            momentum: 0.0,
            nesterov: false,
            amsgrad: false,
            centered: false,
            weight_decay: None,
            implementation: None,
        }
    }

    pub fn effective_weight_decay(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.kind {
            OptimizerKind::AdamW => 1e-2,
            _ => 0.0,
        })
    }

    /// `SGD(momentum=0.9)`-style description.
    pub fn describe(&self) -> String {
        let mut args = Vec::new();
        if self.momentum != 0.0 {
            args.push(format!("momentum={}", self.momentum));
        }
        if self.nesterov {
            args.push("nesterov=True".into());
        }
        if self.amsgrad {
            args.push("amsgrad=True".into());
        }
        if self.centered {
            args.push("centered=True".into());
        }
        if let Some(wd) = self.weight_decay {
            args.push(format!("weight_decay={wd}"));
        }
        format!("{}({})", self.kind.name(), args.join(", "))
    }
}

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    Fp32,
    AmpFp16,
    AmpBf16,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "amp-fp16" => Ok(Precision::AmpFp16),
            "amp-bf16" => Ok(Precision::AmpBf16),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!(
                "unknown precision `{s}`: expected fp32, amp-fp16, amp-bf16 or bf16"
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::AmpFp16 => "amp-fp16",
            Precision::AmpBf16 => "amp-bf16",
            Precision::Bf16 => "bf16",
        }
    }
    fn is_amp(self) -> bool {
        matches!(self, Precision::AmpFp16 | Precision::AmpBf16)
    }
}

/// Training (forward, backward, optimizer) or inference (`model.eval()` under
/// `torch.no_grad()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Train,
    Inference,
}

/// Everything the planner needs besides the model.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    pub batch_size: u64,
    pub profile: Profile,
    pub optimizer: Optimizer,
    pub precision: Precision,
    pub mode: Mode,
    /// Activation checkpointing with this many segments (`checkpoint_sequential`); 0 or
    /// 1: off.
    pub checkpoint_segments: u32,
    /// Gradient accumulation: micro-batches of `batch_size / accumulation_steps`.
    pub accumulation_steps: u32,
    /// Memory outside PyTorch's counters on CUDA (the context); default: the
    /// [`CUDA_CONTEXT_TABLE`] row of the card (of a pre-Hopper card where none is given)
    /// for `module_loading`.
    pub cuda_context_bytes: Option<u128>,
    /// How CUDA loads kernels (from `--cuda-version`): the context's size depends on it.
    pub module_loading: ModuleLoading,
    /// Keep the whole timeline (for plots); off for batch-size searches.
    pub record_timeline: bool,
    /// Threads of vramlab's engine (the `native` profile's scratch buffers scale with them).
    pub threads: usize,
    /// pytorch-cuda: run every malloc and free through the caching-allocator simulator
    /// (`cuda_alloc`), for a third step, and report reserved memory and the device total.
    pub simulate_allocator: bool,
    /// `PYTORCH_CUDA_ALLOC_CONF` for that simulation.
    pub alloc_conf: cuda_alloc::AllocConf,
    /// What the allocator may take from the device in all (the card's usable memory less
    /// the context); `None`: no limit. A request past it is the out-of-memory error.
    pub device_limit_bytes: Option<u128>,
    /// `torch.cuda.set_per_process_memory_fraction`'s maximum, if one is set.
    pub allowed_memory_bytes: Option<u128>,
    /// cuBLAS workspace (`CUBLAS_WORKSPACE_CONFIG`): 8.125 MiB by default, 32 MiB on
    /// Hopper and newer ([`cublas_workspace_bytes`]).
    pub cublas_workspace_bytes: u128,
    /// Cap on each cuDNN convolution workspace (what `CUDNN_CONV_WSCAP_DBG` does);
    /// `None`: each is the size [`cudnn`] estimates for its convolution.
    pub cudnn_workspace_bytes: Option<u128>,
    /// Many GPUs: the plan is one rank's (`--gpus`, `--strategy`); `None`: one device.
    pub distributed: Option<dist::Distributed>,
    /// Keep every malloc and free the simulated allocator sees ([`DeviceReport::trace`]).
    pub record_device_trace: bool,
    /// The GPU's streaming multiprocessors and threads per multiprocessor: ATen's
    /// reduction kernels size their global staging buffer by them
    /// ([`reduce_staging_bytes`]). Default: an H100's or H200's (132, 2048).
    pub gpu_sms: u32,
    pub gpu_max_threads_per_sm: u32,
}

/// The global-memory staging buffer (and its semaphores) ATen's reduce kernel
/// (`setReduceConfig` and `ReduceConfig::global_memory_size` in
/// aten/src/ATen/native/cuda/Reduce.cuh) asks the caching allocator for when it sums the
/// columns of a `rows x outputs` tensor over many rows, as a Linear's bias gradient is
/// on CUDA: outputs vectorised by 4 on 32 lanes, 4 rows of threads (128 per block),
/// the rows split over `ctas` blocks per column when each thread would sum at least 64
/// values: `4 B x outputs x ctas x 128`. Measured on an H200 (132 SMs): 38,928,384 B
/// for 768 outputs over 6,304 rows (99 blocks), 138,412,032 B for 3,072 (88).
/// `None` when one block per column does it.
pub fn reduce_staging_bytes(
    rows: u128,
    outputs: u128,
    sms: u32,
    max_threads_per_sm: u32,
) -> Option<(u128, u128)> {
    let vec: u128 = if outputs.is_multiple_of(4) { 4 } else { 1 };
    let threads = 512 / vec;
    let block_y = threads / 32;
    let grid_x = outputs.div_ceil(32 * vec);
    let per_thread = rows.div_ceil(block_y);
    let target = sms as u128 * (max_threads_per_sm as u128 / threads).max(1);
    if !(per_thread >= block_y * 16 || per_thread >= 256) || grid_x == 0 || grid_x > target {
        return None;
    }
    let ctas = target
        .div_ceil(grid_x)
        .min(per_thread.div_ceil(16))
        .max(per_thread.div_ceil(256));
    (ctas > 1).then(|| (4 * outputs * ctas * 32 * vec, 4 * grid_x))
}

/// cuBLAS's default workspace before Hopper: `:4096:2:16:8`, 2 x 4 MiB + 8 x 16 KiB
/// (ATen's `parseChosenWorkspaceSize`).
pub const CUBLAS_WORKSPACE_DEFAULT_BYTES: u128 = 2 * 4096 * 1024 + 8 * 16 * 1024;
/// cuBLAS's default workspace on Hopper (sm_90) and newer: `:4096:8`, 32 MiB.
pub const CUBLAS_WORKSPACE_HOPPER_BYTES: u128 = 8 * 4096 * 1024;

/// The cuBLAS workspace PyTorch takes on a card of this compute capability major.
pub fn cublas_workspace_bytes(compute_major: u32) -> u128 {
    if compute_major >= 9 {
        CUBLAS_WORKSPACE_HOPPER_BYTES
    } else {
        CUBLAS_WORKSPACE_DEFAULT_BYTES
    }
}

/// How CUDA loads kernels into a process: as each is first used (`CUDA_MODULE_LOADING=LAZY`,
/// CUDA 11.7 and later; PyTorch sets it by default since 1.13), or every kernel of a
/// library when it loads (CUDA before 11.7, or `CUDA_MODULE_LOADING=EAGER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum ModuleLoading {
    #[default]
    Lazy,
    Eager,
}

impl ModuleLoading {
    /// The loading a CUDA version implies (`torch.version.cuda`, e.g. `12.4`, `11.6`).
    pub fn from_cuda_version(v: &str) -> Result<ModuleLoading, String> {
        Ok(if parse_cuda_version(v)? < (11, 7) {
            ModuleLoading::Eager
        } else {
            ModuleLoading::Lazy
        })
    }
}

/// `--cuda-version`: MAJOR.MINOR, or MAJOR.MINOR.PATCH as nvcc prints it.
pub fn parse_cuda_version(v: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--cuda-version: expected MAJOR.MINOR such as 12.4 or 11.6, got `{v}`");
    let parts: Vec<u32> = v
        .trim()
        .split('.')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [major, minor, ..] = parts[..] else {
        return Err(bad());
    };
    if parts.len() > 3 || !(9..=99).contains(&major) {
        return Err(bad());
    }
    Ok((major, minor))
}

/// The oldest CUDA that runs a card of this compute capability major (NVIDIA's CUDA
/// release notes: Volta 9.0, Ampere 11.0, Hopper 11.8, Blackwell 12.8; the oldest of a
/// generation's cards, so that none is refused that runs).
pub fn min_cuda_version(compute_major: u32) -> (u32, u32) {
    match compute_major {
        0..=7 => (9, 0),
        8 => (11, 0),
        9 => (11, 8),
        _ => (12, 8),
    }
}

/// A `--cuda-version` older than the card runs with is refused, not planned.
pub fn check_cuda_version(v: &str, card: &str, compute_major: u32) -> Result<(), String> {
    let (major, minor) = parse_cuda_version(v)?;
    let (m, n) = min_cuda_version(compute_major);
    if (major, minor) < (m, n) {
        return Err(format!(
            "--cuda-version {v}: the {card} (compute capability {compute_major}.x) needs CUDA \
             {m}.{n} or newer"
        ));
    }
    Ok(())
}

/// One row of the CUDA context table: what a training process holds on the card outside
/// PyTorch's counters (the context, the libraries' handles and loaded kernels), by
/// generation and module loading, and what the figure rests on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CudaContext {
    pub generation: &'static str,
    /// The row holds for compute capability majors from this one (to the next row's).
    pub from_major: u32,
    pub loading: ModuleLoading,
    pub bytes: u128,
    /// Measured on such a card, or an estimate from published figures.
    pub measured: bool,
    pub basis: &'static str,
}

const MIB: u128 = 1 << 20;

/// The CUDA context table, newest generation first. The Hopper row is measured; the
/// rest combine it with published figures (each row says which).
pub const CUDA_CONTEXT_TABLE: [CudaContext; 4] = [
    CudaContext {
        generation: "Hopper and newer (compute capability 9+)",
        from_major: 9,
        loading: ModuleLoading::Lazy,
        bytes: 760 * MIB,
        measured: true,
        basis: "measured: nvidia-smi's used memory less memory_reserved() after three training \
                steps on an H200 (CUDA 13.0, driver 580.159, PyTorch 2.11), 758 to 762 MiB over \
                18 models: 520 MiB after CUDA's initialisation, 676 after the first cuBLAS call, \
                727 after the first cuDNN convolution",
    },
    CudaContext {
        generation: "Hopper and newer (compute capability 9+)",
        from_major: 9,
        loading: ModuleLoading::Eager,
        bytes: (760 + 362) * MIB,
        measured: false,
        basis: "estimate: the measured lazy figure plus the 362 MiB eager loading adds to a \
                PyTorch process (pytorch/pytorch#86509: 666,632,192 against 287,047,680 bytes)",
    },
    CudaContext {
        generation: "before Hopper (Volta, Turing, Ampere, Ada)",
        from_major: 0,
        loading: ModuleLoading::Lazy,
        bytes: (426 + 240) * MIB,
        measured: false,
        basis: "estimate: the context alone as published for an RTX 6000 Ada with CUDA 13.0 and \
                PyTorch 2.10 (426 MiB, unslothai/unsloth-zoo#1053; 287 to 400 MiB in PyTorch's \
                issues since CUDA 11.7) plus the 240 MiB the libraries added on the H200",
    },
    CudaContext {
        generation: "before Hopper (Volta, Turing, Ampere, Ada)",
        from_major: 0,
        loading: ModuleLoading::Eager,
        bytes: (426 + 240 + 362) * MIB,
        measured: false,
        basis: "estimate: the lazy estimate plus the 362 MiB eager loading adds \
                (pytorch/pytorch#86509)",
    },
];

/// The context row for a card's compute capability major and module loading.
pub fn cuda_context(compute_major: u32, loading: ModuleLoading) -> &'static CudaContext {
    CUDA_CONTEXT_TABLE
        .iter()
        .find(|r| compute_major >= r.from_major && r.loading == loading)
        .expect("the table has a row from major 0 for each loading")
}

/// The context on a card of unknown generation: the pre-Hopper estimate.
pub fn default_cuda_context(loading: ModuleLoading) -> &'static CudaContext {
    cuda_context(0, loading)
}

/// The CUDA context (and libraries) by the card's compute capability major, with
/// PyTorch's default lazy loading ([`CUDA_CONTEXT_TABLE`]).
pub fn cuda_context_bytes(compute_major: u32) -> u128 {
    cuda_context(compute_major, ModuleLoading::Lazy).bytes
}

impl PlanConfig {
    /// The CUDA context this plan assumes: the given one, or the pre-Hopper row of
    /// [`CUDA_CONTEXT_TABLE`] for the module loading.
    pub fn context_bytes(&self) -> u128 {
        self.cuda_context_bytes
            .unwrap_or_else(|| default_cuda_context(self.module_loading).bytes)
    }

    /// NCCL's buffers, outside PyTorch's allocator like the context (an estimate,
    /// `--nccl-buffer`): with more than one rank on the pytorch-cuda profile.
    pub fn nccl_bytes(&self) -> u128 {
        match &self.distributed {
            Some(d) if self.profile.is_cuda() && d.world_size() > 1 => {
                d.nccl_bytes.unwrap_or(dist::DEFAULT_NCCL_BYTES)
            }
            _ => 0,
        }
    }

    /// What the device holds outside the caching allocator: the CUDA context and
    /// NCCL's buffers.
    pub fn outside_allocator_bytes(&self) -> u128 {
        self.context_bytes() + self.nccl_bytes()
    }

    pub fn new(batch_size: u64) -> Self {
        PlanConfig {
            batch_size,
            profile: Profile::PytorchCuda,
            optimizer: Optimizer::new(OptimizerKind::Adam),
            precision: Precision::Fp32,
            mode: Mode::Train,
            checkpoint_segments: 0,
            accumulation_steps: 1,
            cuda_context_bytes: None,
            module_loading: ModuleLoading::Lazy,
            record_timeline: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            simulate_allocator: true,
            alloc_conf: cuda_alloc::AllocConf::default(),
            device_limit_bytes: None,
            allowed_memory_bytes: None,
            cublas_workspace_bytes: CUBLAS_WORKSPACE_DEFAULT_BYTES,
            cudnn_workspace_bytes: None,
            distributed: None,
            record_device_trace: false,
            gpu_sms: 132,
            gpu_max_threads_per_sm: 2048,
        }
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    /// A setting is invalid (names it).
    Config(String),
    /// PyTorch itself would fail (names the layer, and the model file it is in), as
    /// BatchNorm does on one value per channel in training.
    Framework {
        layer: String,
        message: String,
        file: Option<String>,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Config(m) => f.write_str(m),
            PlanError::Framework {
                layer,
                message,
                file,
            } => {
                if let Some(file) = file {
                    write!(f, "{file}: ")?;
                }
                write!(f, "layer `{layer}`: PyTorch fails here: {message}")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// One simulated step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub step: u32,
    pub peak_bytes: u128,
    pub peak_phase: Phase,
    /// `layer (aten op)` where the peak happens.
    pub peak_at: String,
    pub peak_layer: String,
    pub peak_op: String,
    pub before_step: CategoryBytes,
    pub at_peak: CategoryBytes,
    pub after_step: CategoryBytes,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryReport {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub batch_size: u64,
    /// Gradient accumulation: the batch runs as this many micro-batches per optimizer
    /// step (1: none); the figures are one micro-batch's step.
    pub accumulation_steps: u32,
    /// Activation checkpointing: the model's layers in this many segments
    /// (`checkpoint_sequential`; 0 or 1: none).
    pub checkpoint_segments: u32,
    pub profile: Profile,
    pub optimizer: String,
    pub precision: Precision,
    pub mode: Mode,
    pub num_params: u128,
    /// The parameters this rank keeps on the device: all of them, their shard where
    /// they are sharded, none under FSDP2's CPU offload.
    pub param_bytes: u128,
    pub buffer_bytes: u128,
    pub batch_bytes: u128,
    /// The CUDA context (pytorch-cuda), in the overhead.
    pub context_bytes: u128,
    /// NCCL's buffers (pytorch-cuda, more than one rank), in the overhead too.
    pub nccl_bytes: u128,
    /// The highest peak over the simulated steps, overhead included.
    pub peak_bytes: u128,
    pub steps: Vec<StepReport>,
    /// pytorch-cuda: what the caching allocator reserves and what nvidia-smi shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<sim::TimelinePoint>>,
    /// Many GPUs: the plan is this rank's (every rank holds the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributed: Option<dist::Distributed>,
}

/// The GPU's view of a plan: the caching allocator's counters per step (steps 1 and 2,
/// and a third for the steady state) and the total a process shows in nvidia-smi.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceReport {
    /// `PYTORCH_CUDA_ALLOC_CONF` as simulated: `default`, or the settings.
    pub alloc_conf: String,
    /// `expandable_segments:True`: one segment per pool, growing by mapped pages.
    pub expandable_segments: bool,
    /// `max_split_size_mb`, in bytes, when set.
    pub max_split_size_bytes: Option<u128>,
    /// `garbage_collection_threshold` was given but acts only under a per-process memory
    /// fraction (`fit --fraction`), as in PyTorch: here it changed nothing.
    pub garbage_collection_inactive: bool,
    pub steps: Vec<DeviceStep>,
    /// Highest `max_memory_allocated()` over the steps (modelled).
    pub allocated_peak_bytes: u128,
    /// Highest `max_memory_reserved()` over the steps (modelled).
    pub reserved_peak_bytes: u128,
    /// The CUDA context: an estimate (driver, card, CUDA version, lazy loading).
    pub cuda_context_bytes: u128,
    /// NCCL's buffers with more than one rank: an estimate (`--nccl-buffer`).
    pub nccl_bytes: u128,
    /// cuBLAS and cuBLASLt workspaces, taken from the caching allocator at the first
    /// matmul of forward and of backward (one per thread) and the first Linear with a
    /// bias: modelled, and already inside allocated and reserved (0 without a matmul).
    pub cublas_workspace_bytes: u128,
    /// The largest cuDNN convolution workspace asked of the allocator: estimated per
    /// convolution ([`cudnn`]), and like every workspace already inside allocated and
    /// reserved when served (0 without a convolution).
    pub cudnn_workspace_peak_bytes: u128,
    /// What nvidia-smi shows at most: context + reserved peak.
    pub device_total_bytes: u128,
    /// The limit the allocator ran under, if one was set.
    pub device_limit_bytes: Option<u128>,
    /// The first request the allocator could not serve under that limit.
    pub out_of_memory: Option<DeviceOom>,
    /// Every malloc and free of the simulated steps, in order, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<sim::DeviceEvent>>,
}

/// One step as `torch.cuda.reset_peak_memory_stats()` before it would show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStep {
    pub step: u32,
    /// `max_memory_allocated()`: blocks handed out, rounded as the allocator rounds.
    pub allocated_peak_bytes: u128,
    /// `max_memory_reserved()`: segments held.
    pub reserved_peak_bytes: u128,
    /// Reserved when allocated peaked.
    pub reserved_at_allocated_peak_bytes: u128,
    /// Share of that reserved memory in cached, unused blocks (0 to 1).
    pub fragmentation: f64,
    /// Segments held at the end of the step.
    pub segments: u64,
    /// cudaMalloc retried after freeing every cached block, counted since the start.
    pub alloc_retries: u64,
    /// Context + reserved peak.
    pub device_total_bytes: u128,
}

/// A request the simulated allocator could not serve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceOom {
    pub step: u32,
    pub phase: Phase,
    pub layer: String,
    pub requested_bytes: u128,
    /// "Tried to allocate" in PyTorch's message: the segment asked of the device.
    pub tried_to_allocate_bytes: u128,
    pub allocated_bytes: u128,
    pub reserved_bytes: u128,
}

/// PyTorch's autograd refuses, at backward, an in-place activation over an output its
/// producer's backward reads (ReLU's, Sigmoid's and Tanh's `result`, derivatives.yaml):
/// "one of the variables needed for gradient computation has been modified by an
/// inplace operation". Node `i`'s error, where it is one (in training, where the
/// producer's output requires grad: it does not read the image directly).
pub(crate) fn inplace_over_saved_result(graph: &Shaped, i: usize) -> Option<PlanError> {
    let node = &graph.nodes()[i];
    let Op::Act {
        kind,
        inplace: true,
    } = &node.op
    else {
        return None;
    };
    let p = &graph.nodes()[*node.inputs.first()?];
    let Op::Act { kind: pk, .. } = &p.op else {
        return None;
    };
    let requires_grad = p.inputs.first().is_some_and(|&j| j != 0);
    (pk.record().saves == vramlab_graph::act::Saves::Result && requires_grad).then(|| {
        PlanError::Framework {
            file: graph.graph.source.clone(),
            layer: node.name.clone(),
            message: format!(
                "{}(inplace=True) overwrites the output of layer `{}` ({}), which its backward \
                 reads: RuntimeError: one of the variables needed for gradient computation has \
                 been modified by an inplace operation",
                kind.class_name(),
                p.name,
                pk.class_name()
            ),
        }
    })
}

/// Training a model autograd refuses (an in-place activation over a saved result) is
/// refused by every planner, as PyTorch's backward would fail.
fn refuse_what_autograd_refuses(graph: &Shaped, cfg: &PlanConfig) -> Result<(), PlanError> {
    if cfg.mode != Mode::Train {
        return Ok(());
    }
    match (1..graph.nodes().len()).find_map(|i| inplace_over_saved_result(graph, i)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Plans the memory of training (or inference) for `graph` under `cfg`.
pub fn plan(graph: &Shaped, cfg: &PlanConfig) -> Result<MemoryReport, PlanError> {
    // What only training has: refused in inference rather than ignored.
    if cfg.mode == Mode::Inference {
        for (given, flag) in [
            (cfg.accumulation_steps > 1, "--accumulation-steps"),
            (cfg.checkpoint_segments > 0, "--checkpoint-segments"),
        ] {
            if given {
                return Err(PlanError::Config(format!(
                    "{flag} is for training (--mode train): inference keeps nothing for backward"
                )));
            }
        }
    }
    refuse_what_autograd_refuses(graph, cfg)?;
    if cfg.profile == Profile::Native {
        return native::run(graph, cfg);
    }
    train::run(graph, cfg).map(|(report, _)| report)
}

/// Bytes each layer keeps for backward at the end of the forward pass (step 1), per
/// graph node. A tensor kept by two layers (a ReLU output that the next max-pool also
/// keeps) counts for the first; the input batch and parameters are not counted.
pub fn saved_for_backward(graph: &Shaped, cfg: &PlanConfig) -> Result<Vec<u128>, PlanError> {
    refuse_what_autograd_refuses(graph, cfg)?;
    train::run(graph, cfg).map(|(_, saved)| saved)
}
