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

pub mod cuda_alloc;
pub mod fit;
mod native;
mod optim;
pub mod sim;
mod train;

use serde::Serialize;
use std::fmt;
use vramlab_graph::Shaped;

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
    /// Memory outside PyTorch's counters on CUDA (the context); default 512 MiB.
    pub cuda_context_bytes: Option<u128>,
    /// Keep the whole timeline (for plots); off for batch-size searches.
    pub record_timeline: bool,
    /// Threads of vramlab's engine (the `native` profile's scratch buffers scale with them).
    pub threads: usize,
}

/// The CUDA context's default size: an estimate, as it depends on the driver, the GPU
/// and lazy module loading; `--cuda-context` overrides it.
pub const DEFAULT_CUDA_CONTEXT_BYTES: u128 = 512 * 1024 * 1024;

impl PlanConfig {
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
            record_timeline: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    /// A setting is invalid (names it).
    Config(String),
    /// PyTorch itself would fail (names the layer), as BatchNorm does on one value per
    /// channel in training.
    Framework { layer: String, message: String },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Config(m) => f.write_str(m),
            PlanError::Framework { layer, message } => {
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
    pub profile: Profile,
    pub optimizer: String,
    pub precision: Precision,
    pub mode: Mode,
    pub num_params: u128,
    pub param_bytes: u128,
    pub buffer_bytes: u128,
    pub batch_bytes: u128,
    pub context_bytes: u128,
    /// The highest peak over the simulated steps, overhead included.
    pub peak_bytes: u128,
    pub steps: Vec<StepReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<sim::TimelinePoint>>,
}

/// Plans the memory of training (or inference) for `graph` under `cfg`.
pub fn plan(graph: &Shaped, cfg: &PlanConfig) -> Result<MemoryReport, PlanError> {
    if cfg.profile == Profile::Native {
        return native::run(graph, cfg);
    }
    train::run(graph, cfg).map(|(report, _)| report)
}

/// Bytes each layer keeps for backward at the end of the forward pass (step 1), per
/// graph node. A tensor kept by two layers (a ReLU output that the next max-pool also
/// keeps) counts for the first; the input batch and parameters are not counted.
pub fn saved_for_backward(graph: &Shaped, cfg: &PlanConfig) -> Result<Vec<u128>, PlanError> {
    train::run(graph, cfg).map(|(_, saved)| saved)
}
