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

use crate::kernels::{self, adaptive_window, gemm, ConvGeom, Tier};

use crate::layers::{self, Ctx};
use crate::optim::{self, OptimizerConfig};
use crate::rng::Rng;
use crate::tensor::{Buf, Category, CategoryBytes, Peak, Phase, Saved, SavedIdx, Tensor, Tracker};
use crate::transformer::{self, AttnSaved, AttnWeights};

/// A parameter with its gradient and optimizer state.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Option<Tensor>,
    pub state: Vec<Tensor>,
}

/// BatchNorm buffers of one layer.
#[derive(Debug)]
pub struct BnBuffers {
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Rc<Buf<i64>>,
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
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..n)
        .map(|_| ((rng.unit_f64() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// `xavier_uniform_`: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
fn init_xavier(rng: &mut Rng, n: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
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
        if let Some(n) = graph.nodes().iter().find(|n| !n.op.in_engine()) {
            return Err(EngineError(format!(
                "layer `{}`: the CPU engine does not run {} yet (`vramlab memory` plans it for \
                 PyTorch; training it needs PyTorch for now)",
                n.name,
                n.op.type_name()
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
                let data = match spec.init {
                    Init::FanInUniform => init_uniform(&mut rng, n, fan_in),
                    Init::Ones => vec![1.0; n],
                    Init::Zeros => vec![0.0; n],
                    Init::Xavier { fan_in, fan_out } => init_xavier(&mut rng, n, fan_in, fan_out),
                    Init::Normal { std } => init_normal(&mut rng, n, std),
                    Init::Constant(c) => vec![c as f32; n],
                };
                // A parameter used as a value is named by its node alone.
                let name = if let Op::Param { .. } = node.op {
                    node.name.clone()
                } else {
                    format!("{}.{}", node.name, spec.name)
                };
                params.push(Param {
                    name,
                    value: Tensor::from_vec(&tracker, &spec.shape, data, Some(Category::Params)),
                    grad: None,
                    state: Vec::new(),
                });
            }
            // BatchNorm's running statistics (the one layer with buffers the engine runs).
            let stats = match &node.op {
                Op::BatchNorm2d(b) => b.track_running_stats.then_some(b.num_features),
                op => {
                    debug_assert!(op.buffers().is_empty() || !op.in_engine());
                    None
                }
            };
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

    /// What the layer kernels of [`crate::layers`] may use.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            tracker: &self.tracker,
        }
    }

    /// What the transformer kernels of [`crate::transformer`] may use.
    fn tctx(&self) -> transformer::Ctx<'_> {
        transformer::Ctx {
            tracker: &self.tracker,
            pool: &self.pool,
            threads: self.threads,
        }
    }

    /// The instruction-set tier this engine's kernels run.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether convolution `g` runs the direct kernel on this engine's tier.
    fn direct(&self, g: &ConvGeom) -> bool {
        self.tier.direct_tile().is_some() && kernels::direct_shape(g)
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

    fn scratch(&self, len: usize) -> Tensor {
        Tensor::zeros(&self.tracker, &[len], None)
    }

    /// How many chunks a batch is split into for threads.
    pub fn chunks(&self, b: usize) -> usize {
        self.threads.min(b).max(1)
    }

    fn geom(&self, i: usize) -> ConvGeom {
        let node = &self.graph.nodes()[i];
        let Op::Conv2d(c) = &node.op else {
            unreachable!("conv geometry of a conv")
        };
        let xs = &self.graph.shapes[node.inputs[0]];
        let ys = &self.graph.shapes[i];
        ConvGeom {
            cin: c.in_channels,
            h: xs[1],
            w: xs[2],
            cout: c.out_channels,
            kh: c.kernel_size.0,
            kw: c.kernel_size.1,
            sh: c.stride.0,
            sw: c.stride.1,
            ph: c.padding.0,
            pw: c.padding.1,
            dh: c.dilation.0,
            dw: c.dilation.1,
            groups: c.groups,
            ho: ys[1],
            wo: ys[2],
        }
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
            let (out, t) = match &node.op {
                Op::Input => unreachable!("node 0"),
                Op::WindowAttention(_)
                | Op::PatchMerge
                | Op::Partition { .. }
                | Op::Departition { .. }
                | Op::RelPosAttention { .. } => unreachable!("refused by Op::in_engine"),
                Op::Conv2d(c) => {
                    let out = self.conv_forward(i, &xin, p0, c.bias);
                    (
                        out,
                        train.then(|| Tape::Conv {
                            x: Saved::new(&xin),
                        }),
                    )
                }
                Op::Linear(l) => {
                    let out = self.linear_forward(i, &xin, p0, l.bias);
                    (
                        out,
                        train.then(|| Tape::Linear {
                            x: Saved::new(&xin),
                        }),
                    )
                }
                Op::BatchNorm2d(bn) => self.bn_forward(i, &xin, p0, bn, train)?,
                Op::Act { kind, inplace } => {
                    let ctx = self.ctx();
                    // The result is kept where the gradient can be computed from it, else
                    // the input (in place: a copy of it first, as PyTorch does).
                    let from_result = kind.grad_from_result();
                    let copy = (rg && *inplace && !from_result).then(|| layers::clone(&ctx, &xin));
                    let out = layers::act_forward(&ctx, *kind, &xin, *inplace);
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
                    let (out, idx) = self.maxpool_forward(i, &xin, p);
                    let t = rg.then(|| Tape::MaxPool {
                        x: Saved::new(&xin),
                        idx: SavedIdx::new(Rc::clone(&idx)),
                    });
                    drop(idx);
                    (out, t)
                }
                Op::AvgPool2d(p) => {
                    let out = self.avgpool_forward(i, &xin, p);
                    (
                        out,
                        rg.then(|| Tape::Pool {
                            x: Some(Saved::new(&xin)),
                        }),
                    )
                }
                Op::AdaptiveAvgPool2d { output_size } => {
                    let out = self.adaptive_forward(i, &xin);
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
                        (
                            Tensor {
                                buf: Rc::clone(&xin.buf),
                                shape: xin.shape.clone(),
                            },
                            rg.then_some(Tape::Pass),
                        )
                    } else {
                        let mask = Tensor::zeros(&self.tracker, &xin.shape, None);
                        let keep = 1.0 - *p;
                        let scale = if keep > 0.0 { 1.0 / keep } else { 0.0 };
                        mask.data_mut().iter_mut().for_each(|m| {
                            *m = if self.rng.unit_f64() < keep {
                                scale as f32
                            } else {
                                0.0
                            }
                        });
                        let out = if *inplace {
                            xin.data_mut()
                                .iter_mut()
                                .zip(mask.data().iter())
                                .for_each(|(v, m)| *v *= m);
                            Tensor {
                                buf: Rc::clone(&xin.buf),
                                shape: xin.shape.clone(),
                            }
                        } else {
                            let o = Tensor::zeros(&self.tracker, &xin.shape, None);
                            o.data_mut()
                                .iter_mut()
                                .zip(xin.data().iter().zip(mask.data().iter()))
                                .for_each(|(o, (v, m))| *o = v * m);
                            o
                        };
                        let t = rg.then(|| Tape::Dropout {
                            mask: Saved::new(&mask),
                        });
                        (out, t)
                    }
                }
                Op::Param { .. } => {
                    let p = &self.params[p0].value;
                    let out = transformer::param_forward(&self.tctx(), p, &self.out_shape(i, b));
                    (out, train.then_some(Tape::Nothing))
                }
                Op::LayerNorm(l) => {
                    let w = l.elementwise_affine.then(|| &self.params[p0].value);
                    let bias = (l.elementwise_affine && l.bias).then(|| &self.params[p0 + 1].value);
                    let (out, mean, rstd) =
                        transformer::layer_norm_forward(&self.tctx(), &xin, w, bias, l.eps);
                    let t = (train && self.requires_grad[i]).then(|| Tape::Ln {
                        x: Saved::new(&xin),
                        mean: Saved::new(&mean),
                        rstd: Saved::new(&rstd),
                    });
                    (out, t)
                }
                Op::MultiheadAttention { num_heads, .. } => {
                    let w = AttnWeights {
                        w_in: &self.params[p0].value,
                        b_in: &self.params[p0 + 1].value,
                        w_out: &self.params[p0 + 2].value,
                        b_out: &self.params[p0 + 3].value,
                    };
                    let (out, s) =
                        transformer::attention_forward(&self.tctx(), &xin, &w, *num_heads);
                    let t = train.then(|| Tape::Attn {
                        x: Saved::new(&xin),
                        qkv: Saved::new(&s.qkv),
                        probs: Saved::new(&s.probs),
                        heads: Saved::new(&s.heads),
                    });
                    (out, t)
                }
                Op::Select { index } => {
                    let out = transformer::select_forward(&self.tctx(), &xin, *index);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Tokens => {
                    let out = transformer::tokens(&self.tctx(), &xin, &xin.shape, false);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Permute { dims } => {
                    let out = transformer::permute(&self.tctx(), &xin, dims);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::Mul => {
                    let y = vals[node.inputs[1]].clone().expect("inputs run first");
                    let out = layers::mul_forward(&self.ctx(), &xin, &y);
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
                    let out = layers::concat_forward(&self.ctx(), &xs);
                    (
                        out,
                        (train && self.requires_grad[i]).then_some(Tape::Nothing),
                    )
                }
                Op::Narrow { start, len } => {
                    let out = layers::narrow_forward(&self.ctx(), &xin, *start, *len);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::ChannelShuffle { groups } => {
                    let out = layers::shuffle(&self.ctx(), &xin, *groups, false);
                    (out, rg.then_some(Tape::Nothing))
                }
                Op::StochasticDepth { p, row } => {
                    if !train || *p == 0.0 {
                        (
                            Tensor {
                                buf: Rc::clone(&xin.buf),
                                shape: xin.shape.clone(),
                            },
                            rg.then_some(Tape::Pass),
                        )
                    } else {
                        let survive = 1.0 - *p;
                        let n = if *row { b } else { 1 };
                        let noise = Tensor::zeros(&self.tracker, &[n], None);
                        noise.data_mut().iter_mut().for_each(|v| {
                            *v = if survive > 0.0 && self.rng.unit_f64() < survive {
                                (1.0 / survive) as f32
                            } else {
                                0.0
                            }
                        });
                        let out = layers::scale_by(&self.ctx(), &xin, &noise);
                        let t = rg.then(|| Tape::Noise {
                            noise: Saved::new(&noise),
                        });
                        (out, t)
                    }
                }
                Op::Add { inplace } => {
                    let y = vals[node.inputs[1]].clone().expect("inputs run first");
                    let out = if *inplace {
                        xin.data_mut()
                            .iter_mut()
                            .zip(y.data().iter())
                            .for_each(|(a, b)| *a += b);
                        Tensor {
                            buf: Rc::clone(&xin.buf),
                            shape: xin.shape.clone(),
                        }
                    } else {
                        let o = Tensor::zeros(&self.tracker, &xin.shape, None);
                        o.data_mut()
                            .iter_mut()
                            .zip(xin.data().iter().zip(y.data().iter()))
                            .for_each(|(o, (a, b))| *o = a + b);
                        o
                    };
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

    fn conv_forward(&self, i: usize, x: &Tensor, p0: usize, bias: bool) -> Tensor {
        let g = self.geom(i);
        if self.direct(&g) {
            return self.conv_forward_direct(&g, x, p0, bias, self.out_shape(i, x.shape[0]));
        }
        let b = x.shape[0];
        if kernels::is_depthwise(&g) {
            return self.conv_forward_depthwise(&g, x, p0, bias, self.out_shape(i, b));
        }
        let sb = kernels::conv_batch(&g, b.div_ceil(self.chunks(b)));
        if sb > 1 {
            return self.conv_forward_batched(&g, x, p0, bias, self.out_shape(i, b), sb);
        }
        let out = Tensor::zeros(&self.tracker, &self.out_shape(i, b), None);
        let chunks = self.chunks(b);
        let per_chunk = b.div_ceil(chunks);
        let k = g.k();
        let hw = g.hw_out();
        let col = (!g.is_pointwise()).then(|| self.scratch(chunks * k * hw));
        {
            let w = self.params[p0].value.data();
            let bvec = bias.then(|| self.params[p0 + 1].value.data());
            let xd = x.data();
            let mut od = out.data_mut();
            let mut cold = col.as_ref().map(|c| c.data_mut());
            let in_per = g.cin * g.in_plane();
            let out_per = g.cout * hw;
            let cog = g.cout / g.groups;
            let col_chunks: Vec<Option<&mut [f32]>> = match cold.as_deref_mut() {
                Some(c) => c.chunks_mut(k * hw).map(Some).collect(),
                None => (0..chunks).map(|_| None).collect(),
            };
            let w = &w[..];
            let bvec = bvec.as_deref();
            let (od, xd): (&mut [f32], &[f32]) = (&mut od[..], &xd[..]);
            self.pool.install(|| {
                od.par_chunks_mut(per_chunk * out_per)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(col_chunks.into_par_iter())
                    .for_each(|((o, xc), mut colbuf)| {
                        for (os, xs) in o.chunks_mut(out_per).zip(xc.chunks(in_per)) {
                            for grp in 0..g.groups {
                                let wg = &w[grp * cog * k..(grp + 1) * cog * k];
                                let og = &mut os[grp * cog * hw..(grp + 1) * cog * hw];
                                let col = kernels::columns(xs, &g, grp, colbuf.as_deref_mut());
                                gemm(
                                    cog,
                                    k,
                                    hw,
                                    wg,
                                    (k as isize, 1),
                                    col,
                                    (hw as isize, 1),
                                    og,
                                    (hw as isize, 1),
                                    0.0,
                                );
                            }
                            if let Some(bv) = bvec {
                                for (co, plane) in os.chunks_mut(hw).enumerate() {
                                    plane.iter_mut().for_each(|v| *v += bv[co]);
                                }
                            }
                        }
                    });
            });
        }
        drop(col);
        out
    }

    /// A convolution whose samples have few output positions: the column matrices of
    /// up to `sb` samples side by side, one matrix product per group of samples (the
    /// weights packed once per group, not once per sample), the product then copied to
    /// the samples' planes (straight into them where a sample has one position).
    fn conv_forward_batched(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        p0: usize,
        bias: bool,
        shape: Vec<usize>,
        sb: usize,
    ) -> Tensor {
        let b = x.shape[0];
        let out = Tensor::zeros(&self.tracker, &shape, None);
        let chunks = self.chunks(b);
        let per_chunk = b.div_ceil(chunks);
        let (k, hw, cout) = (g.k(), g.hw_out(), g.cout);
        let ld = sb * hw;
        let col = self.scratch(chunks * k * ld);
        let osc = (hw > 1).then(|| self.scratch(chunks * cout * ld));
        {
            let w = self.params[p0].value.data();
            let bvec = bias.then(|| self.params[p0 + 1].value.data().clone());
            let (xd, mut od, mut cold) = (x.data(), out.data_mut(), col.data_mut());
            let mut oscd = osc.as_ref().map(|t| t.data_mut());
            let osc_chunks: Vec<Option<&mut [f32]>> = match oscd.as_deref_mut() {
                Some(o) => o.chunks_mut(cout * ld).map(Some).collect(),
                None => (0..chunks).map(|_| None).collect(),
            };
            let (w, xd, od, cold): (&[f32], &[f32], &mut [f32], &mut [f32]) =
                (&w[..], &xd[..], &mut od[..], &mut cold[..]);
            let (in_per, out_per) = (g.cin * g.in_plane(), cout * hw);
            let (g, bvec) = (*g, bvec.as_deref());
            self.pool.install(|| {
                od.par_chunks_mut(per_chunk * out_per)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(cold.par_chunks_mut(k * ld))
                    .zip(osc_chunks.into_par_iter())
                    .for_each(|(((o, xc), cb), mut oc)| {
                        for (os, xs) in o.chunks_mut(sb * out_per).zip(xc.chunks(sb * in_per)) {
                            let n = xs.len() / in_per;
                            let ldn = n * hw;
                            for (s, x1) in xs.chunks(in_per).enumerate() {
                                kernels::im2col_ld(x1, &g, 0, &mut cb[s * hw..], ldn);
                            }
                            match oc.as_deref_mut() {
                                // One position per sample: C[co][s] is out[s][co].
                                None => gemm(
                                    cout,
                                    k,
                                    n,
                                    w,
                                    (k as isize, 1),
                                    cb,
                                    (ldn as isize, 1),
                                    os,
                                    (1, cout as isize),
                                    0.0,
                                ),
                                Some(oc) => {
                                    gemm(
                                        cout,
                                        k,
                                        ldn,
                                        w,
                                        (k as isize, 1),
                                        cb,
                                        (ldn as isize, 1),
                                        oc,
                                        (ldn as isize, 1),
                                        0.0,
                                    );
                                    for (s, o1) in os.chunks_mut(out_per).enumerate() {
                                        for (co, plane) in o1.chunks_mut(hw).enumerate() {
                                            let at = co * ldn + s * hw;
                                            plane.copy_from_slice(&oc[at..at + hw]);
                                        }
                                    }
                                }
                            }
                            if let Some(bv) = bvec {
                                for o1 in os.chunks_mut(out_per) {
                                    for (co, plane) in o1.chunks_mut(hw).enumerate() {
                                        plane.iter_mut().for_each(|v| *v += bv[co]);
                                    }
                                }
                            }
                        }
                    });
            });
        }
        drop(col);
        drop(osc);
        out
    }

    /// The gradient tensors a convolution's backward fills, made in the order every
    /// variant makes them (input, weight, bias: the native profile counts that order),
    /// and how its batch splits into chunks.
    fn conv_grads(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        p0: usize,
        bias: bool,
        need_in: bool,
    ) -> ConvGrads {
        let gi = need_in.then(|| Tensor::zeros(&self.tracker, &x.shape, None));
        let wshape = self.params[p0].value.shape.clone();
        let wsize: usize = wshape.iter().product();
        let gw = Tensor::zeros(&self.tracker, &wshape, Some(Category::Grads));
        let gb = bias.then(|| Tensor::zeros(&self.tracker, &[g.cout], Some(Category::Grads)));
        let chunks = self.chunks(x.shape[0]);
        let per_chunk = x.shape[0].div_ceil(chunks);
        ConvGrads {
            gi,
            gw,
            gb,
            wsize,
            chunks,
            per_chunk,
        }
    }

    /// The weight (and bias, and with `dx_here` input) gradients of a convolution whose
    /// samples have few output positions, `sb` samples per matrix product (see
    /// [`Engine::conv_forward_batched`]): the output gradients of a group of samples
    /// gathered as one `[cout x n*HoWo]` matrix (read in place where a sample has one
    /// position).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn conv_backward_batched(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        gout: &Tensor,
        p0: usize,
        bias: bool,
        need_in: bool,
        dx_here: bool,
        sb: usize,
    ) -> (Option<Tensor>, Tensor, Option<Tensor>) {
        let ConvGrads {
            gi,
            gw,
            gb,
            wsize,
            chunks,
            per_chunk,
        } = self.conv_grads(g, x, p0, bias, need_in);
        let (k, hw, cout) = (g.k(), g.hw_out(), g.cout);
        let ld = sb * hw;
        let col = self.scratch(chunks * k * ld);
        let partial = self.scratch(chunks * (wsize + cout));
        let gsc = (hw > 1).then(|| self.scratch(chunks * cout * ld));
        {
            let w = self.params[p0].value.data();
            let (xd, gd) = (x.data(), gout.data());
            let mut gid = gi.as_ref().filter(|_| dx_here).map(|t| t.data_mut());
            let (mut cold, mut pd) = (col.data_mut(), partial.data_mut());
            let mut gscd = gsc.as_ref().map(|t| t.data_mut());
            let (in_per, out_per) = (g.cin * g.in_plane(), cout * hw);
            let gi_chunks: Vec<Option<&mut [f32]>> = match gid.as_deref_mut() {
                Some(d) => d.chunks_mut(per_chunk * in_per).map(Some).collect(),
                None => (0..chunks).map(|_| None).collect(),
            };
            let gsc_chunks: Vec<Option<&mut [f32]>> = match gscd.as_deref_mut() {
                Some(o) => o.chunks_mut(cout * ld).map(Some).collect(),
                None => (0..chunks).map(|_| None).collect(),
            };
            let (w, xd, gd, cold, pds): (&[f32], &[f32], &[f32], &mut [f32], &mut [f32]) =
                (&w[..], &xd[..], &gd[..], &mut cold[..], &mut pd[..]);
            let g = *g;
            self.pool.install(|| {
                pds.par_chunks_mut(wsize + cout)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(gd.par_chunks(per_chunk * out_per))
                    .zip(cold.par_chunks_mut(k * ld))
                    .zip(gsc_chunks.into_par_iter().zip(gi_chunks.into_par_iter()))
                    .for_each(|((((part, xc), gc), cb), (mut gs_buf, mut gic))| {
                        let (pw, pb) = part.split_at_mut(wsize);
                        let groups = xc.chunks(sb * in_per).zip(gc.chunks(sb * out_per));
                        for (t, (xs, gs)) in groups.enumerate() {
                            let n = xs.len() / in_per;
                            let ldn = n * hw;
                            for g1 in gs.chunks(out_per) {
                                for (co, plane) in g1.chunks(hw).enumerate() {
                                    pb[co] += plane.iter().sum::<f32>();
                                }
                            }
                            for (s, x1) in xs.chunks(in_per).enumerate() {
                                kernels::im2col_ld(x1, &g, 0, &mut cb[s * hw..], ldn);
                            }
                            // dY of the group as [cout x n*hw].
                            let (dy, dys): (&[f32], (isize, isize)) = match gs_buf.as_deref_mut() {
                                None => (gs, (1, cout as isize)),
                                Some(buf) => {
                                    for (s, g1) in gs.chunks(out_per).enumerate() {
                                        for (co, plane) in g1.chunks(hw).enumerate() {
                                            let at = co * ldn + s * hw;
                                            buf[at..at + hw].copy_from_slice(plane);
                                        }
                                    }
                                    (&buf[..cout * ldn], (ldn as isize, 1))
                                }
                            };
                            // dW += dY [cout x n*hw] * col^T [n*hw x k]
                            gemm(
                                cout,
                                ldn,
                                k,
                                dy,
                                dys,
                                cb,
                                (1, ldn as isize),
                                pw,
                                (k as isize, 1),
                                1.0,
                            );
                            if let Some(gis) = gic.as_deref_mut() {
                                // col = W^T [k x cout] * dY, then back to each image.
                                gemm(
                                    k,
                                    cout,
                                    ldn,
                                    w,
                                    (1, k as isize),
                                    dy,
                                    dys,
                                    cb,
                                    (ldn as isize, 1),
                                    0.0,
                                );
                                let dx = &mut gis[t * sb * in_per..];
                                for (s, dx1) in dx.chunks_mut(in_per).take(n).enumerate() {
                                    kernels::col2im_add_ld(&cb[s * hw..], &g, 0, dx1, ldn);
                                }
                            }
                        }
                    });
            });
            let mut gwd = gw.data_mut();
            for part in pd.chunks(wsize + cout) {
                gwd.iter_mut()
                    .zip(&part[..wsize])
                    .for_each(|(a, b)| *a += b);
            }
            if let Some(gb) = &gb {
                let mut gbd = gb.data_mut();
                for part in pd.chunks(wsize + cout) {
                    gbd.iter_mut()
                        .zip(&part[wsize..])
                        .for_each(|(a, b)| *a += b);
                }
            }
        }
        drop(col);
        drop(partial);
        drop(gsc);
        (gi, gw, gb)
    }

    /// The gradients of a direct-shaped convolution on a tier with a direct weight
    /// gradient: each sample padded as in the forward pass, the weight gradient summed
    /// straight from it (no im2col, no matrix packing), then the input gradient (if
    /// needed) as a direct convolution.
    #[allow(clippy::type_complexity)]
    fn conv_backward_direct(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        gout: &Tensor,
        p0: usize,
        bias: bool,
        need_in: bool,
    ) -> (Option<Tensor>, Tensor, Option<Tensor>) {
        let ConvGrads {
            gi,
            gw,
            gb,
            wsize,
            chunks,
            per_chunk,
        } = self.conv_grads(g, x, p0, bias, need_in);
        let (hp, wp) = (g.h + 2 * g.ph, kernels::direct_row(g.wo, g.kw));
        let xpad = self.scratch(chunks * g.cin * hp * wp);
        let partial = self.scratch(chunks * (wsize + g.cout));
        {
            let (xd, gd) = (x.data(), gout.data());
            let (mut xpd, mut pd) = (xpad.data_mut(), partial.data_mut());
            let (in_per, out_per, pad_per, hw) = (
                g.cin * g.in_plane(),
                g.cout * g.hw_out(),
                g.cin * hp * wp,
                g.hw_out(),
            );
            let (xd, gd, xpd, pds): (&[f32], &[f32], &mut [f32], &mut [f32]) =
                (&xd[..], &gd[..], &mut xpd[..], &mut pd[..]);
            let (g, tier) = (*g, self.tier);
            self.pool.install(|| {
                pds.par_chunks_mut(wsize + g.cout)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(gd.par_chunks(per_chunk * out_per))
                    .zip(xpd.par_chunks_mut(pad_per))
                    .for_each(|(((part, xc), gc), xp)| {
                        let (pw, pb) = part.split_at_mut(wsize);
                        for (xs, gs) in xc.chunks(in_per).zip(gc.chunks(out_per)) {
                            for (co, plane) in gs.chunks(hw).enumerate() {
                                pb[co] += plane.iter().sum::<f32>();
                            }
                            kernels::pad_planes(xs, g.cin, g.h, g.w, g.ph, g.pw, hp, wp, xp);
                            kernels::conv_wgrad_direct(
                                tier, xp, g.cin, hp, wp, gs, g.cout, g.ho, g.wo, g.kh, g.kw, pw,
                            );
                        }
                    });
            });
            let mut gwd = gw.data_mut();
            for part in pd.chunks(wsize + g.cout) {
                gwd.iter_mut()
                    .zip(&part[..wsize])
                    .for_each(|(a, b)| *a += b);
            }
            if let Some(gb) = &gb {
                let mut gbd = gb.data_mut();
                for part in pd.chunks(wsize + g.cout) {
                    gbd.iter_mut()
                        .zip(&part[wsize..])
                        .for_each(|(a, b)| *a += b);
                }
            }
        }
        drop(xpad);
        drop(partial);
        if let Some(gi) = &gi {
            self.conv_input_grad_direct(g, gout, p0, gi);
        }
        (gi, gw, gb)
    }

    /// A depthwise convolution: plane by plane, no im2col, no scratch.
    fn conv_forward_depthwise(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        p0: usize,
        bias: bool,
        shape: Vec<usize>,
    ) -> Tensor {
        let b = x.shape[0];
        let out = Tensor::zeros(&self.tracker, &shape, None);
        let chunks = self.chunks(b);
        let per_chunk = b.div_ceil(chunks);
        let per_scr = kernels::depthwise_scratch(g, false);
        let scr = self.scratch(chunks * per_scr);
        {
            let w = self.params[p0].value.data();
            let bvec = bias.then(|| self.params[p0 + 1].value.data().clone());
            let (xd, mut od, mut sd) = (x.data(), out.data_mut(), scr.data_mut());
            let (w, xd, od, sd): (&[f32], &[f32], &mut [f32], &mut [f32]) =
                (&w[..], &xd[..], &mut od[..], &mut sd[..]);
            let (in_per, out_per, hw) = (g.cin * g.in_plane(), g.cout * g.hw_out(), g.hw_out());
            let (g, tier, bvec) = (*g, self.tier, bvec.as_deref());
            self.pool.install(|| {
                od.par_chunks_mut(per_chunk * out_per)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(sd.par_chunks_mut(per_scr))
                    .for_each(|((o, xc), sc)| {
                        for (os, xs) in o.chunks_mut(out_per).zip(xc.chunks(in_per)) {
                            kernels::depthwise_forward(tier, xs, w, &g, sc, os);
                            if let Some(bv) = bvec {
                                for (co, plane) in os.chunks_mut(hw).enumerate() {
                                    plane.iter_mut().for_each(|v| *v += bv[co]);
                                }
                            }
                        }
                    });
            });
        }
        drop(scr);
        out
    }

    /// The gradients of a depthwise convolution, plane by plane; the weight gradient
    /// summed per chunk of samples in the partials scratch.
    #[allow(clippy::type_complexity)]
    fn conv_backward_depthwise(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        gout: &Tensor,
        p0: usize,
        bias: bool,
        need_in: bool,
    ) -> (Option<Tensor>, Tensor, Option<Tensor>) {
        let ConvGrads {
            gi,
            gw,
            gb,
            wsize,
            chunks,
            per_chunk,
        } = self.conv_grads(g, x, p0, bias, need_in);
        let partial = self.scratch(chunks * (wsize + g.cout));
        let per_scr = kernels::depthwise_scratch(g, true);
        let scr = self.scratch(chunks * per_scr);
        {
            let w = self.params[p0].value.data();
            let (xd, gd) = (x.data(), gout.data());
            let mut gid = gi.as_ref().map(|t| t.data_mut());
            let mut pd = partial.data_mut();
            let mut sdg = scr.data_mut();
            let sd: &mut [f32] = &mut sdg[..];
            let (in_per, out_per, hw) = (g.cin * g.in_plane(), g.cout * g.hw_out(), g.hw_out());
            let gi_chunks: Vec<Option<&mut [f32]>> = match gid.as_deref_mut() {
                Some(d) => d.chunks_mut(per_chunk * in_per).map(Some).collect(),
                None => (0..chunks).map(|_| None).collect(),
            };
            let (w, xd, gd, pds): (&[f32], &[f32], &[f32], &mut [f32]) =
                (&w[..], &xd[..], &gd[..], &mut pd[..]);
            let (g, tier) = (*g, self.tier);
            self.pool.install(|| {
                pds.par_chunks_mut(wsize + g.cout)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(gd.par_chunks(per_chunk * out_per))
                    .zip(gi_chunks.into_par_iter().zip(sd.par_chunks_mut(per_scr)))
                    .for_each(|(((part, xc), gc), (mut gic, sc))| {
                        let (pw, pb) = part.split_at_mut(wsize);
                        for (s, (xs, gs)) in xc.chunks(in_per).zip(gc.chunks(out_per)).enumerate() {
                            for (co, plane) in gs.chunks(hw).enumerate() {
                                pb[co] += plane.iter().sum::<f32>();
                            }
                            let dx = gic
                                .as_deref_mut()
                                .map(|d| &mut d[s * in_per..(s + 1) * in_per]);
                            kernels::depthwise_backward(tier, xs, w, gs, &g, sc, pw, dx);
                        }
                    });
            });
            let mut gwd = gw.data_mut();
            for part in pd.chunks(wsize + g.cout) {
                gwd.iter_mut()
                    .zip(&part[..wsize])
                    .for_each(|(a, b)| *a += b);
            }
            if let Some(gb) = &gb {
                let mut gbd = gb.data_mut();
                for part in pd.chunks(wsize + g.cout) {
                    gbd.iter_mut()
                        .zip(&part[wsize..])
                        .for_each(|(a, b)| *a += b);
                }
            }
        }
        drop(partial);
        drop(scr);
        (gi, gw, gb)
    }

    /// dX of a stride-1 convolution as a direct convolution: the output gradient padded
    /// by `k - 1 - p` on each side, with the weights transposed and flipped.
    fn conv_input_grad_direct(&self, g: &ConvGeom, gout: &Tensor, p0: usize, gi: &Tensor) {
        let b = gout.shape[0];
        let chunks = self.chunks(b);
        let per_chunk = b.div_ceil(chunks);
        let (qh, qw) = (g.kh - 1 - g.ph, g.kw - 1 - g.pw);
        let (hq, wq) = (g.ho + 2 * qh, kernels::direct_row(g.w, g.kw));
        let wf = self.scratch(kernels::direct_weight_len(
            self.tier, g.cin, g.cout, g.kh, g.kw,
        ));
        let gpad = self.scratch(chunks * g.cout * hq * wq);
        {
            kernels::direct_weights(
                self.tier,
                &self.params[p0].value.data(),
                g.cout,
                g.cin,
                g.kh,
                g.kw,
                true,
                &mut wf.data_mut(),
            );
            let (wfd, gd) = (wf.data(), gout.data());
            let (mut gid, mut gpd) = (gi.data_mut(), gpad.data_mut());
            let (wfd, gd, gid, gpd): (&[f32], &[f32], &mut [f32], &mut [f32]) =
                (&wfd[..], &gd[..], &mut gid[..], &mut gpd[..]);
            let (in_per, out_per, pad_per) =
                (g.cin * g.in_plane(), g.cout * g.hw_out(), g.cout * hq * wq);
            let (g, tier) = (*g, self.tier);
            self.pool.install(|| {
                gid.par_chunks_mut(per_chunk * in_per)
                    .zip(gd.par_chunks(per_chunk * out_per))
                    .zip(gpd.par_chunks_mut(pad_per))
                    .for_each(|((dx, gc), gp)| {
                        for (dxs, gs) in dx.chunks_mut(in_per).zip(gc.chunks(out_per)) {
                            kernels::pad_planes(gs, g.cout, g.ho, g.wo, qh, qw, hq, wq, gp);
                            kernels::conv_direct(
                                tier, gp, g.cout, hq, wq, wfd, g.cin, g.kh, g.kw, dxs, g.h, g.w,
                            );
                        }
                    });
            });
        }
    }

    /// The direct convolution: blocked weights, then one zero-padded input per chunk.
    fn conv_forward_direct(
        &self,
        g: &ConvGeom,
        x: &Tensor,
        p0: usize,
        bias: bool,
        shape: Vec<usize>,
    ) -> Tensor {
        let b = x.shape[0];
        let out = Tensor::zeros(&self.tracker, &shape, None);
        let chunks = self.chunks(b);
        let per_chunk = b.div_ceil(chunks);
        let (hp, wp) = (g.h + 2 * g.ph, kernels::direct_row(g.wo, g.kw));
        let wb = self.scratch(kernels::direct_weight_len(
            self.tier, g.cout, g.cin, g.kh, g.kw,
        ));
        let xpad = self.scratch(chunks * g.cin * hp * wp);
        {
            kernels::direct_weights(
                self.tier,
                &self.params[p0].value.data(),
                g.cout,
                g.cin,
                g.kh,
                g.kw,
                false,
                &mut wb.data_mut(),
            );
            let bvec = bias.then(|| self.params[p0 + 1].value.data().clone());
            let (wbd, xd) = (wb.data(), x.data());
            let (mut od, mut xpd) = (out.data_mut(), xpad.data_mut());
            let (wbd, xd, od, xpd): (&[f32], &[f32], &mut [f32], &mut [f32]) =
                (&wbd[..], &xd[..], &mut od[..], &mut xpd[..]);
            let (in_per, out_per, pad_per, hw) = (
                g.cin * g.in_plane(),
                g.cout * g.hw_out(),
                g.cin * hp * wp,
                g.hw_out(),
            );
            let (g, tier) = (*g, self.tier);
            self.pool.install(|| {
                od.par_chunks_mut(per_chunk * out_per)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(xpd.par_chunks_mut(pad_per))
                    .for_each(|((o, xc), xp)| {
                        for (os, xs) in o.chunks_mut(out_per).zip(xc.chunks(in_per)) {
                            kernels::pad_planes(xs, g.cin, g.h, g.w, g.ph, g.pw, hp, wp, xp);
                            kernels::conv_direct(
                                tier, xp, g.cin, hp, wp, wbd, g.cout, g.kh, g.kw, os, g.ho, g.wo,
                            );
                            if let Some(bv) = &bvec {
                                for (co, plane) in os.chunks_mut(hw).enumerate() {
                                    plane.iter_mut().for_each(|v| *v += bv[co]);
                                }
                            }
                        }
                    });
            });
        }
        drop(wb);
        drop(xpad);
        out
    }

    fn linear_forward(&self, i: usize, x: &Tensor, p0: usize, bias: bool) -> Tensor {
        // Linear acts on the last dimension: every other dimension is a row.
        let inf = *x.shape.last().expect("an input dimension");
        let shape = self.out_shape(i, x.shape[0]);
        let outf = *shape.last().expect("an output dimension");
        let out = Tensor::zeros(&self.tracker, &shape, None);
        let b = x.numel() / inf;
        {
            let w = self.params[p0].value.data();
            let xd = x.data();
            let mut od = out.data_mut();
            let rows = b.div_ceil(self.chunks(b));
            let w = &w[..];
            let (ods, xd): (&mut [f32], &[f32]) = (&mut od[..], &xd[..]);
            self.pool.install(|| {
                ods.par_chunks_mut(rows * outf)
                    .zip(xd.par_chunks(rows * inf))
                    .for_each(|(o, xc)| {
                        let m = xc.len() / inf;
                        gemm(
                            m,
                            inf,
                            outf,
                            xc,
                            (inf as isize, 1),
                            w,
                            (1, inf as isize),
                            o,
                            (outf as isize, 1),
                            0.0,
                        );
                    });
            });
            if bias {
                let bv = self.params[p0 + 1].value.data();
                for row in od.chunks_mut(outf) {
                    row.iter_mut().zip(bv.iter()).for_each(|(o, b)| *o += b);
                }
            }
        }
        out
    }

    fn bn_forward(
        &mut self,
        i: usize,
        x: &Tensor,
        p0: usize,
        bn: &vramlab_graph::BatchNorm2d,
        train: bool,
    ) -> Result<(Tensor, Option<Tape>), EngineError> {
        let (b, c) = (x.shape[0], x.shape[1]);
        let plane: usize = x.shape[2..].iter().product();
        let out = Tensor::zeros(&self.tracker, &x.shape, None);
        let (gamma, beta): (Vec<f32>, Vec<f32>) = if bn.affine {
            (
                self.params[p0].value.data().clone(),
                self.params[p0 + 1].value.data().clone(),
            )
        } else {
            (vec![1.0; c], vec![0.0; c])
        };
        if !train {
            let bufs = self.bn[i].as_ref().ok_or_else(|| {
                EngineError(format!(
                    "layer `{}`: BatchNorm without running statistics cannot run in eval mode here",
                    self.graph.nodes()[i].name
                ))
            })?;
            let (rm, rv) = (bufs.running_mean.data(), bufs.running_var.data());
            let xd = x.data();
            let mut od = out.data_mut();
            for s in 0..b {
                for ch in 0..c {
                    let inv = 1.0 / (rv[ch] + bn.eps as f32).sqrt();
                    let base = (s * c + ch) * plane;
                    for k in base..base + plane {
                        od[k] = (xd[k] - rm[ch]) * inv * gamma[ch] + beta[ch];
                    }
                }
            }
            drop((rm, rv, xd, od));
            return Ok((out, None));
        }
        let n = b * plane;
        if n <= 1 {
            return Err(EngineError(format!(
                "layer `{}`: Expected more than 1 value per channel when training, got input size torch.Size([{}])",
                self.graph.nodes()[i].name,
                x.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        let mean = Tensor::zeros(&self.tracker, &[c], None);
        let invstd = Tensor::zeros(&self.tracker, &[c], None);
        {
            let xd = x.data();
            let mut od = out.data_mut();
            let mut md = mean.data_mut();
            let mut id = invstd.data_mut();
            let xs: &[f32] = &xd[..];
            let stats: Vec<(f64, f64)> = self.pool.install(|| {
                (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let mut s = 0.0f64;
                        for smp in 0..b {
                            let base = (smp * c + ch) * plane;
                            s += kernels::sum_f64(&xs[base..base + plane]);
                        }
                        let m = s / n as f64;
                        let mut q = 0.0f64;
                        for smp in 0..b {
                            let base = (smp * c + ch) * plane;
                            q += kernels::sq_dev_f64(&xs[base..base + plane], m);
                        }
                        (m, q / n as f64)
                    })
                    .collect()
            });
            for (ch, &(m, var)) in stats.iter().enumerate() {
                md[ch] = m as f32;
                id[ch] = (1.0 / (var + bn.eps).sqrt()) as f32;
            }
            {
                let (md, id, gamma, beta): (&[f32], &[f32], &[f32], &[f32]) =
                    (&md[..], &id[..], &gamma[..], &beta[..]);
                let od: &mut [f32] = &mut od[..];
                // One sample's planes per task, on all threads.
                self.pool.install(|| {
                    od.par_chunks_mut(c * plane)
                        .zip(xs.par_chunks(c * plane))
                        .for_each(|(os, xsmp)| {
                            for ch in 0..c {
                                let (m, inv, g, bt) = (md[ch], id[ch], gamma[ch], beta[ch]);
                                let r = ch * plane..(ch + 1) * plane;
                                for (o, &v) in os[r.clone()].iter_mut().zip(&xsmp[r]) {
                                    *o = (v - m) * inv * g + bt;
                                }
                            }
                        });
                });
            }
            if let Some(bufs) = &self.bn[i] {
                let mom = bn.momentum as f32;
                let mut rm = bufs.running_mean.data_mut();
                let mut rv = bufs.running_var.data_mut();
                for (ch, &(m, var)) in stats.iter().enumerate() {
                    rm[ch] = (1.0 - mom) * rm[ch] + mom * m as f32;
                    let unbiased = var * n as f64 / (n as f64 - 1.0);
                    rv[ch] = (1.0 - mom) * rv[ch] + mom * unbiased as f32;
                }
                bufs.num_batches_tracked.borrow_mut()[0] += 1;
            }
        }
        let t = Tape::Bn {
            x: Saved::new(x),
            mean: Saved::new(&mean),
            invstd: Saved::new(&invstd),
        };
        Ok((out, Some(t)))
    }

    fn maxpool_forward(
        &self,
        i: usize,
        x: &Tensor,
        p: &vramlab_graph::Pool2d,
    ) -> (Tensor, Rc<Buf<i64>>) {
        let b = x.shape[0];
        let os = self.out_shape(i, b);
        let (c, h, w, ho, wo) = (x.shape[1], x.shape[2], x.shape[3], os[2], os[3]);
        let out = Tensor::zeros(&self.tracker, &os, None);
        let idx = Buf::<i64>::zeros(&self.tracker, b * c * ho * wo, None);
        {
            let xd = x.data();
            let mut od = out.data_mut();
            let mut id = idx.borrow_mut();
            let (xd, od, id): (&[f32], &mut [f32], &mut [i64]) =
                (&xd[..], &mut od[..], &mut id[..]);
            let simple = p.kernel_size == (2, 2)
                && p.stride == (2, 2)
                && p.padding == (0, 0)
                && p.dilation == (1, 1);
            let (p, tier) = (p.clone(), self.tier);
            // One contiguous run of planes per thread: a task per plane costs more than it does.
            let per = (b * c).div_ceil(self.threads);
            self.pool.install(|| {
                od.par_chunks_mut(per * ho * wo)
                    .zip(id.par_chunks_mut(per * ho * wo))
                    .zip(xd.par_chunks(per * h * w))
                    .for_each(|((ob, ixb), srcb)| {
                        for ((o, ix), src) in ob
                            .chunks_mut(ho * wo)
                            .zip(ixb.chunks_mut(ho * wo))
                            .zip(srcb.chunks(h * w))
                        {
                            if simple {
                                kernels::maxpool2x2_plane(tier, src, w, ho, wo, o, ix);
                                continue;
                            }
                            for oy in 0..ho {
                                for ox in 0..wo {
                                    let mut best = f32::NEG_INFINITY;
                                    let mut at = -1i64;
                                    for ky in 0..p.kernel_size.0 {
                                        let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize
                                            - p.padding.0 as isize;
                                        if iy < 0 || iy as usize >= h {
                                            continue;
                                        }
                                        for kx in 0..p.kernel_size.1 {
                                            let ixx = (ox * p.stride.1 + kx * p.dilation.1)
                                                as isize
                                                - p.padding.1 as isize;
                                            if ixx < 0 || ixx as usize >= w {
                                                continue;
                                            }
                                            let k = iy as usize * w + ixx as usize;
                                            let v = src[k];
                                            if v > best || v.is_nan() || at < 0 {
                                                best = v;
                                                at = k as i64;
                                            }
                                        }
                                    }
                                    o[oy * wo + ox] = best;
                                    ix[oy * wo + ox] = at;
                                }
                            }
                        }
                    });
            });
        }
        (out, idx)
    }

    fn avgpool_forward(&self, i: usize, x: &Tensor, p: &vramlab_graph::Pool2d) -> Tensor {
        let b = x.shape[0];
        let os = self.out_shape(i, b);
        let (c, h, w, ho, wo) = (x.shape[1], x.shape[2], x.shape[3], os[2], os[3]);
        let out = Tensor::zeros(&self.tracker, &os, None);
        {
            let xd = x.data();
            let mut od = out.data_mut();
            for pl in 0..b * c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let (y0, y1, x0, x1, div) = avg_window(p, oy, ox, h, w);
                        let mut s = 0.0;
                        for y in y0..y1 {
                            for xx in x0..x1 {
                                s += xd[pl * h * w + y * w + xx];
                            }
                        }
                        od[pl * ho * wo + oy * wo + ox] = s / div;
                    }
                }
            }
        }
        out
    }

    fn adaptive_forward(&self, i: usize, x: &Tensor) -> Tensor {
        let b = x.shape[0];
        let os = self.out_shape(i, b);
        let (c, h, w, ho, wo) = (x.shape[1], x.shape[2], x.shape[3], os[2], os[3]);
        let out = Tensor::zeros(&self.tracker, &os, None);
        {
            let xd = x.data();
            let mut od = out.data_mut();
            for pl in 0..b * c {
                for oy in 0..ho {
                    let (y0, y1) = adaptive_window(oy, h, ho);
                    for ox in 0..wo {
                        let (x0, x1) = adaptive_window(ox, w, wo);
                        let mut s = 0.0;
                        for y in y0..y1 {
                            for xx in x0..x1 {
                                s += xd[pl * h * w + y * w + xx];
                            }
                        }
                        od[pl * ho * wo + oy * wo + ox] = s / ((y1 - y0) * (x1 - x0)) as f32;
                    }
                }
            }
        }
        out
    }
}

/// The input rows `y0..y1` and columns `x0..x1` that average-pool output (oy, ox)
/// reads, and its divisor (the window with padding, or without it when
/// `count_include_pad` is off): PyTorch's rule, clipped at `input + padding`.
fn avg_window(
    p: &vramlab_graph::Pool2d,
    oy: usize,
    ox: usize,
    h: usize,
    w: usize,
) -> (usize, usize, usize, usize, f32) {
    let ys = (oy * p.stride.0) as isize - p.padding.0 as isize;
    let xs = (ox * p.stride.1) as isize - p.padding.1 as isize;
    let ye = (ys + p.kernel_size.0 as isize).min((h + p.padding.0) as isize);
    let xe = (xs + p.kernel_size.1 as isize).min((w + p.padding.1) as isize);
    let (y0, x0) = (ys.max(0) as usize, xs.max(0) as usize);
    let (y1, x1) = (ye.min(h as isize) as usize, xe.min(w as isize) as usize);
    let div = if p.count_include_pad {
        ((ye - ys) * (xe - xs)) as f32
    } else {
        ((y1 - y0) * (x1 - x0)) as f32
    };
    (y0, y1, x0, x1, div)
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
            match (&node.op, &t) {
                (Op::Conv2d(c), Some(Tape::Conv { x })) => {
                    let (gi, gw, gb) = self.conv_backward(i, &x.0, &g, p0, c.bias, need_in);
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    pgs.push((p0, gw));
                    pgs.extend(gb.map(|t| (p0 + 1, t)));
                }
                (Op::Linear(l), Some(Tape::Linear { x })) => {
                    let (gi, gw, gb) = self.linear_backward(&x.0, &g, p0, l.bias, need_in);
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    pgs.push((p0, gw));
                    pgs.extend(gb.map(|t| (p0 + 1, t)));
                }
                (Op::BatchNorm2d(bn), Some(Tape::Bn { x, mean, invstd })) => {
                    let (gi, gw, gb) =
                        self.bn_backward(&x.0, &mean.0, &invstd.0, &g, p0, bn.affine, need_in);
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    if let (Some(gw), Some(gb)) = (gw, gb) {
                        pgs.push((p0, gw));
                        pgs.push((p0 + 1, gb));
                    }
                }
                (Op::Act { kind, .. }, Some(Tape::Act { v })) => {
                    let gi = layers::act_backward(&self.ctx(), *kind, &g, &v.0);
                    ins.push((node.inputs[0], gi));
                }
                (Op::Param { .. }, Some(Tape::Nothing)) => {
                    let shape = self.params[p0].value.shape.clone();
                    pgs.push((p0, transformer::param_backward(&self.tctx(), &g, &shape)));
                }
                (Op::LayerNorm(l), Some(Tape::Ln { x, mean, rstd })) => {
                    let w = l.elementwise_affine.then(|| &self.params[p0].value);
                    let (gi, gw, gb) = transformer::layer_norm_backward(
                        &self.tctx(),
                        &x.0,
                        &mean.0,
                        &rstd.0,
                        &g,
                        w,
                        l.bias,
                        need_in,
                    );
                    ins.extend(gi.map(|t| (node.inputs[0], t)));
                    pgs.extend(gw.map(|t| (p0, t)));
                    pgs.extend(gb.map(|t| (p0 + 1, t)));
                }
                (
                    Op::MultiheadAttention { num_heads, .. },
                    Some(Tape::Attn {
                        x,
                        qkv,
                        probs,
                        heads,
                    }),
                ) => {
                    let w = AttnWeights {
                        w_in: &self.params[p0].value,
                        b_in: &self.params[p0 + 1].value,
                        w_out: &self.params[p0 + 2].value,
                        b_out: &self.params[p0 + 3].value,
                    };
                    let saved = AttnSaved {
                        qkv: qkv.0.clone(),
                        probs: probs.0.clone(),
                        heads: heads.0.clone(),
                    };
                    let grads = transformer::attention_backward(
                        &self.tctx(),
                        &x.0,
                        &saved,
                        &g,
                        &w,
                        *num_heads,
                        need_in,
                    );
                    ins.extend(grads.input.map(|t| (node.inputs[0], t)));
                    pgs.extend((p0..).zip(grads.params));
                }
                (Op::Select { index }, Some(Tape::Nothing)) => {
                    let shape = self.out_shape(node.inputs[0], g.shape[0]);
                    let gi = transformer::select_backward(&self.tctx(), &g, &shape, *index);
                    ins.push((node.inputs[0], gi));
                }
                (Op::Tokens, Some(Tape::Nothing)) => {
                    let shape = self.out_shape(node.inputs[0], g.shape[0]);
                    let gi = transformer::tokens(&self.tctx(), &g, &shape, true);
                    ins.push((node.inputs[0], gi));
                }
                (Op::Permute { dims }, Some(Tape::Nothing)) => {
                    let gi = transformer::permute(&self.tctx(), &g, &transformer::inverse(dims));
                    ins.push((node.inputs[0], gi));
                }
                (Op::Mul, Some(Tape::Mul { a, b })) => {
                    let ctx = self.ctx();
                    if self.requires_grad[node.inputs[0]] {
                        ins.push((
                            node.inputs[0],
                            layers::mul_backward(&ctx, &g, &a.0.shape, &b.0),
                        ));
                    }
                    if self.requires_grad[node.inputs[1]] {
                        ins.push((
                            node.inputs[1],
                            layers::mul_backward(&ctx, &g, &b.0.shape, &a.0),
                        ));
                    }
                }
                (Op::Concat, Some(Tape::Nothing)) => {
                    let mut start = 0;
                    for &j in &node.inputs {
                        let shape = self.out_shape(j, g.shape[0]);
                        if self.requires_grad[j] {
                            ins.push((j, layers::concat_backward(&self.ctx(), &g, &shape, start)));
                        }
                        start += shape[1];
                    }
                }
                (Op::Narrow { start, .. }, Some(Tape::Nothing)) => {
                    let shape = self.out_shape(node.inputs[0], g.shape[0]);
                    let gi = layers::narrow_backward(&self.ctx(), &g, &shape, *start);
                    ins.push((node.inputs[0], gi));
                }
                (Op::ChannelShuffle { groups }, Some(Tape::Nothing)) => {
                    let gi = layers::shuffle(&self.ctx(), &g, *groups, true);
                    ins.push((node.inputs[0], gi));
                }
                (Op::StochasticDepth { .. }, Some(Tape::Noise { noise })) => {
                    let gi = layers::scale_by(&self.ctx(), &g, &noise.0);
                    ins.push((node.inputs[0], gi));
                }
                (Op::MaxPool2d(_), Some(Tape::MaxPool { x, idx })) => {
                    let gi = Tensor::zeros(&self.tracker, &x.0.shape, None);
                    {
                        let plane_in: usize = x.0.shape[2..].iter().product();
                        let plane_out: usize = g.shape[2..].iter().product();
                        let mut gd = gi.data_mut();
                        let (go, id) = (g.data(), idx.0.borrow());
                        let (gd, go, id): (&mut [f32], &[f32], &[i64]) =
                            (&mut gd[..], &go[..], &id[..]);
                        self.pool.install(|| {
                            gd.par_chunks_mut(plane_in)
                                .zip(go.par_chunks(plane_out).zip(id.par_chunks(plane_out)))
                                .for_each(|(gp, (gop, idp))| {
                                    for (&at, &v) in idp.iter().zip(gop) {
                                        if at >= 0 {
                                            gp[at as usize] += v;
                                        }
                                    }
                                })
                        });
                    }
                    ins.push((node.inputs[0], gi));
                }
                (Op::AvgPool2d(p), Some(Tape::Pool { x: Some(x) })) => {
                    let gi = self.avgpool_backward(&x.0.shape, &g, p);
                    ins.push((node.inputs[0], gi));
                }
                (Op::AdaptiveAvgPool2d { .. }, Some(Tape::Pool { .. })) => {
                    let xs = self.out_shape(node.inputs[0], g.shape[0]);
                    let gi = self.adaptive_backward(&xs, &g);
                    ins.push((node.inputs[0], gi));
                }
                (Op::Dropout { .. }, Some(Tape::Dropout { mask })) => {
                    let gi = Tensor::zeros(&self.tracker, &g.shape, None);
                    gi.data_mut()
                        .iter_mut()
                        .zip(g.data().iter().zip(mask.0.data().iter()))
                        .for_each(|(o, (a, m))| *o = a * m);
                    ins.push((node.inputs[0], gi));
                }
                (
                    Op::Flatten | Op::Dropout { .. } | Op::StochasticDepth { .. },
                    Some(Tape::Pass),
                ) => {
                    let shape = self.out_shape(node.inputs[0], g.shape[0]);
                    ins.push((
                        node.inputs[0],
                        Tensor {
                            buf: Rc::clone(&g.buf),
                            shape,
                        },
                    ));
                }
                (Op::Add { .. }, Some(Tape::Pass)) => {
                    for &j in &node.inputs {
                        if self.requires_grad[j] {
                            ins.push((j, g.clone()));
                        }
                    }
                }
                _ => {}
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

    #[allow(clippy::type_complexity)]
    fn conv_backward(
        &self,
        i: usize,
        x: &Tensor,
        gout: &Tensor,
        p0: usize,
        bias: bool,
        need_in: bool,
    ) -> (Option<Tensor>, Tensor, Option<Tensor>) {
        let g = self.geom(i);
        let b = x.shape[0];
        // The input gradient of a small stride-1 convolution is itself a direct
        // convolution (of the padded output gradient with flipped weights), done below.
        if kernels::is_depthwise(&g) {
            return self.conv_backward_depthwise(&g, x, gout, p0, bias, need_in);
        }
        if self.direct(&g) && kernels::direct_wgrad(self.tier) {
            return self.conv_backward_direct(&g, x, gout, p0, bias, need_in);
        }
        let direct_in = need_in && self.direct(&g);
        let sb = kernels::conv_batch(&g, b.div_ceil(self.chunks(b)));
        if sb > 1 {
            let (gi, gw, gb) =
                self.conv_backward_batched(&g, x, gout, p0, bias, need_in, !direct_in, sb);
            if let (true, Some(gi)) = (direct_in, &gi) {
                self.conv_input_grad_direct(&g, gout, p0, gi);
            }
            return (gi, gw, gb);
        }
        let ConvGrads {
            gi,
            gw,
            gb,
            wsize,
            chunks,
            per_chunk,
        } = self.conv_grads(&g, x, p0, bias, need_in);
        let k = g.k();
        let hw = g.hw_out();
        let col = (!g.is_pointwise()).then(|| self.scratch(chunks * k * hw));
        let partial = self.scratch(chunks * (wsize + g.cout));
        {
            let w = self.params[p0].value.data();
            let xd = x.data();
            let gd = gout.data();
            let mut gid = gi.as_ref().map(|t| t.data_mut());
            let mut cold = col.as_ref().map(|c| c.data_mut());
            let mut pd = partial.data_mut();
            let in_per = g.cin * g.in_plane();
            let out_per = g.cout * hw;
            let cog = g.cout / g.groups;
            let col_chunks: Vec<Option<&mut [f32]>> = match cold.as_deref_mut() {
                Some(c) => c.chunks_mut(k * hw).map(Some).collect(),
                None => (0..chunks).map(|_| None).collect(),
            };
            let gi_chunks: Vec<Option<&mut [f32]>> = match gid.as_deref_mut().filter(|_| !direct_in)
            {
                Some(d) => d.chunks_mut(per_chunk * in_per).map(Some).collect(),
                None => (0..chunks).map(|_| None).collect(),
            };
            let w = &w[..];
            let (pds, xd, gd): (&mut [f32], &[f32], &[f32]) = (&mut pd[..], &xd[..], &gd[..]);
            self.pool.install(|| {
                pds.par_chunks_mut(wsize + g.cout)
                    .zip(xd.par_chunks(per_chunk * in_per))
                    .zip(gd.par_chunks(per_chunk * out_per))
                    .zip(col_chunks.into_par_iter())
                    .zip(gi_chunks.into_par_iter())
                    .for_each(|((((part, xc), gc), mut colbuf), mut gic)| {
                        let (pw, pb) = part.split_at_mut(wsize);
                        for (s, (xs, gs)) in xc.chunks(in_per).zip(gc.chunks(out_per)).enumerate() {
                            for (co, plane) in gs.chunks(hw).enumerate() {
                                pb[co] += plane.iter().sum::<f32>();
                            }
                            for grp in 0..g.groups {
                                let gg = &gs[grp * cog * hw..(grp + 1) * cog * hw];
                                let pwg = &mut pw[grp * cog * k..(grp + 1) * cog * k];
                                let wg = &w[grp * cog * k..(grp + 1) * cog * k];
                                let col = kernels::columns(xs, &g, grp, colbuf.as_deref_mut());
                                // dW_g += dY_g [cog x hw] * col^T [hw x k]
                                gemm(
                                    cog,
                                    hw,
                                    k,
                                    gg,
                                    (hw as isize, 1),
                                    col,
                                    (1, hw as isize),
                                    pwg,
                                    (k as isize, 1),
                                    1.0,
                                );
                                if let Some(gis) = gic.as_deref_mut() {
                                    let dx = &mut gis[s * in_per..(s + 1) * in_per];
                                    // W_g^T [k x cog] * dY_g [cog x hw]: into the column
                                    // scratch (then back to the image), or straight into dX
                                    // for a 1x1 stride-1 convolution.
                                    {
                                        let dst: &mut [f32] = match colbuf.as_deref_mut() {
                                            Some(cb) => cb,
                                            None => &mut dx[grp * k * hw..(grp + 1) * k * hw],
                                        };
                                        gemm(
                                            k,
                                            cog,
                                            hw,
                                            wg,
                                            (1, k as isize),
                                            gg,
                                            (hw as isize, 1),
                                            dst,
                                            (hw as isize, 1),
                                            0.0,
                                        );
                                    }
                                    if let Some(cb) = colbuf.as_deref_mut() {
                                        kernels::col2im_add(cb, &g, grp, dx);
                                    }
                                }
                            }
                        }
                    });
            });
            let mut gwd = gw.data_mut();
            for part in pd.chunks(wsize + g.cout) {
                gwd.iter_mut()
                    .zip(&part[..wsize])
                    .for_each(|(a, b)| *a += b);
            }
            if let Some(gb) = &gb {
                let mut gbd = gb.data_mut();
                for part in pd.chunks(wsize + g.cout) {
                    gbd.iter_mut()
                        .zip(&part[wsize..])
                        .for_each(|(a, b)| *a += b);
                }
            }
        }
        drop(col);
        drop(partial);
        if let (true, Some(gi)) = (direct_in, &gi) {
            self.conv_input_grad_direct(&g, gout, p0, gi);
        }
        (gi, gw, gb)
    }

    #[allow(clippy::type_complexity)]
    fn linear_backward(
        &self,
        x: &Tensor,
        gout: &Tensor,
        p0: usize,
        bias: bool,
        need_in: bool,
    ) -> (Option<Tensor>, Tensor, Option<Tensor>) {
        // Rows are every dimension but the last (tokens, channels-last maps).
        let (inf, outf) = (
            *x.shape.last().expect("an input dimension"),
            *gout.shape.last().expect("an output dimension"),
        );
        let b = x.numel() / inf;
        let gi = need_in.then(|| Tensor::zeros(&self.tracker, &x.shape, None));
        let gw = Tensor::zeros(&self.tracker, &[outf, inf], Some(Category::Grads));
        let gb = bias.then(|| Tensor::zeros(&self.tracker, &[outf], Some(Category::Grads)));
        {
            let w = self.params[p0].value.data();
            let (xd, gd) = (x.data(), gout.data());
            let (w, xd, gd) = (&w[..], &xd[..], &gd[..]);
            let chunks = self.chunks(b);
            let threads = self.threads;
            let mut gid = gi.as_ref().map(|t| t.data_mut());
            let gis: Option<&mut [f32]> = gid.as_deref_mut().map(|v| &mut v[..]);
            let mut gwd = gw.data_mut();
            let gws: &mut [f32] = &mut gwd[..];
            self.pool.install(|| {
                if let Some(gis) = gis {
                    let rows = b.div_ceil(chunks);
                    gis.par_chunks_mut(rows * inf)
                        .zip(gd.par_chunks(rows * outf))
                        .for_each(|(o, gc)| {
                            let m = gc.len() / outf;
                            gemm(
                                m,
                                outf,
                                inf,
                                gc,
                                (outf as isize, 1),
                                w,
                                (inf as isize, 1),
                                o,
                                (inf as isize, 1),
                                0.0,
                            );
                        });
                }
                // dW [out x in] = dY^T [out x B] * X [B x in], split by output rows.
                let rows = outf.div_ceil(threads);
                gws.par_chunks_mut(rows * inf)
                    .enumerate()
                    .for_each(|(ci, o)| {
                        let m = o.len() / inf;
                        let gslice = &gd[ci * rows..];
                        gemm(
                            m,
                            b,
                            inf,
                            gslice,
                            (1, outf as isize),
                            xd,
                            (inf as isize, 1),
                            o,
                            (inf as isize, 1),
                            0.0,
                        );
                    });
            });
            if let Some(gb) = &gb {
                let mut gbd = gb.data_mut();
                for row in gd.chunks(outf) {
                    gbd.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
            }
        }
        (gi, gw, gb)
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn bn_backward(
        &self,
        x: &Tensor,
        mean: &Tensor,
        invstd: &Tensor,
        gout: &Tensor,
        p0: usize,
        affine: bool,
        need_in: bool,
    ) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
        let (b, c) = (x.shape[0], x.shape[1]);
        let plane: usize = x.shape[2..].iter().product();
        let n = (b * plane) as f32;
        let gi = need_in.then(|| Tensor::zeros(&self.tracker, &x.shape, None));
        let gw = affine.then(|| Tensor::zeros(&self.tracker, &[c], Some(Category::Grads)));
        let gb = affine.then(|| Tensor::zeros(&self.tracker, &[c], Some(Category::Grads)));
        let gamma: Vec<f32> = if affine {
            self.params[p0].value.data().clone()
        } else {
            vec![1.0; c]
        };
        let (xg, gg, mg, ig) = (x.data(), gout.data(), mean.data(), invstd.data());
        let (xd, gd, md, id): (&[f32], &[f32], &[f32], &[f32]) =
            (&xg[..], &gg[..], &mg[..], &ig[..]);
        // Per channel on all threads (each channel's sums in the same order as before).
        let sums: Vec<(f32, f32)> = self.pool.install(|| {
            (0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                    for s in 0..b {
                        let r = (s * c + ch) * plane..(s * c + ch + 1) * plane;
                        let (a, bb) = kernels::bn_grad_sums(&gd[r.clone()], &xd[r], md[ch], id[ch]);
                        sg += a;
                        sgx += bb;
                    }
                    (sg as f32, sgx as f32)
                })
                .collect()
        });
        if let (Some(gw), Some(gb)) = (&gw, &gb) {
            let (mut w, mut bb) = (gw.data_mut(), gb.data_mut());
            for (ch, &(sg, sgx)) in sums.iter().enumerate() {
                w[ch] = sgx;
                bb[ch] = sg;
            }
        }
        if let Some(gi) = &gi {
            let mut og = gi.data_mut();
            let o: &mut [f32] = &mut og[..];
            let (sums, gamma) = (&sums[..], &gamma[..]);
            // One sample's planes per task, on all threads.
            self.pool.install(|| {
                o.par_chunks_mut(c * plane)
                    .zip(xd.par_chunks(c * plane).zip(gd.par_chunks(c * plane)))
                    .for_each(|(os, (xs, gs))| {
                        for ch in 0..c {
                            let (sg, sgx) = sums[ch];
                            let scale = gamma[ch] * id[ch] / n;
                            let r = ch * plane..(ch + 1) * plane;
                            for ((o, &xv), &gv) in
                                os[r.clone()].iter_mut().zip(&xs[r.clone()]).zip(&gs[r])
                            {
                                let xhat = (xv - md[ch]) * id[ch];
                                *o = scale * (n * gv - sg - xhat * sgx);
                            }
                        }
                    });
            });
        }
        (gi, gw, gb)
    }

    fn avgpool_backward(&self, xs: &[usize], gout: &Tensor, p: &vramlab_graph::Pool2d) -> Tensor {
        let gi = Tensor::zeros(&self.tracker, xs, None);
        let (c, h, w, ho, wo) = (xs[1], xs[2], xs[3], gout.shape[2], gout.shape[3]);
        {
            let mut gd = gi.data_mut();
            let go = gout.data();
            for pl in 0..xs[0] * c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let (y0, y1, x0, x1, div) = avg_window(p, oy, ox, h, w);
                        let v = go[pl * ho * wo + oy * wo + ox] / div;
                        for y in y0..y1 {
                            for xx in x0..x1 {
                                gd[pl * h * w + y * w + xx] += v;
                            }
                        }
                    }
                }
            }
        }
        gi
    }

    fn adaptive_backward(&self, xs: &[usize], gout: &Tensor) -> Tensor {
        let gi = Tensor::zeros(&self.tracker, xs, None);
        let (c, h, w, ho, wo) = (xs[1], xs[2], xs[3], gout.shape[2], gout.shape[3]);
        {
            let mut gd = gi.data_mut();
            let go = gout.data();
            for pl in 0..xs[0] * c {
                for oy in 0..ho {
                    let (y0, y1) = adaptive_window(oy, h, ho);
                    for ox in 0..wo {
                        let (x0, x1) = adaptive_window(ox, w, wo);
                        let v = go[pl * ho * wo + oy * wo + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                        for y in y0..y1 {
                            for xx in x0..x1 {
                                gd[pl * h * w + y * w + xx] += v;
                            }
                        }
                    }
                }
            }
        }
        gi
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

/// A convolution's gradient tensors and its batch's chunking, from [`Engine::conv_grads`].
struct ConvGrads {
    gi: Option<Tensor>,
    gw: Tensor,
    gb: Option<Tensor>,
    wsize: usize,
    chunks: usize,
    per_chunk: usize,
}
