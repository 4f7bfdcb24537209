//! The `native` profile: vramlab's own CPU engine (`crates/engine`), step by step. The
//! engine keeps for backward what PyTorch keeps; what differs is its schedule: backward
//! in reverse graph order, scratch buffers for convolutions and attention (as the
//! engine's layer files declare them: `vramlab_engine::ops`, read here, never restated),
//! gradients added in
//! place when nobody else holds them, in-place optimizers with no temporaries, a loss
//! that is a number rather than a tensor. The engine samples its peak at every
//! allocation, so this simulation marks a boundary after every allocation too.

use vramlab_graph::{Op, Shaped};

use vramlab_engine::isa::Tier;
use vramlab_engine::ops::conv::{self, ConvGeom};
use vramlab_engine::ops::window_attention::{self, Windows};
use vramlab_engine::ops::{attention, Scratch};

use crate::sim::{Sid, Sim};
use crate::{Category, MemoryReport, Mode, OptimizerKind, Phase, PlanConfig, PlanError, Precision};

const F32: u128 = 4;

/// Width of Swin V2's position bias MLP (`cpb_mlp.0`: `Linear(2, 512)`).
const CPB_HIDDEN: u128 = 512;

struct Native<'a> {
    g: &'a Shaped,
    sim: Sim,
    b: u128,
    requires: Vec<bool>,
    first_param: Vec<usize>,
    grads: Vec<Option<Sid>>,
    /// The instruction-set tier the engine's kernels run (`vramlab_isa::active`, where
    /// the engine asks): which convolution kernel runs, and so its scratch, depends on it.
    tier: Tier,
    /// The batch and the threads, as the engine's kernels see them.
    batch: usize,
    threads: usize,
}

/// What one node keeps for backward (storages), as the engine's tape.
type Tape = Vec<Sid>;

impl Native<'_> {
    fn alloc(&mut self, bytes: u128, cat: Option<Category>, label: &'static str) -> Sid {
        let s = self.sim.alloc(bytes, cat);
        self.sim.boundary(label);
        s
    }

    fn numel(&self, i: usize) -> u128 {
        self.g.numel(i)
    }

    fn save(&mut self, tape: &mut Tape, s: Sid) {
        self.sim.save(s);
        tape.push(s);
    }

    fn release(&mut self, tape: Tape) {
        for s in tape {
            self.sim.unsave(s);
        }
    }

    /// A kernel's scratch as the engine's layer file declares it: each phase's buffers
    /// allocated in order, then freed.
    fn scratch(&mut self, s: &Scratch) {
        for phase in &s.phases {
            let held: Vec<Sid> = phase
                .iter()
                .map(|b| self.alloc(b.floats * F32, None, b.label))
                .collect();
            for h in held {
                self.sim.decref(h);
            }
        }
    }

    /// Allocates the buffers of the first phase of a declaration and returns them, held.
    fn hold(&mut self, s: &Scratch) -> Vec<Sid> {
        let phase = s.phases.first().map_or(&[][..], |p| &p[..]);
        phase
            .iter()
            .map(|b| self.alloc(b.floats * F32, None, b.label))
            .collect()
    }

    /// The engine's attention (`ops::attention::forward`) over `seqs` sequences of `t`
    /// tokens of `e` values in `heads` heads, with a relative position bias (`biased`):
    /// the bias (held while it runs), the packed projections, the probabilities, the
    /// heads' outputs and the output. Returns the output and the three tensors kept for
    /// backward.
    fn attention(
        &mut self,
        seqs: u128,
        t: usize,
        e: usize,
        heads: usize,
        biased: bool,
        cosine: bool,
    ) -> (Sid, [Sid; 3]) {
        let s = attention::forward_scratch(seqs, t, e, heads, self.threads, biased, cosine);
        let bias = self.hold(&s);
        let (t, e, h) = (t as u128, e as u128, heads as u128);
        let qkv = self.alloc(seqs * t * 3 * e * F32, None, "in_proj");
        let probs = self.alloc(seqs * h * t * t * F32, None, "softmax");
        let heads = self.alloc(seqs * t * e * F32, None, "attention");
        let out = self.alloc(seqs * t * e * F32, None, "out_proj");
        for s in bias {
            self.sim.decref(s);
        }
        (out, [qkv, probs, heads])
    }

    /// Swin V2's position bias MLP over its table of `win`: the hidden layer `[L, 512]`,
    /// then the output `[L, heads]` (`window_attention::cpb_mlp` in the engine).
    fn cpb_mlp(&mut self, win: &Windows, heads: usize) -> (Sid, Sid) {
        let rows = win.table_rows() as u128;
        let hidden = self.alloc(rows * CPB_HIDDEN * F32, None, "cpb_mlp");
        let raw = self.alloc(rows * heads as u128 * F32, None, "cpb_mlp");
        (hidden, raw)
    }

    /// Keeps `kept` on the tape in training; drops this step's own references.
    fn keep(&mut self, tape: &mut Tape, kept: [Sid; 3], train: bool) {
        for s in kept {
            if train {
                self.save(tape, s);
            }
            self.sim.decref(s);
        }
    }

    /// The geometry of convolution node `i`.
    fn geom(&self, i: usize, c: &vramlab_graph::Conv2d) -> ConvGeom {
        let x = self.g.nodes()[i].inputs[0];
        ConvGeom::new(c, &self.g.shapes[x], &self.g.shapes[i])
    }

    fn forward(&mut self, image: Sid, train: bool) -> Result<(Sid, Vec<Option<Tape>>), PlanError> {
        let g = self.g;
        let n = g.nodes().len();
        let b = self.b;
        let mut vals: Vec<Option<Sid>> = vec![None; n];
        let mut tapes: Vec<Option<Tape>> = vec![None; n];
        self.sim.incref(image);
        vals[0] = Some(image);
        for i in 1..n {
            let node = &g.nodes()[i];
            self.sim.layer = i;
            // A learnable leaf reads no input.
            let x = match node.inputs.first() {
                Some(&j) => vals[j].expect("inputs first"),
                None => image,
            };
            let rg = train && self.requires[*node.inputs.first().unwrap_or(&i)];
            let out_bytes = b * self.numel(i) * F32;
            let mut tape: Tape = Vec::new();
            let mut recorded = false;
            let out = match &node.op {
                Op::Input => unreachable!("node 0"),
                Op::Conv2d(c) => {
                    let out = self.alloc(out_bytes, None, "conv2d");
                    let geom = self.geom(i, c);
                    let s = conv::forward_scratch(&geom, self.tier, self.batch, self.threads);
                    self.scratch(&s);
                    if train {
                        self.save(&mut tape, x);
                        recorded = true;
                    }
                    out
                }
                Op::Linear(_) => {
                    let out = self.alloc(out_bytes, None, "linear");
                    if train {
                        self.save(&mut tape, x);
                        recorded = true;
                    }
                    out
                }
                Op::BatchNorm2d(bn) => {
                    let out = self.alloc(out_bytes, None, "batch_norm");
                    if train {
                        let spatial: u128 = g.shapes[i][1..].iter().map(|&d| d as u128).product();
                        if b * spatial <= 1 {
                            // Same check and message as the engine, which frees `out` first.
                            self.sim.decref(out);
                            return Err(PlanError::Framework {
                                file: g.graph.source.clone(),
                                layer: node.name.clone(),
                                message: format!(
                                    "Expected more than 1 value per channel when training, got input size torch.Size([{}])",
                                    std::iter::once(b.to_string()).chain(g.shapes[i].iter().map(|d| d.to_string())).collect::<Vec<_>>().join(", ")
                                ),
                            });
                        }
                        let c = bn.num_features as u128 * F32;
                        let mean = self.alloc(c, None, "batch_norm");
                        let invstd = self.alloc(c, None, "batch_norm");
                        self.save(&mut tape, x);
                        self.save(&mut tape, mean);
                        self.save(&mut tape, invstd);
                        self.sim.decref(mean);
                        self.sim.decref(invstd);
                        recorded = true;
                    }
                    out
                }
                Op::Act { kind, inplace } => {
                    // The engine keeps the result where the gradient can be computed
                    // from it, else the input (in place: a clone of it, as PyTorch).
                    let from_result = kind.grad_from_result();
                    let clone = (rg && *inplace && !from_result)
                        .then(|| self.alloc(out_bytes, None, "clone"));
                    let out = if *inplace {
                        self.sim.incref(x);
                        x
                    } else {
                        self.alloc(out_bytes, None, "act")
                    };
                    if rg {
                        let keep = match clone {
                            Some(c) => c,
                            None if from_result => out,
                            None => x,
                        };
                        self.save(&mut tape, keep);
                        recorded = true;
                    }
                    if let Some(c) = clone {
                        self.sim.decref(c);
                    }
                    out
                }
                Op::MaxPool2d(_) => {
                    let out = self.alloc(out_bytes, None, "max_pool2d");
                    let idx = self.alloc(b * self.numel(i) * 8, None, "max_pool2d");
                    if rg {
                        self.save(&mut tape, x);
                        self.save(&mut tape, idx);
                        recorded = true;
                    }
                    self.sim.decref(idx);
                    out
                }
                Op::AvgPool2d(_) | Op::AdaptiveAvgPool2d { .. } => {
                    let out = self.alloc(out_bytes, None, "avg_pool2d");
                    if rg {
                        if !matches!(
                            node.op,
                            Op::AdaptiveAvgPool2d {
                                output_size: (1, 1)
                            }
                        ) {
                            self.save(&mut tape, x);
                        }
                        recorded = true;
                    }
                    out
                }
                Op::Flatten => {
                    self.sim.incref(x);
                    recorded = rg;
                    x
                }
                Op::Dropout { p, inplace } => {
                    if !train || *p == 0.0 {
                        self.sim.incref(x);
                        recorded = rg;
                        x
                    } else {
                        let mask = self.alloc(b * self.numel(i) * F32, None, "dropout");
                        let out = if *inplace {
                            self.sim.incref(x);
                            x
                        } else {
                            self.alloc(out_bytes, None, "dropout")
                        };
                        if rg {
                            self.save(&mut tape, mask);
                            recorded = true;
                        }
                        self.sim.decref(mask);
                        out
                    }
                }
                Op::Add { inplace } => {
                    let out = if *inplace {
                        self.sim.incref(x);
                        x
                    } else {
                        self.alloc(out_bytes, None, "add")
                    };
                    recorded =
                        train && (self.requires[node.inputs[0]] || self.requires[node.inputs[1]]);
                    out
                }
                Op::Param { .. } => {
                    // The parameter copied over the batch.
                    recorded = train;
                    self.alloc(out_bytes, None, "param")
                }
                Op::LayerNorm(_) => {
                    // The output, then the mean and reciprocal std of each row.
                    let rows = b * self.numel(i) / *g.shapes[i].last().expect("a last dim") as u128;
                    let out = self.alloc(out_bytes, None, "layer_norm");
                    let mean = self.alloc(rows * F32, None, "layer_norm");
                    let rstd = self.alloc(rows * F32, None, "layer_norm");
                    if train && self.requires[i] {
                        self.save(&mut tape, x);
                        self.save(&mut tape, mean);
                        self.save(&mut tape, rstd);
                        recorded = true;
                    }
                    self.sim.decref(mean);
                    self.sim.decref(rstd);
                    out
                }
                Op::MultiheadAttention { num_heads, .. } => {
                    let (t, e) = (g.shapes[i][0], g.shapes[i][1]);
                    let (out, kept) = self.attention(b, t, e, *num_heads, false, false);
                    if train {
                        self.save(&mut tape, x);
                        recorded = true;
                    }
                    self.keep(&mut tape, kept, train);
                    out
                }
                Op::RelPosAttention { dim, head_dim, .. } => {
                    // Partitions [G, P, D] as G sequences of each sample.
                    let s = &g.shapes[i];
                    let (out, kept) =
                        self.attention(b * s[0] as u128, s[1], s[2], dim / head_dim, true, false);
                    if train {
                        self.save(&mut tape, x);
                        recorded = true;
                    }
                    self.keep(&mut tape, kept, train);
                    out
                }
                Op::WindowAttention(a) => {
                    // The window tokens (one copy), the mask of shifted windows, the
                    // attention on them, then the map back.
                    let s = &g.shapes[i];
                    let win = Windows::new(a, s[0], s[1], s[2]);
                    let (n, c) = (win.tokens(), s[2]);
                    let groups = b * win.count() as u128;
                    let windows = self.alloc(groups * (n * c) as u128 * F32, None, "windows");
                    let mask = self.hold(&window_attention::forward_scratch(&win));
                    // V2: its MLP's hidden layer and output, then the bias table made of
                    // them (held through the attention).
                    let table = a.v2.then(|| {
                        let (hidden, raw) = self.cpb_mlp(&win, a.heads);
                        let rows = win.table_rows() as u128;
                        let table = self.alloc(rows * a.heads as u128 * F32, None, "cpb_mlp");
                        self.sim.decref(hidden);
                        self.sim.decref(raw);
                        table
                    });
                    let (y, kept) = self.attention(groups, n, c, a.heads, true, a.v2);
                    if let Some(t) = table {
                        self.sim.decref(t);
                    }
                    for m in mask {
                        self.sim.decref(m);
                    }
                    let out = self.alloc(out_bytes, None, "window_reverse");
                    self.sim.decref(y);
                    if train {
                        self.save(&mut tape, windows);
                        recorded = true;
                    }
                    self.sim.decref(windows);
                    self.keep(&mut tape, kept, train);
                    out
                }
                Op::Mul => {
                    let out = self.alloc(out_bytes, None, "mul");
                    if train && self.requires[i] {
                        for &j in &node.inputs {
                            let v = vals[j].expect("inputs first");
                            self.save(&mut tape, v);
                        }
                        recorded = true;
                    }
                    out
                }
                Op::Concat
                | Op::Narrow { .. }
                | Op::ChannelShuffle { .. }
                | Op::Select { .. }
                | Op::Tokens
                | Op::Permute { .. }
                | Op::PatchMerge
                | Op::Partition { .. }
                | Op::Departition { .. } => {
                    recorded = train && self.requires[i];
                    self.alloc(out_bytes, None, "copy")
                }
                Op::StochasticDepth { p, row } => {
                    if !train || *p == 0.0 {
                        self.sim.incref(x);
                        recorded = rg;
                        x
                    } else {
                        let noise = self.alloc(if *row { b } else { 1 } * F32, None, "noise");
                        let out = self.alloc(out_bytes, None, "mul");
                        if rg {
                            self.save(&mut tape, noise);
                            recorded = true;
                        }
                        self.sim.decref(noise);
                        out
                    }
                }
            };
            vals[i] = Some(out);
            tapes[i] = recorded.then_some(tape);
            // An input listed twice (`torch.cat([a, a])`, `a * a`) is released once.
            for (k, &j) in node.inputs.iter().enumerate() {
                if g.consumers[j].last() == Some(&i) && !node.inputs[..k].contains(&j) {
                    let s = vals[j].take().expect("alive");
                    self.sim.decref(s);
                }
            }
        }
        Ok((vals[n - 1].take().expect("last node ran"), tapes))
    }

    /// Adds a gradient for value `j`.
    fn give(&mut self, j: usize, gi: Sid) {
        if !self.requires[j] {
            self.sim.decref(gi);
            return;
        }
        self.grads[j] = Some(match self.grads[j].take() {
            None => gi,
            Some(old) => {
                if self.sim.refs(old) == 1 {
                    self.sim.decref(gi);
                    old
                } else if self.sim.refs(gi) == 1 {
                    self.sim.decref(old);
                    gi
                } else {
                    let bytes = self.sim.bytes(old);
                    let s = self.alloc(bytes, None, "add");
                    self.sim.decref(old);
                    self.sim.decref(gi);
                    s
                }
            }
        });
    }

    fn backward(
        &mut self,
        tapes: &mut [Option<Tape>],
        g_logits: Sid,
        param_grads: &mut [Option<Sid>],
    ) {
        let g = self.g;
        let n = g.nodes().len();
        let b = self.b;
        self.grads = vec![None; n];
        self.grads[n - 1] = Some(g_logits);
        for i in (1..n).rev() {
            self.sim.layer = i;
            let Some(gs) = self.grads[i].take() else {
                if let Some(t) = tapes[i].take() {
                    self.release(t);
                }
                continue;
            };
            let node = &g.nodes()[i];
            let tape = tapes[i].take();
            // A learnable leaf has no input (its `x` is never read).
            let x = node.inputs.first().copied().unwrap_or(0);
            let need_in = node.inputs.first().is_some_and(|&j| self.requires[j]);
            let in_bytes = b * self.numel(x) * F32;
            let p0 = self.first_param[i];
            let mut ins: Vec<(usize, Sid)> = Vec::new();
            let mut pgs: Vec<(usize, Sid)> = Vec::new();
            if tape.is_some() {
                match &node.op {
                    Op::WindowAttention(a) => {
                        // The window tokens' output gradient, the attention's gradients
                        // and scratch, then the input gradient from the windows'.
                        let s = &g.shapes[i];
                        let win = Windows::new(a, s[0], s[1], s[2]);
                        let (n, c) = (win.tokens(), s[2]);
                        let groups = b * win.count() as u128;
                        let tokens = groups * (n * c) as u128 * F32;
                        let gy = self.alloc(tokens, None, "windows");
                        let gw = need_in.then(|| self.alloc(tokens, None, "backward"));
                        let specs = node.op.params();
                        let rows = win.table_rows() as u128;
                        let table_grad = a.v2.then(|| {
                            // V2's table is not a parameter: its gradient is a temporary.
                            self.alloc(rows * a.heads as u128 * F32, None, "backward")
                        });
                        // The attention's own parameters: V1's table, qkv and proj; V2's
                        // logit scale, qkv and proj.
                        for (k, spec) in specs.iter().enumerate().take(5) {
                            let bytes = spec.numel() * F32;
                            pgs.push((
                                p0 + k,
                                self.alloc(bytes, Some(Category::Grads), "backward"),
                            ));
                        }
                        let sc = attention::backward_scratch(
                            groups,
                            n,
                            c,
                            a.heads,
                            self.threads,
                            true,
                            a.v2,
                        );
                        self.scratch(&sc);
                        self.sim.decref(gy);
                        if let Some(dt) = table_grad {
                            // Through V2's MLP: recomputed, cpb_mlp.2's gradient, the hidden
                            // layer's, cpb_mlp.0's weight and bias gradients.
                            let (hidden, raw) = self.cpb_mlp(&win, a.heads);
                            let grad = |k: usize| specs[k].numel() * F32;
                            let g2 = self.alloc(grad(7), Some(Category::Grads), "backward");
                            let dh = self.alloc(rows * CPB_HIDDEN * F32, None, "backward");
                            let g0w = self.alloc(grad(5), Some(Category::Grads), "backward");
                            let g0b = self.alloc(grad(6), Some(Category::Grads), "backward");
                            for t in [dh, hidden, raw, dt] {
                                self.sim.decref(t);
                            }
                            pgs.extend([(p0 + 5, g0w), (p0 + 6, g0b), (p0 + 7, g2)]);
                        }
                        if let Some(gw) = gw {
                            ins.push((x, self.alloc(in_bytes, None, "window_reverse")));
                            self.sim.decref(gw);
                        }
                    }
                    Op::Conv2d(c) => {
                        if need_in {
                            ins.push((x, self.alloc(in_bytes, None, "conv2d_backward")));
                        }
                        let w = node.op.params()[0].numel() * F32;
                        pgs.push((p0, self.alloc(w, Some(Category::Grads), "conv2d_backward")));
                        if c.bias {
                            pgs.push((
                                p0 + 1,
                                self.alloc(
                                    c.out_channels as u128 * F32,
                                    Some(Category::Grads),
                                    "conv2d_backward",
                                ),
                            ));
                        }
                        let geom = self.geom(i, c);
                        let s = conv::backward_scratch(
                            &geom,
                            self.tier,
                            self.batch,
                            self.threads,
                            need_in,
                        );
                        self.scratch(&s);
                    }
                    Op::Linear(_)
                    | Op::BatchNorm2d(_)
                    | Op::LayerNorm(_)
                    | Op::MultiheadAttention { .. }
                    | Op::RelPosAttention { .. }
                    | Op::Param { .. } => {
                        if need_in {
                            ins.push((x, self.alloc(in_bytes, None, "backward")));
                        }
                        for (k, spec) in node.op.params().iter().enumerate() {
                            pgs.push((
                                p0 + k,
                                self.alloc(spec.numel() * F32, Some(Category::Grads), "backward"),
                            ));
                        }
                        // Attention's scratch: sequences of the batch (MultiheadAttention)
                        // or of its partitions (G per sample, with a position bias).
                        let s = &g.shapes[i];
                        let attention = if let Op::MultiheadAttention { num_heads, .. } = node.op {
                            Some((b, s[0], s[1], num_heads, false))
                        } else if let Op::RelPosAttention { dim, head_dim, .. } = node.op {
                            Some((b * s[0] as u128, s[1], s[2], dim / head_dim, true))
                        } else {
                            None
                        };
                        if let Some((seqs, t, e, heads, biased)) = attention {
                            let s = attention::backward_scratch(
                                seqs,
                                t,
                                e,
                                heads,
                                self.threads,
                                biased,
                                false,
                            );
                            self.scratch(&s);
                        }
                    }
                    Op::Act { .. }
                    | Op::PatchMerge
                    | Op::Partition { .. }
                    | Op::Departition { .. }
                    | Op::Select { .. }
                    | Op::Tokens
                    | Op::Permute { .. }
                    | Op::ChannelShuffle { .. }
                    | Op::Narrow { .. }
                    | Op::MaxPool2d(_)
                    | Op::AvgPool2d(_)
                    | Op::AdaptiveAvgPool2d { .. } => {
                        ins.push((x, self.alloc(in_bytes, None, "backward")));
                    }
                    Op::Dropout { p, .. }
                        if *p > 0.0 && !tape.as_ref().is_some_and(|t| t.is_empty()) =>
                    {
                        ins.push((x, self.alloc(in_bytes, None, "backward")));
                    }
                    Op::StochasticDepth { .. } if !tape.as_ref().is_some_and(|t| t.is_empty()) => {
                        ins.push((x, self.alloc(in_bytes, None, "backward")));
                    }
                    Op::Mul | Op::Concat => {
                        for &j in &node.inputs {
                            if self.requires[j] {
                                let bytes = b * self.numel(j) * F32;
                                ins.push((j, self.alloc(bytes, None, "backward")));
                            }
                        }
                    }
                    Op::Flatten | Op::Dropout { .. } | Op::StochasticDepth { .. } => {
                        self.sim.incref(gs);
                        ins.push((x, gs));
                    }
                    Op::Add { .. } => {
                        for &j in &node.inputs {
                            if self.requires[j] {
                                self.sim.incref(gs);
                                ins.push((j, gs));
                            }
                        }
                    }
                    Op::Input => {}
                }
            }
            self.sim.decref(gs);
            if let Some(t) = tape {
                self.release(t);
            }
            for (j, s) in ins {
                self.give(j, s);
            }
            for (p, s) in pgs {
                match param_grads[p] {
                    None => param_grads[p] = Some(s),
                    Some(_) => self.sim.decref(s),
                }
            }
        }
    }
}

pub(crate) fn run(g: &Shaped, cfg: &PlanConfig) -> Result<MemoryReport, PlanError> {
    // The engine trains auxiliary classifiers' models without them (`without_aux`).
    if !g.graph.aux.is_empty() {
        let plain = g
            .graph
            .without_aux()
            .infer()
            .map_err(|e| PlanError::Config(e.to_string()))?;
        return run(&plain, cfg);
    }
    if cfg.batch_size == 0 {
        return Err(PlanError::Config(
            "batch size must be at least 1, got 0".into(),
        ));
    }
    if cfg.precision != Precision::Fp32 || cfg.checkpoint_segments > 1 || cfg.accumulation_steps > 1
    {
        return Err(PlanError::Config(
            "the native profile (vramlab's CPU engine) trains in fp32 without checkpointing or accumulation".into(),
        ));
    }
    if cfg.distributed.is_some() {
        return Err(PlanError::Config(
            "the native profile plans one CPU process; --gpus is for the pytorch-cuda and \
             pytorch-cpu profiles"
                .into(),
        ));
    }
    let b = cfg.batch_size as u128;
    let mut requires = Vec::new();
    let mut first_param = Vec::new();
    let mut nparams = 0;
    for n in g.nodes() {
        first_param.push(nparams);
        let ps = n.op.params();
        nparams += ps.len();
        let inputs_require = n.inputs.iter().any(|&j| requires[j]);
        requires.push(!ps.is_empty() || inputs_require);
    }
    let mut st = Native {
        g,
        sim: Sim::new(1, 0, cfg.record_timeline),
        b,
        requires,
        first_param,
        grads: Vec::new(),
        tier: vramlab_isa::active(),
        batch: usize::try_from(cfg.batch_size).unwrap_or(usize::MAX),
        threads: cfg.threads.max(1),
    };
    let mut param_bytes = Vec::new();
    let mut buffer_bytes = 0;
    for n in g.nodes() {
        for p in n.op.params() {
            st.sim.alloc(p.bytes(), Some(Category::Params));
            param_bytes.push(p.bytes());
        }
        for buf in n.op.buffers() {
            buffer_bytes += buf.bytes();
            st.sim.alloc(buf.bytes(), Some(Category::Buffers));
        }
    }
    let moments = match cfg.optimizer.kind {
        OptimizerKind::Sgd => usize::from(cfg.optimizer.momentum != 0.0),
        OptimizerKind::Adam | OptimizerKind::AdamW => 2 + usize::from(cfg.optimizer.amsgrad),
        OptimizerKind::RmsProp => {
            1 + usize::from(cfg.optimizer.momentum > 0.0) + usize::from(cfg.optimizer.centered)
        }
        OptimizerKind::Adagrad => 1,
    };
    let mut state_made = false;
    let make_state = |sim: &mut Sim| {
        for &bytes in &param_bytes {
            for _ in 0..moments {
                sim.alloc(bytes, Some(Category::OptimizerState));
                sim.boundary("zeros");
            }
        }
    };
    if cfg.mode == Mode::Train && cfg.optimizer.kind == OptimizerKind::Adagrad {
        make_state(&mut st.sim);
        state_made = true;
    }
    let image_bytes = b * g.numel(0) * F32;
    let image = st.sim.alloc(image_bytes, Some(Category::DataBatch));
    let mut batch_bytes = image_bytes;
    if cfg.mode == Mode::Train {
        st.sim.alloc(b * 8, Some(Category::DataBatch));
        batch_bytes += b * 8;
    }
    let names: Vec<String> = g
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .chain(["cross_entropy".to_string(), "optimizer.step".to_string()])
        .collect();
    let (loss_layer, opt_layer) = (g.nodes().len(), g.nodes().len() + 1);
    let mut param_grads: Vec<Option<Sid>> = vec![None; nparams];
    let mut steps = Vec::new();
    let n_steps = if cfg.mode == Mode::Train { 2 } else { 1 };
    let k = g.num_classes() as u128;
    for step in 1..=n_steps {
        st.sim.reset_peak();
        let before = st.sim.live();
        st.sim.phase = Phase::Forward;
        if cfg.mode == Mode::Inference {
            let (out, _) = st.forward(image, false)?;
            st.sim.decref(out);
        } else {
            for pg in param_grads.iter_mut() {
                if let Some(s) = pg.take() {
                    st.sim.decref(s);
                }
            }
            let (logits, mut tapes) = st.forward(image, true)?;
            st.sim.layer = loss_layer;
            let ls = st.alloc(b * k * F32, None, "log_softmax");
            st.sim.save(ls);
            st.sim.decref(ls);
            st.sim.decref(logits);
            st.sim.phase = Phase::Backward;
            let gl = st.alloc(b * k * F32, None, "cross_entropy_backward");
            st.sim.unsave(ls);
            st.backward(&mut tapes, gl, &mut param_grads);
            st.sim.phase = Phase::Optimizer;
            st.sim.layer = opt_layer;
            if !state_made && moments > 0 && param_grads.iter().any(|g| g.is_some()) {
                make_state(&mut st.sim);
                state_made = true;
            }
        }
        let after = st.sim.live();
        steps.push(st.sim.step_report(step, &names, before, after));
    }
    Ok(MemoryReport {
        model: g.graph.name.clone(),
        input_shape: g.graph.input_shape.clone(),
        batch_size: cfg.batch_size,
        accumulation_steps: cfg.accumulation_steps.max(1),
        checkpoint_segments: cfg.checkpoint_segments,
        profile: cfg.profile,
        optimizer: cfg.optimizer.describe(),
        precision: cfg.precision,
        mode: cfg.mode,
        num_params: g.num_params(),
        param_bytes: param_bytes.iter().sum(),
        buffer_bytes,
        batch_bytes,
        context_bytes: 0,
        nccl_bytes: 0,
        peak_bytes: steps.iter().map(|s| s.peak_bytes).max().unwrap_or(0),
        steps,
        device: None,
        timeline: st.sim.take_timeline(&names),
        distributed: None,
    })
}
