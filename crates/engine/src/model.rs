//! The engine: runs a shaped graph forward (recording a tape of exactly what PyTorch's
//! autograd saves), cross-entropy, backward in reverse graph order, and the optimizer,
//! with every buffer tracked by category.
//!
//! Memory schedule (the planner's `native` profile mirrors it):
//! - forward, per node: allocate the output(s), then any scratch, free the scratch;
//!   Python-like drops of inputs after their last reader;
//! - loss: log-softmax `[B, K]` (kept), the logits dropped, the loss a plain number;
//! - backward, nodes in reverse order: allocate the input gradient, then parameter
//!   gradients, then scratch; free scratch, the incoming gradient and the node's saved
//!   tensors; then hand gradients on (into `.grad`, or added into an existing one in
//!   place when nobody else holds it);
//! - optimizer: state allocated at the first step, updates in place.

use std::rc::Rc;

use rayon::prelude::*;
use vramlab_graph::op::Init;
use vramlab_graph::{Op, Shaped};

use crate::kernels::Tier;
use crate::ops::attention::{AttnSaved, AttnWeights};
use crate::ops::batch_norm::BnBuffers;
use crate::ops::conv::ConvGeom;
use crate::ops::{self, Ctx};
use crate::optim::{self, OptimizerConfig};
use crate::rng::Rng;
use crate::tensor::{Buf, Category, CategoryBytes, Peak, Phase, Saved, SavedIdx, Tensor, Tracker};

/// A parameter with its gradient and optimizer state.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Option<Tensor>,
    pub state: Vec<Tensor>,
}

/// What one node keeps for backward.
enum Tape {
    Conv {
        x: Saved,
    },
    Linear {
        x: Saved,
    },
    Bn {
        x: Saved,
        mean: Saved,
        invstd: Saved,
    },
    /// An activation: its result, its input, or a copy of its input
    /// ([`vramlab_graph::Activation::grad_from_result`]).
    Act {
        v: Saved,
    },
    /// Both factors of a multiply.
    Mul {
        a: Saved,
        b: Saved,
    },
    /// StochasticDepth's per-sample scale.
    Noise {
        noise: Saved,
    },
    /// Nothing kept, but a gradient to compute (concatenation, slices, shuffles).
    Nothing,
    MaxPool {
        x: Saved,
        idx: SavedIdx,
    },
    Pool {
        x: Option<Saved>,
    },
    Dropout {
        mask: Saved,
    },
    /// LayerNorm's input and the mean and reciprocal standard deviation of each row.
    Ln {
        x: Saved,
        mean: Saved,
        rstd: Saved,
    },
    /// Self-attention's input, packed projections, probabilities and heads' outputs.
    Attn {
        x: Saved,
        qkv: Saved,
        probs: Saved,
        heads: Saved,
    },
    Pass,
}

impl Tape {
    /// The variant's name, for the message of a tape that does not fit its layer.
    fn kind(&self) -> &'static str {
        match self {
            Tape::Conv { .. } => "Conv",
            Tape::Linear { .. } => "Linear",
            Tape::Bn { .. } => "Bn",
            Tape::Act { .. } => "Act",
            Tape::Mul { .. } => "Mul",
            Tape::Noise { .. } => "Noise",
            Tape::Nothing => "Nothing",
            Tape::MaxPool { .. } => "MaxPool",
            Tape::Pool { .. } => "Pool",
            Tape::Dropout { .. } => "Dropout",
            Tape::Ln { .. } => "Ln",
            Tape::Attn { .. } => "Attn",
            Tape::Pass => "Pass",
        }
    }
}

impl Tape {
    /// An attention's tape: its input and what [`ops::attention::forward`] saved.
    fn attention(x: &Tensor, s: &AttnSaved) -> Tape {
        Tape::Attn {
            x: Saved::new(x),
            qkv: Saved::new(&s.qkv),
            probs: Saved::new(&s.probs),
            heads: Saved::new(&s.heads),
        }
    }
}

/// The input and saved tensors of an attention's tape.
fn attention_tape(tape: &Tape) -> Option<(Tensor, AttnSaved)> {
    let Tape::Attn {
        x,
        qkv,
        probs,
        heads,
    } = tape
    else {
        return None;
    };
    let saved = AttnSaved {
        qkv: qkv.0.clone(),
        probs: probs.0.clone(),
        heads: heads.0.clone(),
    };
    Some((x.0.clone(), saved))
}

/// Memory of one measured step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepMemory {
    pub before_step: CategoryBytes,
    pub peak: Peak,
    pub after_step: CategoryBytes,
}

/// Result of one training step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub loss: f32,
    pub correct: usize,
    pub memory: StepMemory,
}

pub struct Engine {
    pub graph: Shaped,
    pub tracker: Rc<Tracker>,
    pub params: Vec<Param>,
    pub bn: Vec<Option<BnBuffers>>,
    /// The `relative_position_index` buffer of each attention with a relative position
    /// bias (Swin's, MaxViT's), as torchvision registers it.
    pub position_index: Vec<Option<Rc<Buf<i64>>>>,
    /// Swin V2's `relative_coords_table` buffer, what its position bias MLP reads.
    pub position_coords: Vec<Option<Tensor>>,
    pub optimizer: OptimizerConfig,
    pub step: u64,
    pub rng: Rng,
    pool: rayon::ThreadPool,
    threads: usize,
    first_param: Vec<usize>,
    /// The most f32 values one sample needs in any one buffer (a layer's output or a
    /// convolution's column matrix): a batch is refused when this times the batch size
    /// cannot be allocated.
    max_per_sample: usize,
    requires_grad: Vec<bool>,
    /// The instruction-set tier the kernels run ([`vramlab_isa::active`], the one the
    /// native profile plans for).
    tier: Tier,
    /// Seconds spent per op kind ("forward Conv2d", "backward ReLU", "optimizer").
    pub op_seconds: std::collections::BTreeMap<String, f64>,
}

/// Errors of the engine (bad input shapes, a failing BatchNorm).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineError(pub String);

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// PyTorch's default initialisation of Conv2d and Linear: kaiming_uniform_(a=sqrt(5)) for
/// the weight, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
fn init_uniform(rng: &mut Rng, n: usize, fan_in: usize) -> Vec<f32> {
    init_bound(rng, n, 1.0 / (fan_in as f64).sqrt())
}

/// `xavier_uniform_`: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
fn init_xavier(rng: &mut Rng, n: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
    init_bound(rng, n, (6.0 / (fan_in + fan_out) as f64).sqrt())
}

/// U(-bound, bound).
fn init_bound(rng: &mut Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.unit_f64() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// `normal_(std=...)` (a ViT's position embedding: N(0, 0.02^2)).
fn init_normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
            let (u, v) = (1.0 - rng.unit_f64(), rng.unit_f64());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * std) as f32
        })
        .collect()
}

/// Training frees and reallocates the same large buffers every step. glibc returns
/// buffers over its mmap threshold to the kernel at once, so each step would pay page
/// faults, page zeroing and TLB shootdowns again; keep them in the heap instead.
fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters; called once, before the
        // engine allocates its buffers.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}

/// Refuses a graph the kernels cannot run: a zero-sized tensor (a layer with 0 output
/// channels or features, or 0 classes) or one whose element count overflows. The graph
/// crate refuses these when it infers shapes; a hand-built [`Shaped`] is checked here so
/// the engine never panics on one.
fn check_sizes(g: &Shaped) -> Result<usize, EngineError> {
    if g.shapes.len() != g.nodes().len() || g.nodes().is_empty() {
        return Err(EngineError(format!(
            "{}: {} shapes for {} layers",
            g.graph.name,
            g.shapes.len(),
            g.nodes().len()
        )));
    }
    let count = |shape: &[usize]| shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let mut max_per_sample = 1usize;
    for (node, shape) in g.nodes().iter().zip(&g.shapes) {
        if let Op::Conv2d(c) = &node.op {
            // The column matrix of one sample: (in_channels * kh * kw) x (ho * wo).
            let cols = [c.in_channels, c.kernel_size.0, c.kernel_size.1]
                .iter()
                .chain(shape.get(1..).unwrap_or(&[]))
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    EngineError(format!(
                        "layer `{}`: its column matrix is too large",
                        node.name
                    ))
                })?;
            max_per_sample = max_per_sample.max(cols);
        }
        max_per_sample = max_per_sample.max(count(shape).unwrap_or(usize::MAX));
        let specs = node.op.params();
        let tensors = std::iter::once(("output".to_string(), shape.clone())).chain(
            specs
                .iter()
                .map(|t| (format!("`{}`", t.name), t.shape.clone())),
        );
        for (what, shape) in tensors {
            match count(&shape) {
                Some(0) => {
                    return Err(EngineError(format!(
                    "layer `{}`: its {what} of shape {} is empty; every size must be at least 1",
                    node.name,
                    vramlab_graph::fmt_shape(&shape)
                )))
                }
                None => {
                    return Err(EngineError(format!(
                        "layer `{}`: its {what} of shape {} is too large",
                        node.name,
                        vramlab_graph::fmt_shape(&shape)
                    )))
                }
                Some(_) => {}
            }
        }
        if node.inputs.iter().any(|&j| j >= g.shapes.len()) {
            return Err(EngineError(format!(
                "layer `{}` reads a layer that does not exist",
                node.name
            )));
        }
    }
    Ok(max_per_sample)
}

impl Engine {
    pub fn new(
        graph: Shaped,
        optimizer: OptimizerConfig,
        seed: u64,
        threads: usize,
    ) -> Result<Engine, EngineError> {
        keep_freed_memory();
        if !graph.graph.aux.is_empty() {
            return Err(EngineError(format!(
                "{}: the CPU engine trains without auxiliary classifiers; build the model \
                 with Graph::without_aux (vramlab train does)",
                graph.graph.name
            )));
        }
        let max_per_sample = check_sizes(&graph)?;
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| EngineError(format!("cannot start {threads} threads: {e}")))?;
        let tracker = Tracker::new();
        let mut rng = Rng::new(seed);
        let mut params = Vec::new();
        let mut bn = Vec::new();
        let mut position_index = Vec::new();
        let mut position_coords = Vec::new();
        let mut first_param = Vec::new();
        let mut requires_grad = Vec::new();
        for node in graph.nodes() {
            first_param.push(params.len());
            let specs = node.op.params();
            let inputs_require = node.inputs.iter().any(|&j| requires_grad[j]);
            requires_grad.push(!specs.is_empty() || inputs_require);
            let fan_in = node.op.fan_in();
            for spec in specs {
                let n = spec.numel() as usize;
                // The layer's one definition says how PyTorch starts it.
                let data = match graph.graph.init_of(node, &spec) {
                    Init::FanInUniform => init_uniform(&mut rng, n, fan_in),
                    Init::FanInOf(fan_in) => init_uniform(&mut rng, n, fan_in),
                    Init::Uniform { bound } => init_bound(&mut rng, n, bound),
                    Init::Ones => vec![1.0; n],
                    Init::Zeros => vec![0.0; n],
                    Init::Xavier { fan_in, fan_out } => init_xavier(&mut rng, n, fan_in, fan_out),
                    Init::Normal { std } => init_normal(&mut rng, n, std),
                    Init::Constant(c) => vec![c as f32; n],
                };
                let name = vramlab_graph::param_name(node, &spec);
                params.push(Param {
                    name,
                    value: Tensor::from_vec(&tracker, &spec.shape, data, Some(Category::Params)),
                    grad: None,
                    state: Vec::new(),
                });
            }
            // Buffers: BatchNorm's running statistics, attention's relative position index.
            let stats = if let Op::BatchNorm2d(b) = &node.op {
                b.track_running_stats.then_some(b.num_features)
            } else {
                None
            };
            let window = node.op.relative_position_window();
            position_index.push(window.map(|(wh, ww)| {
                let index = ops::attention::relative_position_index(wh, ww);
                let index = index.into_iter().map(|v| v as i64).collect();
                Buf::from_vec(&tracker, index, Some(Category::Buffers))
            }));
            let v2_window = if let Op::WindowAttention(w) = &node.op {
                w.v2.then_some(w.window)
            } else {
                None
            };
            position_coords.push(v2_window.map(|(wh, ww)| {
                let table = ops::window_attention::relative_coords_table(wh, ww);
                let shape = [1, 2 * wh - 1, 2 * ww - 1, 2];
                Tensor::from_vec(&tracker, &shape, table, Some(Category::Buffers))
            }));
            debug_assert!(
                node.op.buffers().is_empty() || stats.is_some() || window.is_some(),
                "{}: buffers the engine does not make",
                node.name
            );
            bn.push(stats.map(|c| BnBuffers {
                running_mean: Tensor::from_vec(
                    &tracker,
                    &[c],
                    vec![0.0; c],
                    Some(Category::Buffers),
                ),
                running_var: Tensor::from_vec(
                    &tracker,
                    &[c],
                    vec![1.0; c],
                    Some(Category::Buffers),
                ),
                num_batches_tracked: Buf::from_vec(&tracker, vec![0i64], Some(Category::Buffers)),
            }));
        }
        let mut e = Engine {
            graph,
            tracker,
            params,
            bn,
            position_index,
            position_coords,
            optimizer,
            step: 0,
            rng,
            pool,
            threads,
            first_param,
            requires_grad,
            max_per_sample,
            tier: vramlab_isa::active(),
            op_seconds: Default::default(),
        };
        if e.optimizer.eager_state() {
            e.init_state();
        }
        Ok(e)
    }

    /// What the layer kernels of [`crate::ops`] may use.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            tracker: &self.tracker,
            pool: &self.pool,
            threads: self.threads,
            tier: self.tier,
        }
    }

    /// The weights of window attention node `i`, in its parameters' order (V1: the table,
    /// `qkv`, `proj`; V2: `logit_scale`, `qkv`, `proj`, `cpb_mlp.0`, `cpb_mlp.2`).
    fn window_weights(
        &self,
        i: usize,
        a: &vramlab_graph::op::WindowAttention,
    ) -> ops::window_attention::Weights<'_> {
        let p = |k: usize| &self.params[self.first_param[i] + k].value;
        let bias = if a.v2 {
            ops::window_attention::Bias::Mlp {
                coords: self.position_coords[i]
                    .as_ref()
                    .expect("made with the layer"),
                w1: p(5),
                b1: p(6),
                w2: p(7),
                logit_scale: p(0),
            }
        } else {
            ops::window_attention::Bias::Table(p(0))
        };
        ops::window_attention::Weights {
            bias,
            attn: self.attn_weights(self.first_param[i] + 1),
        }
    }

    /// An attention's projections, the four parameters from `first`: the packed
    /// in-projection's weight and bias, the out-projection's.
    fn attn_weights(&self, first: usize) -> AttnWeights<'_> {
        let p = |k: usize| &self.params[first + k].value;
        AttnWeights {
            w_in: p(0),
            b_in: p(1),
            w_out: p(2),
            b_out: p(3),
        }
    }

    /// The relative position index of attention node `i`.
    fn position_index(&self, i: usize) -> Vec<usize> {
        let index = self.position_index[i]
            .as_ref()
            .expect("made with the layer");
        let v = index.borrow().iter().map(|&v| v as usize).collect();
        v
    }

    /// The geometry of convolution node `i`.
    fn geom(&self, i: usize, c: &vramlab_graph::Conv2d) -> ConvGeom {
        let x = self.graph.nodes()[i].inputs[0];
        ConvGeom::new(c, &self.graph.shapes[x], &self.graph.shapes[i])
    }

    /// The instruction-set tier this engine's kernels run.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Allocates the optimizer state if it does not exist yet (a resumed checkpoint).
    pub fn ensure_state(&mut self) {
        if self.optimizer.moments() > 0 {
            self.init_state();
        }
    }

    fn init_state(&mut self) {
        let k = self.optimizer.moments();
        let v0 = self.optimizer.initial_state_value();
        for p in &mut self.params {
            if p.state.is_empty() {
                for _ in 0..k {
                    let n = p.value.numel();
                    p.state.push(Tensor::from_vec(
                        &self.tracker,
                        &p.value.shape,
                        vec![v0; n],
                        Some(Category::OptimizerState),
                    ));
                }
            }
        }
    }

    /// Images as a tracked `[B, C, H, W]` batch on the "device".
    pub fn batch(&self, images: Vec<f32>, batch: usize) -> Result<Tensor, EngineError> {
        let s = &self.graph.shapes[0];
        let per: usize = s.iter().product();
        // Every buffer of the step is at most `max_per_sample` values a sample, of at
        // most 8 bytes (int64 indices): refuse a batch whose sizes would overflow.
        let want = batch
            .checked_mul(per)
            .filter(|_| {
                batch
                    .checked_mul(self.max_per_sample)
                    .and_then(|v| v.checked_mul(8))
                    .is_some_and(|b| b <= isize::MAX as usize)
            })
            .ok_or_else(|| {
                EngineError(format!(
                    "a batch of {batch} images of {} does not fit in memory",
                    vramlab_graph::fmt_shape(s)
                ))
            })?;
        if images.len() != want {
            return Err(EngineError(format!(
                "a batch of {batch} images of {} needs {want} values, got {}",
                vramlab_graph::fmt_shape(s),
                images.len()
            )));
        }
        let mut shape = vec![batch];
        shape.extend_from_slice(s);
        Ok(Tensor::from_vec(
            &self.tracker,
            &shape,
            images,
            Some(Category::DataBatch),
        ))
    }

    /// Labels as a tracked int64 buffer on the "device" (part of the data batch).
    pub fn labels(&self, labels: Vec<i64>) -> Rc<Buf<i64>> {
        Buf::from_vec(&self.tracker, labels, Some(Category::DataBatch))
    }

    fn out_shape(&self, i: usize, b: usize) -> Vec<usize> {
        let mut s = vec![b];
        s.extend_from_slice(&self.graph.shapes[i]);
        s
    }

    /// How many chunks a batch is split into for threads.
    pub fn chunks(&self, b: usize) -> usize {
        self.threads.min(b).max(1)
    }

    /// Forward pass. With `train`, records the tape; returns the logits.
    fn forward(
        &mut self,
        x: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Vec<Option<Tape>>), EngineError> {
        let n = self.graph.nodes().len();
        let b = x.shape[0];
        let mut vals: Vec<Option<Tensor>> = vec![None; n];
        let mut tape: Vec<Option<Tape>> = (0..n).map(|_| None).collect();
        vals[0] = Some(x.clone());
        for i in 1..n {
            let node = self.graph.nodes()[i].clone();
            // A learnable leaf reads no input (it gets the batch, for its size).
            let xin = match node.inputs.first() {
                Some(&j) => vals[j].clone().expect("inputs run first"),
                None => x.clone(),
            };
            let rg = train && self.requires_grad[*node.inputs.first().unwrap_or(&i)];
            let p0 = self.first_param[i];
            let t_op = std::time::Instant::now();
            // Fields, not `self.ctx()`: dropout and stochastic depth draw from `self.rng`.
            let ctx = Ctx {
                tracker: &self.tracker,
                pool: &self.pool,
                threads: self.threads,
                tier: self.tier,
            };
            let param = |k: usize| &self.params[p0 + k].value;
            let (out, t) = match &node.op {
                Op::Input => unreachable!("node 0"),
                Op::WindowAttention(a) => {
                    let w = self.window_weights(i, a);
                    let index = self.position_index(i);
                    let (out, s) = ops::window_attention::forward(&ctx, &xin, a, &w, &index);
                    let t = train.then(|| Tape::attention(&s.windows, &s.attn));
                    (out, t)
                }
                Op::RelPosAttention { dim, head_dim, .. } => {
                    let w = self.attn_weights(p0 + 1);
                    let index = self.position_index(i);
                    let heads = dim / head_dim;
                    let (out, xf, s) =
                        ops::rel_pos_attention::forward(&ctx, &xin, param(0), &w, heads, &index);
                    let t = train.then(|| Tape::attention(&xf, &s));
                    (out, t)
                }
                Op::PatchMerge => {
                    let out = ops::patch_merge::forward(&ctx, &xin, &self.out_shape(i, b));
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Partition { p, grid } => {
                    let shape = self.out_shape(i, b);
                    let out = ops::partition::forward(&ctx, &xin, *p, *grid, &shape);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Departition { p, grid, .. } => {
                    let shape = self.out_shape(i, b);
                    let out = ops::departition::forward(&ctx, &xin, *p, *grid, &shape);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Conv2d(c) => {
                    let g = self.geom(i, c);
                    let bias = c.bias.then(|| param(1));
                    let out =
                        ops::conv::forward(&ctx, &g, &xin, param(0), bias, self.out_shape(i, b));
                    (
                        out,
                        train.then(|| Tape::Conv {
                            x: Saved::new(&xin),
                        }),
                    )
                }
                Op::Linear(l) => {
                    let bias = l.bias.then(|| param(1));
                    let out =
                        ops::linear::forward(&ctx, &xin, param(0), bias, self.out_shape(i, b));
                    (
                        out,
                        train.then(|| Tape::Linear {
                            x: Saved::new(&xin),
                        }),
                    )
                }
                Op::BatchNorm2d(bn) => {
                    let affine = bn.affine.then(|| (param(0), param(1)));
                    let (out, kept) = ops::batch_norm::forward(
                        &ctx,
                        &xin,
                        affine,
                        self.bn[i].as_ref(),
                        bn,
                        train,
                    )
                    .map_err(|m| EngineError(format!("layer `{}`: {m}", node.name)))?;
                    let t = kept.map(|(mean, invstd)| Tape::Bn {
                        x: Saved::new(&xin),
                        mean: Saved::new(&mean),
                        invstd: Saved::new(&invstd),
                    });
                    (out, t)
                }
                Op::Act { kind, inplace } => {
                    // The result is kept where the gradient can be computed from it, else
                    // the input (in place: a copy of it first, as PyTorch does).
                    let from_result = kind.grad_from_result();
                    let copy =
                        (rg && *inplace && !from_result).then(|| ops::activation::copy(&ctx, &xin));
                    let out = ops::activation::forward(&ctx, *kind, &xin, *inplace);
                    let t = rg.then(|| Tape::Act {
                        v: Saved::new(match &copy {
                            Some(c) => c,
                            None if from_result => &out,
                            None => &xin,
                        }),
                    });
                    (out, t)
                }
                Op::MaxPool2d(p) => {
                    let (out, idx) = ops::max_pool::forward(&ctx, &xin, p, &self.out_shape(i, b));
                    let t = rg.then(|| Tape::MaxPool {
                        x: Saved::new(&xin),
                        idx: SavedIdx::new(Rc::clone(&idx)),
                    });
                    drop(idx);
                    (out, t)
                }
                Op::AvgPool2d(p) => {
                    let out = ops::avg_pool::forward(&ctx, &xin, p, &self.out_shape(i, b));
                    (
                        out,
                        rg.then(|| Tape::Pool {
                            x: Some(Saved::new(&xin)),
                        }),
                    )
                }
                Op::AdaptiveAvgPool2d { output_size } => {
                    let out = ops::adaptive_avg_pool::forward(&ctx, &xin, &self.out_shape(i, b));
                    let keep = *output_size != (1, 1);
                    (
                        out,
                        rg.then(|| Tape::Pool {
                            x: keep.then(|| Saved::new(&xin)),
                        }),
                    )
                }
                Op::Flatten => {
                    let out = Tensor {
                        buf: Rc::clone(&xin.buf),
                        shape: self.out_shape(i, b),
                    };
                    (out, rg.then_some(Tape::Pass))
                }
                Op::Dropout { p, inplace } => {
                    if !train || *p == 0.0 {
                        (ops::alias(&xin), rg.then_some(Tape::Pass))
                    } else {
                        let (out, mask) =
                            ops::dropout::forward(&ctx, &xin, *p, *inplace, &mut self.rng);
                        (
                            out,
                            rg.then(|| Tape::Dropout {
                                mask: Saved::new(&mask),
                            }),
                        )
                    }
                }
                Op::Param { .. } => {
                    let out = ops::param::forward(&ctx, param(0), &self.out_shape(i, b));
                    (out, train.then_some(Tape::Nothing))
                }
                Op::LayerNorm(l) => {
                    let w = l.elementwise_affine.then(|| param(0));
                    let bias = (l.elementwise_affine && l.bias).then(|| param(1));
                    let (out, mean, rstd) = ops::layer_norm::forward(&ctx, &xin, w, bias, l.eps);
                    let t = (train && self.requires_grad[i]).then(|| Tape::Ln {
                        x: Saved::new(&xin),
                        mean: Saved::new(&mean),
                        rstd: Saved::new(&rstd),
                    });
                    (out, t)
                }
                Op::MultiheadAttention { num_heads, .. } => {
                    let w = self.attn_weights(p0);
                    let scale = ops::attention::mha_scale(xin.shape[2], *num_heads);
                    let scores = ops::attention::Scores::Scaled(scale);
                    let (out, s) =
                        ops::attention::forward(&ctx, &xin, &w, *num_heads, scores, None);
                    let t = train.then(|| Tape::attention(&xin, &s));
                    (out, t)
                }
                Op::Select { index } => {
                    let out = ops::select::forward(&ctx, &xin, *index);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Tokens => {
                    let out = ops::tokens::tokens(&ctx, &xin, &xin.shape, false);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Permute { dims } => {
                    let out = ops::permute::permute(&ctx, &xin, dims);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Mul => {
                    let y = vals[node.inputs[1]].clone().expect("inputs run first");
                    let out = ops::mul::forward(&ctx, &xin, &y);
                    let t = (train && self.requires_grad[i]).then(|| Tape::Mul {
                        a: Saved::new(&xin),
                        b: Saved::new(&y),
                    });
                    (out, t)
                }
                Op::Concat => {
                    let xs: Vec<Tensor> = node
                        .inputs
                        .iter()
                        .map(|&j| vals[j].clone().expect("inputs run first"))
                        .collect();
                    let out = ops::concat::forward(&ctx, &xs);
                    (
                        out,
                        (train && self.requires_grad[i]).then_some(Tape::Nothing),
                    )
                }
                Op::Narrow { start, len } => {
                    let out = ops::narrow::forward(&ctx, &xin, *start, *len);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::ChannelShuffle { groups } => {
                    let out = ops::channel_shuffle::shuffle(&ctx, &xin, *groups, false);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::StochasticDepth { p, row } => {
                    if !train || *p == 0.0 {
                        (ops::alias(&xin), rg.then_some(Tape::Pass))
                    } else {
                        let noise = ops::stochastic_depth::noise(&ctx, *p, *row, b, &mut self.rng);
                        let out = ops::stochastic_depth::scale_by(&ctx, &xin, &noise);
                        (
                            out,
                            rg.then(|| Tape::Noise {
                                noise: Saved::new(&noise),
                            }),
                        )
                    }
                }
                Op::Add { inplace } => {
                    let y = vals[node.inputs[1]].clone().expect("inputs run first");
                    let out = ops::add::forward(&ctx, &xin, &y, *inplace);
                    let any = train
                        && (self.requires_grad[node.inputs[0]]
                            || self.requires_grad[node.inputs[1]]);
                    (out, any.then_some(Tape::Pass))
                }
            };
            drop(xin);
            *self
                .op_seconds
                .entry(format!("forward {}", node.op.type_name()))
                .or_default() += t_op.elapsed().as_secs_f64();
            vals[i] = Some(out);
            tape[i] = t;
            for &j in &node.inputs {
                if self.graph.consumers[j].last() == Some(&i) {
                    vals[j] = None;
                }
            }
        }
        Ok((vals[n - 1].take().expect("last node ran"), tape))
    }
}

/// Log-softmax of each row.
fn log_softmax(logits: &[f32], k: usize, out: &mut [f32]) {
    for (row, o) in logits.chunks(k).zip(out.chunks_mut(k)) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
        let ls = m + s.ln();
        for (o, &v) in o.iter_mut().zip(row) {
            *o = v - ls;
        }
    }
}

impl Engine {
    /// One training step: zero_grad, forward, cross-entropy, backward, optimizer. The
    /// memory of the step is measured by category.
    pub fn train_step(
        &mut self,
        images: &Tensor,
        labels: &Buf<i64>,
    ) -> Result<StepResult, EngineError> {
        let labels = labels.borrow().clone();
        self.tracker.reset_peak();
        let before = self.tracker.live();
        let (loss, correct) = self.gradients(images, &labels)?;
        self.tracker.set_phase(Phase::Optimizer);
        self.optimizer_step();
        let peak = self.tracker.peak().expect("the step allocated");
        let after = self.tracker.live();
        Ok(StepResult {
            loss,
            correct,
            memory: StepMemory {
                before_step: before,
                peak,
                after_step: after,
            },
        })
    }

    /// zero_grad, forward, cross-entropy and backward: the gradients are in
    /// `params[i].grad`. Returns the mean loss and the number of correct predictions.
    pub fn gradients(
        &mut self,
        images: &Tensor,
        labels: &[i64],
    ) -> Result<(f32, usize), EngineError> {
        let k = self.graph.num_classes();
        if let Some(&bad) = labels.iter().find(|&&l| l < 0 || l as usize >= k) {
            return Err(EngineError(format!(
                "label {bad} is out of range for a model with {k} classes"
            )));
        }
        let b = images.shape[0];
        if labels.len() != b {
            return Err(EngineError(format!(
                "{} labels for a batch of {b} images",
                labels.len()
            )));
        }
        self.tracker.set_phase(Phase::Forward);
        for p in &mut self.params {
            p.grad = None;
        }
        let (logits, mut tape) = self.forward(images, true)?;
        let ls = {
            let t = Tensor::zeros(&self.tracker, &[b, k], None);
            log_softmax(&logits.data(), k, &mut t.data_mut());
            Saved::new(&t)
        };
        let (mut loss, mut correct) = (0.0f64, 0);
        {
            let (ld, lg) = (ls.0.data(), logits.data());
            for (r, &y) in labels.iter().enumerate() {
                loss -= ld[r * k + y as usize] as f64;
                let row = &lg[r * k..(r + 1) * k];
                let arg = row
                    .iter()
                    .enumerate()
                    .fold(0, |a, (j, &v)| if v > row[a] { j } else { a });
                correct += usize::from(arg == y as usize);
            }
        }
        drop(logits);
        let loss = (loss / b as f64) as f32;
        self.tracker.set_phase(Phase::Backward);
        let g = Tensor::zeros(&self.tracker, &[b, k], None);
        {
            let mut gd = g.data_mut();
            let ld = ls.0.data();
            for (r, &y) in labels.iter().enumerate() {
                for j in 0..k {
                    gd[r * k + j] =
                        (ld[r * k + j].exp() - if j == y as usize { 1.0 } else { 0.0 }) / b as f32;
                }
            }
        }
        drop(ls);
        self.backward(&mut tape, g);
        Ok((loss, correct))
    }

    /// The training-mode loss alone (no tape kept, no gradients).
    pub fn loss(&mut self, images: &Tensor, labels: &[i64]) -> Result<f64, EngineError> {
        let k = self.graph.num_classes();
        let (logits, tape) = self.forward(images, true)?;
        drop(tape);
        let lg = logits.data();
        let mut ls = vec![0.0f32; lg.len()];
        log_softmax(&lg, k, &mut ls);
        let loss: f64 = labels
            .iter()
            .enumerate()
            .map(|(r, &y)| -(ls[r * k + y as usize] as f64))
            .sum();
        Ok(loss / labels.len() as f64)
    }

    fn backward(&mut self, tape: &mut [Option<Tape>], g_logits: Tensor) {
        let n = self.graph.nodes().len();
        let mut grads: Vec<Option<Tensor>> = vec![None; n];
        grads[n - 1] = Some(g_logits);
        for i in (1..n).rev() {
            let Some(g) = grads[i].take() else {
                tape[i] = None;
                continue;
            };
            let node = self.graph.nodes()[i].clone();
            let t = tape[i].take();
            let p0 = self.first_param[i];
            let need_in = node.inputs.first().is_some_and(|&j| self.requires_grad[j]);
            // (input gradients by input position, parameter gradients by param index)
            let mut ins: Vec<(usize, Tensor)> = Vec::new();
            let mut pgs: Vec<(usize, Tensor)> = Vec::new();
            let t_op = std::time::Instant::now();
            let ctx = self.ctx();
            let param = |k: usize| &self.params[p0 + k].value;
            // The input's shape, batch first.
            let in_shape = |j: usize| self.out_shape(j, g.shape[0]);
            // No tape: nothing to compute (a node PyTorch would not record either).
            let Some(tape) = &t else {
                continue;
            };
            let wrong = || -> ! {
                unreachable!(
                    "layer `{}`: {} recorded a {} tape",
                    node.name,
                    node.op.type_name(),
                    tape.kind()
                )
            };
            match &node.op {
                Op::Conv2d(c) => {
                    let Tape::Conv { x } = tape else { wrong() };
                    let geom = self.geom(i, c);
                    let bias = c.bias.then(|| param(1));
                    let (gi, gw, gb) =
                        ops::conv::backward(&ctx, &geom, &x.0, &g, param(0), bias, need_in);
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    pgs.push((p0, gw));
                    pgs.extend(gb.map(|t| (p0 + 1, t)));
                }
                Op::Linear(l) => {
                    let Tape::Linear { x } = tape else { wrong() };
                    let (gi, gw, gb) =
                        ops::linear::backward(&ctx, &x.0, &g, param(0), l.bias, need_in);
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    pgs.push((p0, gw));
                    pgs.extend(gb.map(|t| (p0 + 1, t)));
                }
                Op::BatchNorm2d(bn) => {
                    let Tape::Bn { x, mean, invstd } = tape else {
                        wrong()
                    };
                    let gamma = bn.affine.then(|| param(0));
                    let (gi, gw, gb) = ops::batch_norm::backward(
                        &ctx, &x.0, &mean.0, &invstd.0, &g, gamma, need_in,
                    );
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    if let (Some(gw), Some(gb)) = (gw, gb) {
                        pgs.push((p0, gw));
                        pgs.push((p0 + 1, gb));
                    }
                }
                Op::Act { kind, .. } => {
                    let Tape::Act { v } = tape else { wrong() };
                    let gi = ops::activation::backward(&ctx, *kind, &g, &v.0);
                    ins.push((node.inputs[0], gi));
                }
                Op::Param { .. } => {
                    let Tape::Nothing = tape else { wrong() };
                    let shape = param(0).shape.clone();
                    pgs.push((p0, ops::param::backward(&ctx, &g, &shape)));
                }
                Op::LayerNorm(l) => {
                    let Tape::Ln { x, mean, rstd } = tape else {
                        wrong()
                    };
                    let w = l.elementwise_affine.then(|| param(0));
                    let (gi, gw, gb) = ops::layer_norm::backward(
                        &ctx, &x.0, &mean.0, &rstd.0, &g, w, l.bias, need_in,
                    );
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    pgs.extend(gw.map(|t| (p0, t)));
                    pgs.extend(gb.map(|t| (p0 + 1, t)));
                }
                Op::MultiheadAttention { num_heads, .. } => {
                    let Some((x, saved)) = attention_tape(tape) else {
                        wrong()
                    };
                    let w = self.attn_weights(p0);
                    let scale = ops::attention::mha_scale(x.shape[2], *num_heads);
                    let grads = ops::attention::backward(
                        &ctx,
                        &x,
                        &saved,
                        &g,
                        &w,
                        *num_heads,
                        ops::attention::Scores::Scaled(scale),
                        None,
                        need_in,
                    );
                    ins.extend(grads.input.map(|t| (node.inputs[0], t)));
                    pgs.extend((p0..).zip(grads.params));
                }
                Op::Select { index } => {
                    let Tape::Nothing = tape else { wrong() };
                    let gi = ops::select::backward(&ctx, &g, &in_shape(node.inputs[0]), *index);
                    ins.push((node.inputs[0], gi));
                }
                Op::Tokens => {
                    let Tape::Nothing = tape else { wrong() };
                    let gi = ops::tokens::tokens(&ctx, &g, &in_shape(node.inputs[0]), true);
                    ins.push((node.inputs[0], gi));
                }
                Op::Permute { dims } => {
                    let Tape::Nothing = tape else { wrong() };
                    let inverse = ops::permute::inverse(dims);
                    ins.push((node.inputs[0], ops::permute::permute(&ctx, &g, &inverse)));
                }
                Op::Mul => {
                    let Tape::Mul { a, b } = tape else { wrong() };
                    if self.requires_grad[node.inputs[0]] {
                        let ga = ops::mul::backward(&ctx, &g, &a.0.shape, &b.0);
                        ins.push((node.inputs[0], ga));
                    }
                    if self.requires_grad[node.inputs[1]] {
                        let gb = ops::mul::backward(&ctx, &g, &b.0.shape, &a.0);
                        ins.push((node.inputs[1], gb));
                    }
                }
                Op::Concat => {
                    let Tape::Nothing = tape else { wrong() };
                    let mut start = 0;
                    for &j in &node.inputs {
                        let shape = in_shape(j);
                        if self.requires_grad[j] {
                            ins.push((j, ops::concat::backward(&ctx, &g, &shape, start)));
                        }
                        start += shape[1];
                    }
                }
                Op::Narrow { start, .. } => {
                    let Tape::Nothing = tape else { wrong() };
                    let gi = ops::narrow::backward(&ctx, &g, &in_shape(node.inputs[0]), *start);
                    ins.push((node.inputs[0], gi));
                }
                Op::ChannelShuffle { groups } => {
                    let Tape::Nothing = tape else { wrong() };
                    let gi = ops::channel_shuffle::shuffle(&ctx, &g, *groups, true);
                    ins.push((node.inputs[0], gi));
                }
                // Dropout and stochastic depth pass the gradient through where they did
                // nothing (eval, p = 0), like a flatten.
                Op::StochasticDepth { .. } | Op::Dropout { .. } | Op::Flatten => {
                    let gi = match tape {
                        Tape::Noise { noise } => {
                            ops::stochastic_depth::scale_by(&ctx, &g, &noise.0)
                        }
                        Tape::Dropout { mask } => ops::dropout::backward(&ctx, &g, &mask.0),
                        Tape::Pass => Tensor {
                            buf: Rc::clone(&g.buf),
                            shape: in_shape(node.inputs[0]),
                        },
                        _ => wrong(),
                    };
                    ins.push((node.inputs[0], gi));
                }
                Op::MaxPool2d(_) => {
                    let Tape::MaxPool { x, idx } = tape else {
                        wrong()
                    };
                    let gi = ops::max_pool::backward(&ctx, &x.0.shape, &g, &idx.0);
                    ins.push((node.inputs[0], gi));
                }
                Op::AvgPool2d(p) => {
                    let Tape::Pool { x: Some(x) } = tape else {
                        wrong()
                    };
                    let gi = ops::avg_pool::backward(&ctx, &x.0.shape, &g, p);
                    ins.push((node.inputs[0], gi));
                }
                Op::AdaptiveAvgPool2d { .. } => {
                    let Tape::Pool { .. } = tape else { wrong() };
                    let gi = ops::adaptive_avg_pool::backward(&ctx, &in_shape(node.inputs[0]), &g);
                    ins.push((node.inputs[0], gi));
                }
                Op::Add { .. } => {
                    let Tape::Pass = tape else { wrong() };
                    for &j in &node.inputs {
                        if self.requires_grad[j] {
                            ins.push((j, g.clone()));
                        }
                    }
                }
                Op::WindowAttention(a) => {
                    let Some((x, saved)) = attention_tape(tape) else {
                        wrong()
                    };
                    let w = self.window_weights(i, a);
                    let saved = ops::window_attention::Saved {
                        windows: x,
                        attn: saved,
                    };
                    let index = self.position_index(i);
                    let grads =
                        ops::window_attention::backward(&ctx, &saved, &g, a, &w, &index, need_in);
                    ins.extend(grads.input.map(|t| (node.inputs[0], t)));
                    pgs.extend(grads.params.into_iter().map(|(k, t)| (p0 + k, t)));
                }
                Op::RelPosAttention { dim, head_dim, .. } => {
                    let Some((x, saved)) = attention_tape(tape) else {
                        wrong()
                    };
                    let w = self.attn_weights(p0 + 1);
                    let index = self.position_index(i);
                    let grads = ops::rel_pos_attention::backward(
                        &ctx,
                        &x,
                        &saved,
                        &g,
                        param(0),
                        &w,
                        dim / head_dim,
                        &index,
                        need_in,
                    );
                    ins.extend(grads.input.map(|t| (node.inputs[0], t)));
                    pgs.extend(grads.table.map(|t| (p0, t)));
                    pgs.extend((p0 + 1..).zip(grads.params));
                }
                Op::PatchMerge => {
                    let Tape::Nothing = tape else { wrong() };
                    let gi = ops::patch_merge::backward(&ctx, &g, &in_shape(node.inputs[0]));
                    ins.push((node.inputs[0], gi));
                }
                Op::Partition { p, grid } => {
                    let Tape::Nothing = tape else { wrong() };
                    let xs = in_shape(node.inputs[0]);
                    ins.push((
                        node.inputs[0],
                        ops::partition::backward(&ctx, &g, *p, *grid, &xs),
                    ));
                }
                Op::Departition { p, grid, .. } => {
                    let Tape::Nothing = tape else { wrong() };
                    let xs = in_shape(node.inputs[0]);
                    let gi = ops::departition::backward(&ctx, &g, *p, *grid, &xs);
                    ins.push((node.inputs[0], gi));
                }
                Op::Input => wrong(),
            }
            drop(g);
            drop(t);
            *self
                .op_seconds
                .entry(format!("backward {}", node.op.type_name()))
                .or_default() += t_op.elapsed().as_secs_f64();
            for (j, gi) in ins {
                if !self.requires_grad[j] {
                    continue;
                }
                grads[j] = Some(match grads[j].take() {
                    None => gi,
                    Some(old) => accumulate(&self.tracker, old, gi),
                });
            }
            for (p, gp) in pgs {
                match &self.params[p].grad {
                    None => self.params[p].grad = Some(gp),
                    Some(old) => {
                        old.data_mut()
                            .iter_mut()
                            .zip(gp.data().iter())
                            .for_each(|(a, b)| *a += b);
                    }
                }
            }
        }
    }

    fn optimizer_step(&mut self) {
        let t_op = std::time::Instant::now();
        self.optimizer_step_inner();
        *self.op_seconds.entry("optimizer".into()).or_default() += t_op.elapsed().as_secs_f64();
    }

    fn optimizer_step_inner(&mut self) {
        self.step += 1;
        if self
            .params
            .iter()
            .any(|p| p.grad.is_some() && p.state.is_empty())
            && self.optimizer.moments() > 0
        {
            self.init_state();
        }
        let cfg = self.optimizer.clone();
        let step = self.step;
        let threads = self.threads;
        for p in &mut self.params {
            let Some(g) = &p.grad else { continue };
            let mut states: Vec<Vec<f32>> = p
                .state
                .iter()
                .map(|s| std::mem::take(&mut *s.data_mut()))
                .collect();
            {
                let (mut pv, gv) = (p.value.data_mut(), g.data());
                // Ranges of at least 16K values, one per thread at most.
                let chunk = pv.len().div_ceil(threads).max(1 << 14);
                let mut its: Vec<_> = states.iter_mut().map(|s| s.chunks_mut(chunk)).collect();
                let mut tasks = Vec::new();
                for (pc, gc) in pv.chunks_mut(chunk).zip(gv.chunks(chunk)) {
                    let sc: Vec<&mut [f32]> = its.iter_mut().filter_map(|it| it.next()).collect();
                    tasks.push((pc, gc, sc));
                }
                if tasks.len() == 1 {
                    let (pc, gc, mut sc) = tasks.pop().expect("one range");
                    optim::update_slices(&cfg, step, pc, gc, &mut sc);
                } else {
                    let cfg = &cfg;
                    self.pool.install(|| {
                        tasks.into_par_iter().for_each(|(pc, gc, mut sc)| {
                            optim::update_slices(cfg, step, pc, gc, &mut sc)
                        })
                    });
                }
            }
            for (s, v) in p.state.iter().zip(states) {
                *s.data_mut() = v;
            }
        }
    }

    /// Logits of a batch in eval mode (no tape, BatchNorm on running statistics).
    pub fn predict(&mut self, images: &Tensor) -> Result<Vec<f32>, EngineError> {
        let (logits, _) = self.forward(images, false)?;
        let v = logits.data().clone();
        Ok(v)
    }
}

/// Adds two gradients for the same tensor: in place into one nobody else holds, else
/// into a new buffer.
fn accumulate(tracker: &Rc<Tracker>, old: Tensor, new: Tensor) -> Tensor {
    if old.unique() {
        old.data_mut()
            .iter_mut()
            .zip(new.data().iter())
            .for_each(|(a, b)| *a += b);
        old
    } else if new.unique() {
        new.data_mut()
            .iter_mut()
            .zip(old.data().iter())
            .for_each(|(a, b)| *a += b);
        new
    } else {
        let s = Tensor::zeros(tracker, &old.shape, None);
        s.data_mut()
            .iter_mut()
            .zip(old.data().iter().zip(new.data().iter()))
            .for_each(|(o, (a, b))| *o = a + b);
        s
    }
}
