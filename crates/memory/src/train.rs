//! One training step as PyTorch runs it: the forward pass records autograd nodes with
//! exactly the tensors `derivatives.yaml` saves; the backward pass replays PyTorch's
//! engine (ready queue ordered by sequence number, gradient buffers, accumulation of
//! two incoming gradients, saved tensors released after each node, `AccumulateGrad`
//! stealing fresh gradients); then the optimizer step (`optim.rs`).

use std::collections::BinaryHeap;

use crate::cudnn::{ConvPass, ConvTensors};
use vramlab_graph::act::Saves;
use vramlab_graph::{Conv2d, Op, Shaped};

use crate::cuda_alloc::{AllocStats, CachingAllocator};
use crate::dist::{self, Distributed};
use crate::optim::{self, ParamSlot};
use crate::sim::{Sid, Sim};
use crate::{
    Category, DeviceOom, DeviceReport, DeviceStep, MemoryReport, Mode, OptimizerImpl,
    OptimizerKind, Phase, PlanConfig, PlanError, Precision, Profile,
};

/// What differs between the framework profiles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub cuda: bool,
    /// PyTorch's `InputBuffer` adds two incoming gradients out of place when a
    /// `TorchDispatchMode` is active (as in the reference measurements on the CPU), and
    /// in place when it holds the only reference otherwise (plain CUDA training).
    pub out_of_place_accumulation: bool,
    pub implementation: OptimizerImpl,
}

/// A forward value: its storage, its autograd node (None: does not require grad) and
/// its element size.
#[derive(Debug, Clone, Copy)]
struct Value {
    sid: Sid,
    grad_fn: Option<usize>,
    elem: u128,
    /// The parameter this value is (ViT's class token, a layer scale): its gradient
    /// goes to `AccumulateGrad`.
    leaf: Option<usize>,
    /// A `[C, H, W]` map stored channels-last (a permuted `[H, W, C]`, as in ConvNeXt):
    /// layouts follow it through convolutions and elementwise ops.
    cl: bool,
}

#[derive(Debug, Clone, Copy)]
enum Edge {
    Node(usize),
    Param(usize),
}

/// How a backward node produces the gradient for one of its edges.
#[derive(Debug, Clone, Copy)]
enum Grad {
    /// A new tensor of this many bytes, made by one of the node's ops.
    Alloc(u128),
    /// The incoming gradient itself (residual add, view).
    Pass,
    /// The incoming gradient reduced to a bias shape by the engine's `sum_to`.
    SumTo(u128),
    /// A new tensor at the output's size (first), summed down to the input's (second)
    /// by the engine's `validate_outputs` (a broadcast input of a multiply).
    AllocSumTo(u128, u128),
    /// A view into the incoming gradient of this many bytes (a slice of a concatenation's
    /// gradient): it keeps the whole incoming gradient alive.
    View(u128),
    /// A parameter's gradient made in another memory layout (a convolution's weight
    /// gradient from a channels-last input): `AccumulateGrad` copies it into the
    /// parameter's layout (`new_empty_strided` + `copy_`) instead of keeping it.
    AllocRelayout(u128),
}

struct BNode {
    seq: u64,
    /// The graph node that recorded it (usize::MAX for the loss).
    node: usize,
    /// Index into the layer names.
    layer: usize,
    saved: Vec<Sid>,
    edges: Vec<(Edge, Grad)>,
    /// The node's aten ops in order, each making the gradients of the listed edges.
    ops: Vec<(&'static str, Vec<usize>)>,
    /// AMP: parameter gradients made in half precision, then cast to fp32 of this size
    /// (and an fp32 input's, first: its cast's ToCopyBackward0 was made last).
    casts: Vec<(usize, u128)>,
    /// The engine's `validate_outputs` casts these edges' gradients to their input's
    /// dtype (a new tensor of this size): a half value that met an fp32 one in an
    /// add or a concatenation under autocast.
    to_dtype: Vec<(usize, u128)>,
    /// A node that takes several gradients as separate inputs (SplitBackward0 of a
    /// `chunk`): later ones are held, not added, until it runs.
    gather: bool,
    held: Vec<Sid>,
}

/// Whether an aten op runs a cuBLAS matmul (and so takes its thread's workspace).
fn uses_cublas(label: &str) -> bool {
    matches!(
        label,
        "aten.mm.default" | "aten.bmm.default" | "aten.addmm.default" | "aten.baddbmm.default"
    )
}

/// A value that is neither a parameter nor a channels-last map.
fn plain(sid: Sid, grad_fn: Option<usize>, elem: u128) -> Value {
    Value {
        leaf: None,
        cl: false,
        sid,
        grad_fn,
        elem,
    }
}

/// The autograd edge to a value that requires grad: the node that made it, or the
/// parameter it is.
fn edge(v: &Value, how: Grad) -> Option<(Edge, Grad)> {
    match (v.leaf, v.grad_fn) {
        (Some(p), _) => Some((Edge::Param(p), how)),
        (None, Some(f)) => Some((Edge::Node(f), how)),
        (None, None) => None,
    }
}

/// Runs the configured steps and reports them.
pub(crate) fn run(g: &Shaped, cfg: &PlanConfig) -> Result<(MemoryReport, Vec<u128>), PlanError> {
    if cfg.batch_size == 0 {
        return Err(PlanError::Config(
            "batch size must be at least 1, got 0".into(),
        ));
    }
    let acc = cfg.accumulation_steps.max(1);
    if !cfg.batch_size.is_multiple_of(acc as u64) {
        return Err(PlanError::Config(format!(
            "batch size {} is not a multiple of --accumulation-steps {}",
            cfg.batch_size, acc
        )));
    }
    if cfg.profile == Profile::Native {
        return Err(PlanError::Config(
            "this report is for the pytorch-cuda and pytorch-cpu profiles".into(),
        ));
    }
    let implementation = cfg
        .optimizer
        .implementation
        .unwrap_or(if cfg.profile.is_cuda() {
            OptimizerImpl::Foreach
        } else {
            OptimizerImpl::ForLoop
        });
    if implementation == OptimizerImpl::Fused && cfg.optimizer.kind == OptimizerKind::RmsProp {
        return Err(PlanError::Config(
            "RMSprop has no fused implementation in PyTorch; use for-loop or foreach".into(),
        ));
    }
    if cfg.optimizer.nesterov && (cfg.optimizer.momentum <= 0.0) {
        return Err(PlanError::Config(
            "--nesterov requires --momentum greater than 0 (as torch.optim.SGD does)".into(),
        ));
    }
    // CPU autocast (bfloat16) is checked against PyTorch's own CPU runs; the other
    // precisions are modelled for CUDA only.
    if !cfg.profile.is_cuda() && !matches!(cfg.precision, Precision::Fp32 | Precision::AmpBf16) {
        return Err(PlanError::Config(format!(
            "--precision {} is modelled for the pytorch-cuda profile only (pytorch-cpu: fp32 or amp-bf16)",
            cfg.precision.name()
        )));
    }
    let rules = Rules {
        cuda: cfg.profile.is_cuda(),
        out_of_place_accumulation: !cfg.profile.is_cuda(),
        implementation,
    };
    let params = g.params();
    if params.is_empty() && cfg.mode == Mode::Train {
        return Err(PlanError::Config(format!(
            "{}the model has no parameters, so there is nothing to train",
            file_prefix(g)
        )));
    }
    let micro = (cfg.batch_size / acc as u64) as u128;
    let half_model = cfg.precision == Precision::Bf16;
    // FSDP2's MixedPrecisionPolicy: the model computes in param_dtype (its gathered
    // parameters, activations, gradients); shards and optimizer state stay fp32.
    let mixed = cfg
        .distributed
        .as_ref()
        .filter(|d| d.mixed_precision())
        .and_then(|d| d.param_dtype_bytes);
    let param_elem: u128 = match mixed {
        Some(b) => b,
        None if half_model => 2,
        None => 4,
    };
    let shard_elem: u128 = if mixed.is_some() { 4 } else { param_elem };
    // NCCL's buffers sit outside PyTorch's allocator, like the context (an estimate).
    let context = if rules.cuda {
        cfg.outside_allocator_bytes()
    } else {
        0
    };
    let mut sim = Sim::new(
        if rules.cuda { 512 } else { 1 },
        context,
        cfg.record_timeline,
    );
    let simulate_allocator = rules.cuda && cfg.simulate_allocator;
    if simulate_allocator {
        sim.attach_allocator(CachingAllocator::new(
            cfg.alloc_conf.clone(),
            cfg.device_limit_bytes,
            cfg.allowed_memory_bytes,
        ));
        if cfg.record_device_trace {
            sim.record_device_trace();
        }
    }

    let mut param_sids = Vec::with_capacity(params.len());
    let dist = match &cfg.distributed {
        Some(d) => Some(DistState::new(g, d, shard_elem, &mut sim)?),
        None => None,
    };
    // CPUOffloadPolicy on a GPU: the shards and what the optimizer keeps are in host
    // memory (0 bytes of the device's).
    let offload = rules.cuda
        && dist
            .as_ref()
            .is_some_and(|d| d.cfg.cpu_offload && d.cfg.world_size() > 1);
    // DeepSpeed's offload_optimizer keeps the model's parameters on the device (ZeRO-3's
    // partitions too); FSDP2's CPUOffloadPolicy moves the shards out.
    let zero = dist.as_ref().is_some_and(|d| {
        matches!(
            d.cfg.strategy,
            dist::Strategy::Zero1 | dist::Strategy::Zero2 | dist::Strategy::Zero3
        )
    });
    // The parameters this rank holds on the device (a shard where they are sharded).
    let mut kept_bytes = 0u128;
    let mut slots: Vec<ParamSlot> = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let full = p.numel() * param_elem;
            // Sharded: each rank keeps (and updates) its shard of the parameter (FSDP1: the
            // unit's flat shard, on its first parameter; the others hold 0 bytes and are no
            // tensor of the optimizer's).
            let shard = dist.as_ref().map(|d| d.param_shard[i]);
            let kept = match (&dist, shard) {
                _ if offload && !zero => 0,
                (Some(d), Some(s)) if d.cfg.strategy.shards_params() => s,
                _ => full,
            };
            kept_bytes += kept;
            param_sids.push(sim.alloc(kept, Some(Category::Params)));
            let bytes = match (&dist, shard) {
                _ if offload => 0,
                // DeepSpeed steps fp32 master partitions: its optimizer state is fp32.
                (Some(_), Some(s)) if zero => s / shard_elem * 4,
                (Some(d), Some(s)) if d.cfg.strategy.shards_state() => s,
                _ => full,
            };
            ParamSlot { bytes, grad: None }
        })
        .collect();
    // DeepSpeed's fp32 master partition (`single_partition_of_fp32_groups`, stages 1
    // and 2: a copy even in fp32 training; stage 3's `fp32_partitioned_groups_flat`,
    // the partitions themselves in fp32 training), made with the optimizer; on the host
    // under offload_optimizer.
    let master: u128 = match &dist {
        Some(d) if zero && !offload && cfg.mode == Mode::Train => {
            if d.cfg.strategy == dist::Strategy::Zero3 && shard_elem == 4 {
                0
            } else {
                d.partition_elems() * 4
            }
        }
        _ => 0,
    };
    if master > 0 {
        sim.alloc(master, Some(Category::OptimizerState));
    }
    let mut dist = dist;
    if let Some(d) = &mut dist {
        d.offload = offload;
        d.offload_gathers = offload && !zero;
        d.buckets(params, param_elem, &mut sim);
        // ZeRO-Offload: `temp_grad_buffer_for_gpu_offload`, the largest parameter's size,
        // kept on the device.
        if offload && zero {
            let largest = params.iter().map(|p| p.numel()).max().unwrap_or(0);
            sim.alloc(largest * param_elem, Some(Category::Communication));
        }
        // ZeRO-3 allocates its IPG buffer when the optimizer is built, and keeps it.
        if d.cfg.strategy == dist::Strategy::Zero3
            && d.cfg.world_size() > 1
            && cfg.mode == Mode::Train
        {
            sim.alloc(
                d.cfg.reduce_bucket_elems * param_elem,
                Some(Category::Communication),
            );
        }
    }
    let mut buffer_bytes = 0;
    for b in g.buffers() {
        // Buffers are not cast by a MixedPrecisionPolicy.
        let bytes = if b.elem_bytes == 4 {
            b.numel() * shard_elem
        } else {
            b.bytes()
        };
        buffer_bytes += bytes;
        sim.alloc(bytes, Some(Category::Buffers));
    }
    let image_elem: u128 = if half_model { 2 } else { 4 };
    let image_bytes = checked(micro, g.numel(0), image_elem)?;
    let image = sim.alloc(image_bytes, Some(Category::DataBatch));
    let mut batch_bytes = image_bytes;
    if cfg.mode == Mode::Train {
        batch_bytes += micro * 8;
        sim.alloc(micro * 8, Some(Category::DataBatch));
    }
    let mut opt = optim::State::new(&cfg.optimizer, rules);
    if cfg.mode == Mode::Train {
        opt.construct(&mut sim, &slots);
    }

    let mut run = Runner {
        g,
        cfg,
        rules,
        sim,
        micro,
        param_elem,
        loss_elem: 4,
        nodes: Vec::new(),
        seq: 0,
        node_of_param: param_index(g),
        param_sids,
        dist,
        aux_vals: Vec::new(),
        held_outputs: Vec::new(),
        partition_inputs: Vec::new(),
        autocast_cache: Vec::new(),
        forward_held: Vec::new(),
        held_until: Vec::new(),
        grid_region: false,
        segments: checkpoint_segments(g, cfg.checkpoint_segments)?,
        checkpoint: None,
        done_checkpoints: Vec::new(),
        segment_of_node: Default::default(),
        attach: Vec::new(),
        current_node: usize::MAX,
        names: g
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .chain(["cross_entropy", "zero_grad", "optimizer.step"].map(String::from))
            .collect(),
        loss_layer: g.nodes().len(),
        zero_grad_layer: g.nodes().len() + 1,
        optimizer_layer: g.nodes().len() + 2,
    };
    let mut steps = Vec::new();
    let mut saved_by_node = vec![0u128; g.nodes().len()];
    let reported_steps = if cfg.mode == Mode::Train { 2 } else { 1 };
    // The allocator runs one more step: its cache carries over, and the step after the
    // reported ones shows the steady state.
    let n_steps = reported_steps + u32::from(simulate_allocator);
    let mut device_steps = Vec::new();
    let mut oom_step = None;
    for step in 1..=n_steps {
        run.sim.timeline_on = step <= reported_steps;
        run.sim.reset_peak();
        run.sim.phase = Phase::Forward;
        run.sim.layer = run.zero_grad_layer;
        let before = run.sim.live();
        let mut loss: Option<(Sid, Sid)> = None;
        if cfg.mode == Mode::Inference {
            let out = run.forward(image, image_elem, false)?;
            run.release_autocast_cache();
            run.sim.decref(out.sid);
        } else {
            for slot in &mut slots {
                if let Some(gsid) = slot.grad.take() {
                    run.sim.decref(gsid);
                }
            }
            if let Some(d) = &mut run.dist {
                d.has_shard.iter_mut().for_each(|h| *h = false);
            }
            // From the second micro-batch on, each starts with the same tensors alive
            // (every gradient, the previous loss) and allocates the same, so a third
            // repeats the second byte for byte: simulating at most three gives the
            // exact peak and end state for any count, in bounded time.
            for _ in 0..acc.min(3) {
                if let Some((logits, l)) = loss.take() {
                    run.sim.decref(logits);
                    for s in std::mem::take(&mut run.held_outputs) {
                        run.sim.decref(s);
                    }
                    run.sim.decref(l);
                }
                let out = run.forward(image, image_elem, true)?;
                let (root, loss_sid) = run.total_loss(out);
                run.release_autocast_cache();
                if step == 1 {
                    saved_by_node = run.saved_by_node();
                }
                run.backward(root, &mut slots);
                loss = Some((out.sid, loss_sid));
            }
            run.sim.phase = Phase::Optimizer;
            run.sim.layer = run.optimizer_layer;
            // ZeRO-1/2's step flattens this rank's gradient partition into an fp32
            // tensor that lives through the optimizer's step (stage_1_and_2.py `step`).
            let flat_grad = run.dist.as_ref().and_then(|d| {
                let stage12 = matches!(
                    d.cfg.strategy,
                    dist::Strategy::Zero1 | dist::Strategy::Zero2
                );
                (stage12 && !d.offload && d.ranks > 1).then(|| d.partition_elems() * 4)
            });
            let flat_grad = flat_grad.map(|b| {
                let sid = run.sim.alloc(b, Some(Category::Temporaries));
                run.sim.boundary("aten.cat.default");
                sid
            });
            opt.step(&mut run.sim, &slots);
            if let Some(f) = flat_grad {
                run.sim.decref(f);
            }
        }
        let loss_sid = loss.map(|(logits, l)| {
            run.sim.decref(logits);
            l
        });
        for s in std::mem::take(&mut run.held_outputs) {
            run.sim.decref(s);
        }
        let after = run.sim.live();
        if let Some(l) = loss_sid {
            run.sim.decref(l);
        }
        if let Some(st) = run.sim.device_stats() {
            device_steps.push(st);
            if oom_step.is_none() && run.sim.device_oom().is_some() {
                oom_step = Some(step);
            }
        }
        if step <= reported_steps {
            steps.push(run.sim.step_report(step, &run.names, before, after));
        }
        if oom_step.is_some() {
            // PyTorch raised "CUDA out of memory": the run is over (only a device limit
            // makes that happen, as `fit` sets one).
            break;
        }
    }
    let trace = run.sim.take_device_trace(&run.names);
    let device = simulate_allocator.then(|| DeviceReport {
        trace,
        ..device_report(cfg, &run, &device_steps, oom_step)
    });
    Ok((
        MemoryReport {
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
            param_bytes: kept_bytes,
            buffer_bytes,
            batch_bytes,
            context_bytes: if rules.cuda { cfg.context_bytes() } else { 0 },
            nccl_bytes: if rules.cuda { cfg.nccl_bytes() } else { 0 },
            peak_bytes: steps.iter().map(|s| s.peak_bytes).max().unwrap_or(0),
            steps,
            device,
            timeline: run.sim.take_timeline(&run.names),
            distributed: cfg.distributed.clone(),
        },
        saved_by_node,
    ))
}

/// The allocator's counters per step, with the workspaces and the context around them.
fn device_report(
    cfg: &PlanConfig,
    run: &Runner,
    stats: &[AllocStats],
    oom_step: Option<u32>,
) -> DeviceReport {
    let cublas = run.sim.workspace_bytes();
    let context = run.sim.context_bytes;
    let steps: Vec<DeviceStep> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let reserved = s.reserved_at_allocated_peak;
            let cached = reserved.saturating_sub(s.allocated_bytes.peak);
            DeviceStep {
                step: i as u32 + 1,
                allocated_peak_bytes: s.allocated_bytes.peak,
                reserved_peak_bytes: s.reserved_bytes.peak,
                reserved_at_allocated_peak_bytes: reserved,
                fragmentation: if reserved == 0 {
                    0.0
                } else {
                    cached as f64 / reserved as f64
                },
                segments: s.segments,
                alloc_retries: s.num_alloc_retries,
                device_total_bytes: context + s.reserved_bytes.peak,
            }
        })
        .collect();
    let reserved_peak = steps
        .iter()
        .map(|s| s.reserved_peak_bytes)
        .max()
        .unwrap_or(0);
    DeviceReport {
        alloc_conf: cfg.alloc_conf.describe(),
        expandable_segments: cfg.alloc_conf.expandable_segments,
        max_split_size_bytes: cfg.alloc_conf.max_split_size,
        garbage_collection_inactive: cfg.alloc_conf.garbage_collection_threshold.is_some()
            && cfg.allowed_memory_bytes.is_none(),
        allocated_peak_bytes: steps
            .iter()
            .map(|s| s.allocated_peak_bytes)
            .max()
            .unwrap_or(0),
        reserved_peak_bytes: reserved_peak,
        cuda_context_bytes: cfg.context_bytes(),
        nccl_bytes: cfg.nccl_bytes(),
        cublas_workspace_bytes: cublas,
        cudnn_workspace_peak_bytes: run.sim.cudnn_largest(),
        device_total_bytes: context + reserved_peak,
        device_limit_bytes: cfg.device_limit_bytes,
        out_of_memory: run.sim.device_oom().map(|o| DeviceOom {
            step: oom_step.unwrap_or(1),
            phase: o.phase,
            layer: run.names[o.layer].clone(),
            requested_bytes: o.error.requested,
            tried_to_allocate_bytes: o.error.tried_to_allocate,
            allocated_bytes: o.error.allocated,
            reserved_bytes: o.error.reserved,
        }),
        steps,
        trace: None,
    }
}

fn checked(a: u128, b: u128, c: u128) -> Result<u128, PlanError> {
    a.checked_mul(b)
        .and_then(|v| v.checked_mul(c))
        .ok_or_else(|| PlanError::Config("sizes overflow 128-bit arithmetic".into()))
}

/// torchvision's ViT: for the concatenation `i` of the class token and the patch tokens
/// whose sum with `encoder.pos_embedding` enters the encoder, the encoder's last node
/// (the one the class token's select reads).
fn vit_encoder_end(g: &Shaped, i: usize) -> Option<usize> {
    let nodes = g.nodes();
    let is_param = |j: usize, suffix: &str| {
        matches!(nodes[j].op, Op::Param { .. }) && nodes[j].name.ends_with(suffix)
    };
    if !nodes[i].inputs.iter().any(|&j| is_param(j, "class_token")) {
        return None;
    }
    let add = *g.consumers[i].first()?;
    if !matches!(nodes[add].op, Op::Add { .. })
        || !nodes[add]
            .inputs
            .iter()
            .any(|&j| is_param(j, "encoder.pos_embedding"))
    {
        return None;
    }
    let select = (add..nodes.len()).find(|&k| matches!(nodes[k].op, Op::Select { .. }))?;
    nodes[select].inputs.first().copied()
}

/// For each node, the index of its first parameter in `params()` order.
fn param_index(g: &Shaped) -> Vec<usize> {
    g.first_param_index().to_vec()
}

#[allow(dead_code)]
fn param_index_in_node_order(g: &Shaped) -> Vec<usize> {
    let mut first = Vec::with_capacity(g.nodes().len());
    let mut k = 0;
    for n in g.nodes() {
        first.push(k);
        k += n.op.params().len();
    }
    first
}

struct Runner<'a> {
    g: &'a Shaped,
    cfg: &'a PlanConfig,
    rules: Rules,
    sim: Sim,
    micro: u128,
    param_elem: u128,
    /// Bytes per element of the loss (fp32, but a bf16 model's own without autocast).
    loss_elem: u128,
    nodes: Vec<BNode>,
    seq: u64,
    node_of_param: Vec<usize>,
    /// Each parameter's storage.
    param_sids: Vec<Sid>,
    /// Many GPUs: what one rank holds besides.
    dist: Option<DistState>,
    /// The auxiliary heads' logits of the last forward pass (training).
    aux_vals: Vec<Value>,
    /// Auxiliary logits held with the model's output until it is dropped.
    held_outputs: Vec<Sid>,
    /// MaxViT: the input of a partition, held by the calling `nn.Sequential` until the
    /// departition returns.
    partition_inputs: Vec<Sid>,
    /// Autocast's cache after the model's forward, until the loss is computed.
    autocast_cache: Vec<Sid>,
    /// Values the model's `forward` keeps in a local until it returns (MaxViT's last
    /// block output, read by the classifier).
    forward_held: Vec<Sid>,
    /// Module inputs an `nn.Sequential` holds while the module runs (a Swin block's,
    /// a patch merging's): released once the graph passes the module's last node.
    held_until: Vec<(usize, Sid)>,
    /// Inside a MaxViT grid partition: values are swapped views, so gradients coming
    /// back through the swap are not contiguous.
    grid_region: bool,
    /// Checkpointed segments (inclusive node ranges).
    segments: Vec<Segment>,
    /// The checkpointed segment whose forward is running.
    checkpoint: Option<Checkpoint>,
    /// Segments run in this forward pass, and whether backward recomputed them.
    done_checkpoints: Vec<(Checkpoint, bool)>,
    segment_of_node: std::collections::HashMap<usize, usize>,
    /// Nodes to attach recomputed saved tensors to, last first.
    attach: Vec<usize>,
    current_node: usize,
    /// Layer names: the graph's nodes, then the loss, zero_grad and the optimizer.
    names: Vec<String>,
    loss_layer: usize,
    zero_grad_layer: usize,
    optimizer_layer: usize,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    first: usize,
    last: usize,
}

#[derive(Debug, Clone)]
struct Checkpoint {
    segment: usize,
    input: Value,
    nodes: Vec<usize>,
}

/// Splits the graph as `checkpoint_sequential(model, n)` splits a Sequential: into
/// pieces that one tensor connects, the first `n - 1` groups checkpointed and the rest
/// run normally.
fn checkpoint_segments(g: &Shaped, n: u32) -> Result<Vec<Segment>, PlanError> {
    if n <= 1 {
        return Ok(Vec::new());
    }
    let count = g.nodes().len();
    // Node j ends a piece when nothing before or at j is read after j+1... except j.
    let mut reach = 0;
    let mut ends = Vec::new();
    for j in 1..count {
        for &c in &g.consumers[j - 1] {
            reach = reach.max(c);
        }
        if reach <= j {
            ends.push(j);
        }
    }
    let pieces = ends.len();
    let n = n as usize;
    if pieces < n {
        return Err(PlanError::Config(format!(
            "--checkpoint-segments {n}: the model splits into only {pieces} sequential pieces"
        )));
    }
    let size = pieces / n;
    let mut segs = Vec::new();
    let mut first = 1;
    for s in 0..n - 1 {
        let last = ends[(s + 1) * size - 1];
        segs.push(Segment { first, last });
        first = last + 1;
    }
    Ok(segs)
}

impl Runner<'_> {
    fn amp(&self) -> bool {
        self.cfg.precision.is_amp()
    }

    fn record(
        &mut self,
        layer: usize,
        saved: Vec<Sid>,
        edges: Vec<(Edge, Grad)>,
        ops: Vec<(&'static str, Vec<usize>)>,
    ) -> usize {
        if let Some(k) = self.attach.pop() {
            // Recomputation: the node exists; it now keeps what it saves.
            for &s in &saved {
                self.sim.save(s);
            }
            self.nodes[k].saved = saved;
            return k;
        }
        let saved = if let Some(c) = &mut self.checkpoint {
            // Inside a checkpointed segment nothing is kept for backward.
            c.nodes.push(self.nodes.len());
            Vec::new()
        } else {
            saved
        };
        for &s in &saved {
            self.sim.save(s);
        }
        self.seq += 1;
        self.nodes.push(BNode {
            seq: self.seq,
            node: self.current_node,
            layer,
            saved,
            edges,
            ops,
            casts: Vec::new(),
            to_dtype: Vec::new(),
            gather: false,
            held: Vec::new(),
        });
        self.nodes.len() - 1
    }

    /// A Linear on a map (`[H, W, C]` channels-last, ConvNeXt) whose output is then
    /// permuted gets its gradient through the permute, not contiguous: reshaping it for
    /// the matrix product copies it (UnsafeViewBackward0). Returns the node the output's
    /// gradient goes to: `k`, or that copy in front of it.
    fn reshaped_grad(&mut self, i: usize, k: usize, bytes: u128) -> usize {
        let g = self.g;
        let permuted = matches!(g.nodes()[i].op, Op::Linear(_))
            && g.shapes[i].len() >= 3
            && !g.consumers[i].is_empty()
            && g.consumers[i]
                .iter()
                .all(|&c| matches!(g.nodes()[c].op, Op::Permute { .. }));
        // MaxViT's grid attention: the residual branch's gradient is a swapped view.
        let swapped = self.grid_region
            && matches!(g.nodes()[i].op, Op::Linear(_))
            && g.consumers[i]
                .iter()
                .all(|&c| matches!(g.nodes()[c].op, Op::StochasticDepth { .. } | Op::Add { .. }));
        let permuted = permuted || swapped;
        if !permuted || self.nodes.get(k).is_none_or(|n| n.node != i) {
            return k;
        }
        self.grad_node(i, k, bytes, "aten.clone.default")
    }

    /// The autograd node of node `i`, one input `x`, when its backward is one aten op
    /// (`label`) making the input's gradient at the input's size and keeping `saved`:
    /// `None` in inference or when the input needs no gradient.
    fn unary_grad(
        &mut self,
        i: usize,
        x: &Value,
        train: bool,
        saved: Vec<Sid>,
        label: &'static str,
    ) -> Option<usize> {
        let f = x.grad_fn.filter(|_| train)?;
        let bytes = self.micro * self.g.numel(self.g.nodes()[i].inputs[0]) * x.elem;
        Some(self.record(
            i,
            saved,
            vec![(Edge::Node(f), Grad::Alloc(bytes))],
            vec![(label, vec![0])],
        ))
    }

    /// A backward node of graph node `i` that keeps nothing and makes, with one aten op
    /// (`label`), a gradient of `bytes` for node `next` (a reshape's copy, a
    /// select_backward's zeros).
    fn grad_node(&mut self, i: usize, next: usize, bytes: u128, label: &'static str) -> usize {
        self.record(
            i,
            vec![],
            vec![(Edge::Node(next), Grad::Alloc(bytes))],
            vec![(label, vec![0])],
        )
    }

    /// `F.softmax` over attention scores of `bytes`: the probabilities, and the
    /// backward node keeping them (its gradient goes to `from`) when scores need one.
    fn softmax(&mut self, i: usize, bytes: u128, from: Option<usize>) -> (Sid, Option<usize>) {
        let probs = self.op(bytes, "aten._softmax.default");
        let node = from.map(|k| {
            self.record(
                i,
                vec![probs],
                vec![(Edge::Node(k), Grad::Alloc(bytes))],
                vec![("aten._softmax_backward_data.default", vec![0])],
            )
        });
        (probs, node)
    }

    /// Bytes of value `v` of node `j`: a parameter's own size, else the batch's.
    fn value_bytes(&self, v: &Value, j: usize) -> u128 {
        let per = self.g.numel(j) * v.elem;
        if v.leaf.is_some() {
            per
        } else {
            self.micro * per
        }
    }

    /// Allocates, marks the op boundary.
    fn op(&mut self, bytes: u128, label: &'static str) -> Sid {
        let s = self.sim.alloc(bytes, None);
        self.sim.boundary(label);
        s
    }

    /// The forward pass; returns the logits (held by the caller).
    fn forward(&mut self, image: Sid, image_elem: u128, train: bool) -> Result<Value, PlanError> {
        let g = self.g;
        let n = g.nodes().len();
        self.sim.phase = Phase::Forward;
        let mut vals: Vec<Option<Value>> = vec![None; n];
        // FSDP2's MixedPrecisionPolicy casts the forward's inputs to param_dtype
        // (cast_forward_inputs=True); the fp32 batch stays.
        let cast = self
            .dist
            .as_ref()
            .filter(|d| d.gather_elem != d.elem)
            .map(|d| d.gather_elem);
        match cast {
            Some(e) => {
                let bytes = self.sim.bytes(image) / image_elem * e;
                let copy = self.op(bytes, "aten._to_copy.default");
                vals[0] = Some(plain(copy, None, e));
            }
            None => {
                self.sim.incref(image);
                vals[0] = Some(plain(image, None, image_elem));
            }
        }
        // AMP's autocast cache: half copies of weights, alive until autocast exits.
        let mut amp_cache: Vec<Sid> = Vec::new();
        let segments = if train {
            self.segments.clone()
        } else {
            Vec::new()
        };
        // torchvision computes auxiliary heads in training only.
        let feeds = g.graph.feeds_output();
        for i in 1..n {
            if !train && !feeds[i] {
                continue;
            }
            let seg = segments.iter().position(|s| s.first == i);
            if let Some(s) = seg {
                // checkpoint() keeps the segment's input for the recomputation.
                let input = vals[i - 1].expect("computed");
                self.sim.incref(input.sid);
                self.checkpoint = Some(Checkpoint {
                    segment: s,
                    input,
                    nodes: Vec::new(),
                });
            }
            self.dist_before_forward(i);
            self.forward_node(i, &mut vals, train, &mut amp_cache)?;
            self.dist_after_forward(i);
            if let Some(c) = self
                .checkpoint
                .as_ref()
                .filter(|c| segments[c.segment].last == i)
            {
                let c = c.clone();
                for &k in &c.nodes {
                    self.segment_of_node.insert(k, self.done_checkpoints.len());
                }
                self.done_checkpoints.push((c, false));
                self.checkpoint = None;
            }
        }
        // Autocast's cache lives until the `with torch.autocast(...)` block exits: after
        // the loss, which AMP training computes inside it (`release_autocast_cache`).
        self.autocast_cache.extend(amp_cache);
        for s in std::mem::take(&mut self.forward_held) {
            self.sim.decref(s);
        }
        for (_, s) in std::mem::take(&mut self.held_until) {
            self.sim.decref(s);
        }
        self.aux_vals = if train {
            g.graph
                .aux
                .iter()
                .map(|&a| vals[a].expect("computed"))
                .collect()
        } else {
            Vec::new()
        };
        let out = vals[n - 1].expect("computed");
        if train && out.grad_fn.is_none() {
            return Err(PlanError::Config(format!(
                "{}the model's output does not depend on any parameter, so there is nothing to \
                 train",
                file_prefix(g)
            )));
        }
        Ok(out)
    }

    /// Backward reached a checkpointed segment: run its forward again, attaching the
    /// tensors it saves to the nodes recorded the first time.
    fn recompute(&mut self, which: usize) {
        let (c, done) = self.done_checkpoints[which].clone();
        if done {
            return;
        }
        self.done_checkpoints[which].1 = true;
        let seg = self.segments[c.segment];
        let mut vals: Vec<Option<Value>> = vec![None; self.g.nodes().len()];
        vals[seg.first - 1] = Some(c.input);
        self.sim.incref(c.input.sid);
        self.attach = c.nodes.iter().copied().rev().collect();
        let mut cache = Vec::new();
        for i in seg.first..=seg.last {
            self.forward_node(i, &mut vals, true, &mut cache)
                .expect("the same nodes ran in the forward pass");
        }
        self.attach.clear();
        for s in cache {
            self.sim.decref(s);
        }
        for s in std::mem::take(&mut self.forward_held) {
            self.sim.decref(s);
        }
        for (_, s) in std::mem::take(&mut self.held_until) {
            self.sim.decref(s);
        }
        self.sim.decref(vals[seg.last].expect("recomputed").sid);
        // The checkpoint's hold on its input ends with the recomputation.
        self.sim.decref(c.input.sid);
    }

    fn forward_node(
        &mut self,
        i: usize,
        vals: &mut [Option<Value>],
        train: bool,
        amp_cache: &mut Vec<Sid>,
    ) -> Result<(), PlanError> {
        let g = self.g;
        let b = self.micro;
        self.current_node = i;
        // Modules that returned before this node: their held inputs go.
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_until)
            .into_iter()
            .partition(|&(until, _)| until < i);
        self.held_until = keep;
        for (_, s) in done {
            self.sim.decref(s);
        }
        {
            let node = &g.nodes()[i];
            self.sim.layer = i;
            if let Op::Param { .. } = node.op {
                // A parameter used as a value: its own storage, a leaf of autograd.
                let p = self.node_of_param[i];
                let sid = self.param_sids[p];
                self.sim.incref(sid);
                vals[i] = Some(Value {
                    sid,
                    grad_fn: None,
                    elem: self.param_elem,
                    leaf: Some(p),
                    cl: false,
                });
                return Ok(());
            }
            let x = vals[node.inputs[0]].expect("inputs come first");
            let numel = g.numel(i);
            let in_numel = g.numel(node.inputs[0]);
            let xbytes = b * in_numel * x.elem;
            let p0 = self.node_of_param[i];
            let input_edge = |x: &Value| {
                x.grad_fn
                    .map(|f| (Edge::Node(f), Grad::Alloc(b * in_numel * x.elem)))
            };
            let out = match &node.op {
                Op::Input => unreachable!("checked by infer"),
                Op::Conv2d(_) | Op::Linear(_) => {
                    let is_conv = matches!(node.op, Op::Conv2d(_));
                    let specs = g.node_params(i);
                    // Autocast casts the op's arguments as C++ evaluates a call's
                    // arguments, last first (GCC): the bias, the weight, then the input
                    // (measured in the CUDA allocator's trace).
                    let mut weight_cast = None;
                    if self.amp() {
                        for spec in specs.iter().rev() {
                            let c = self.op(spec.numel() * 2, "aten._to_copy.default");
                            if spec.name == "weight" {
                                weight_cast = Some(c);
                            }
                            amp_cache.push(c);
                        }
                    }
                    let (xin, out_elem) = if self.amp() {
                        let xin = if x.elem == 4 {
                            self.op(b * in_numel * 2, "aten._to_copy.default")
                        } else {
                            self.sim.incref(x.sid);
                            x.sid
                        };
                        (xin, 2)
                    } else {
                        self.sim.incref(x.sid);
                        (x.sid, x.elem)
                    };
                    let saved: Vec<Sid> = std::iter::once(xin).chain(weight_cast).collect();
                    let has_bias = specs.len() == 2;
                    let label = match (is_conv, has_bias) {
                        (true, _) => "aten.convolution.default",
                        (false, true) => "aten.addmm.default",
                        (false, false) => "aten.mm.default",
                    };
                    let out = self.op(b * numel * out_elem, label);
                    if let Op::Conv2d(c) = &node.op {
                        let t = self.conv_tensors(i, out_elem);
                        self.conv_workspace(c, ConvPass::Forward, t);
                    }
                    if !is_conv {
                        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
                        if has_bias {
                            self.sim.cublaslt_workspace();
                        }
                    }
                    let grad_elem = if self.amp() { 2 } else { self.param_elem };
                    let wbytes = specs[0].numel() * grad_elem;
                    let mut edges = Vec::new();
                    let mut ops = Vec::new();
                    let fp32_grads: Vec<u128> = specs.iter().map(|s| s.numel() * 4).collect();
                    // The input's gradient comes in the dtype the op ran in; under
                    // autocast an fp32 input's is then cast back by its own node.
                    let in_grad = b * in_numel * out_elem;
                    if is_conv {
                        edges.extend(x.grad_fn.map(|f| (Edge::Node(f), Grad::Alloc(in_grad))));
                        // From a channels-last input the weight's gradient comes out
                        // channels-last too; unless that layout equals the contiguous one
                        // (one input channel per group, or a 1x1 kernel) AccumulateGrad
                        // copies it.
                        let shape = &specs[0].shape;
                        let relayout = x.cl && shape[1] > 1 && shape[2] * shape[3] > 1;
                        edges.push((
                            Edge::Param(p0),
                            if relayout {
                                Grad::AllocRelayout(wbytes)
                            } else {
                                Grad::Alloc(wbytes)
                            },
                        ));
                        if has_bias {
                            edges.push((
                                Edge::Param(p0 + 1),
                                Grad::Alloc(specs[1].numel() * grad_elem),
                            ));
                        }
                        ops.push((
                            "aten.convolution_backward.default",
                            (0..edges.len()).collect(),
                        ));
                    } else {
                        // AddmmBackward0's edges: self (bias), mat1 (input), mat2 (weight).
                        if has_bias {
                            edges.push((
                                Edge::Param(p0 + 1),
                                Grad::SumTo(specs[1].numel() * grad_elem),
                            ));
                        }
                        if let Some(f) = x.grad_fn {
                            edges.push((Edge::Node(f), Grad::Alloc(in_grad)));
                            ops.push(("aten.mm.default", vec![edges.len() - 1]));
                        }
                        edges.push((Edge::Param(p0), Grad::Alloc(wbytes)));
                        ops.push(("aten.mm.default", vec![edges.len() - 1]));
                        // MmBackward0 (no bias: `input @ weight.t()`) makes the weight's
                        // gradient first (mm_mat2_backward of a transposed weight).
                        if !has_bias {
                            ops.reverse();
                        }
                    }
                    if !train {
                        self.sim.decref(xin);
                        vals[i] = Some(plain(out, None, out_elem));
                        self.drop_inputs(i, vals);
                        return Ok(());
                    }
                    let k = self.record(i, saved.clone(), edges, ops);
                    if self.amp() && self.nodes[k].casts.is_empty() {
                        // Each parameter's half gradient goes through its cast's
                        // ToCopyBackward0: the weight's first (its cast was made last),
                        // and before them an fp32 input's (its cast was made after the
                        // parameters').
                        let edges = self.nodes[k].edges.clone();
                        if x.elem > out_elem {
                            if let Some(e) = edges
                                .iter()
                                .position(|(edge, _)| matches!(edge, Edge::Node(_)))
                            {
                                self.nodes[k].casts.push((e, xbytes));
                            }
                        }
                        let mut casts: Vec<(usize, usize)> = edges
                            .iter()
                            .enumerate()
                            .filter_map(|(e, (edge, _))| match edge {
                                Edge::Param(p) => Some((p - p0, e)),
                                Edge::Node(_) => None,
                            })
                            .collect();
                        casts.sort_unstable();
                        for (spec_i, e) in casts {
                            self.nodes[k].casts.push((e, fp32_grads[spec_i]));
                        }
                    }
                    self.sim.decref(xin);
                    let grad_fn = Some(self.reshaped_grad(i, k, b * numel * out_elem));
                    Value {
                        leaf: None,
                        cl: is_conv && x.cl,
                        sid: out,
                        grad_fn,
                        elem: out_elem,
                    }
                }
                Op::BatchNorm2d(bn) => {
                    let spatial: u128 = g.shapes[i][1..].iter().map(|&d| d as u128).product();
                    if train && b * spatial == 1 {
                        return Err(PlanError::Framework {
                            file: g.graph.source.clone(),
                            layer: node.name.clone(),
                            message: format!(
                                "ValueError: Expected more than 1 value per channel when training, got input size torch.Size([{}]){}",
                                std::iter::once(b.to_string())
                                    .chain(g.shapes[i].iter().map(|d| d.to_string()))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                // The batch the layer sees is the micro-batch.
                                if self.cfg.accumulation_steps > 1 {
                                    format!(
                                        " (a micro-batch of {b}: batch {} in {} accumulation steps)",
                                        self.cfg.batch_size, self.cfg.accumulation_steps
                                    )
                                } else {
                                    String::new()
                                }
                            ),
                        });
                    }
                    let c = bn.num_features as u128;
                    if !train {
                        let out = self.op(
                            b * numel * x.elem,
                            "aten._native_batch_norm_legit_no_training.default",
                        );
                        plain(out, None, x.elem)
                    } else {
                        let out = self.sim.alloc(b * numel * x.elem, None);
                        let mean = self.sim.alloc(c * 4, None);
                        let invstd = self.sim.alloc(c * 4, None);
                        self.sim.boundary(if self.rules.cuda {
                            "aten.cudnn_batch_norm.default"
                        } else {
                            "aten._batch_norm_with_update.default"
                        });
                        let mut edges: Vec<(Edge, Grad)> = input_edge(&x).into_iter().collect();
                        if bn.affine {
                            edges.push((Edge::Param(p0), Grad::Alloc(c * self.param_elem)));
                            edges.push((Edge::Param(p0 + 1), Grad::Alloc(c * self.param_elem)));
                        }
                        let all = (0..edges.len()).collect();
                        let k = self.record(
                            i,
                            vec![x.sid, mean, invstd],
                            edges,
                            vec![("aten.native_batch_norm_backward.default", all)],
                        );
                        self.sim.decref(mean);
                        self.sim.decref(invstd);
                        plain(out, Some(k), x.elem)
                    }
                }
                Op::Act { kind, inplace } => {
                    let rec = kind.record();
                    let fwd = match (inplace, rec.forward_inplace) {
                        (true, Some(f)) => f,
                        _ => rec.forward,
                    };
                    // An in-place op whose formula reads `self` (hardtanh_, silu_, ...):
                    // autograd first clones the input (`original_self`) and saves the
                    // clone, when the input requires grad.
                    let original =
                        (*inplace && rec.saves == Saves::Input && train && x.grad_fn.is_some())
                            .then(|| self.op(b * in_numel * x.elem, "aten.clone.default"));
                    let out = if *inplace {
                        self.sim.incref(x.sid);
                        self.sim.boundary(fwd);
                        x.sid
                    } else {
                        self.op(b * numel * x.elem, fwd)
                    };
                    let keep = match (original, rec.saves) {
                        (Some(c), _) => c,
                        (None, Saves::Result) => out,
                        (None, Saves::Input) => x.sid,
                    };
                    let grad_fn = self.unary_grad(i, &x, train, vec![keep], rec.backward);
                    if let Some(c) = original {
                        self.sim.decref(c);
                    }
                    plain(out, grad_fn, x.elem)
                }
                Op::Param { .. } => unreachable!("handled above"),
                Op::Tokens => {
                    // A view (reshape, permute): the same storage and autograd history.
                    self.sim.incref(x.sid);
                    x
                }
                Op::Permute { dims } => {
                    // A view. `[H, W, C] -> [C, H, W]` of a contiguous map is a
                    // channels-last map; the reverse of one is contiguous again.
                    self.sim.incref(x.sid);
                    let to_channels_first = dims.as_slice() == [2, 0, 1];
                    Value {
                        cl: to_channels_first && !x.cl,
                        ..x
                    }
                }
                Op::Select { .. } => {
                    // A view forward; SelectBackward0 writes the gradient into zeros of
                    // the input's size.
                    self.sim.incref(x.sid);
                    let grad_fn =
                        self.unary_grad(i, &x, train, vec![], "aten.select_backward.default");
                    plain(x.sid, grad_fn, x.elem)
                }
                Op::LayerNorm(l) => {
                    let rows = b * numel / l.normalized_shape as u128;
                    // CUDA's autocast runs layer_norm in fp32: a half input is cast up
                    // (the cast is what backward keeps) and the output is fp32. (CPU's
                    // autocast leaves layer_norm in the input's dtype.)
                    let cast = self.amp() && self.rules.cuda && x.elem == 2;
                    let (x, to_x) = if cast {
                        let up = self.op(b * numel * 4, "aten._to_copy.default");
                        let node = match input_edge(&x) {
                            Some((Edge::Node(f), _)) if train => {
                                Some(self.grad_node(i, f, b * numel * 2, "aten._to_copy.default"))
                            }
                            _ => None,
                        };
                        (plain(up, node, 4), Some(up))
                    } else {
                        (x, None)
                    };
                    let out = self.sim.alloc(b * numel * x.elem, None);
                    let mean = self.sim.alloc(rows * 4, None);
                    let rstd = self.sim.alloc(rows * 4, None);
                    self.sim.boundary("aten.native_layer_norm.default");
                    let grad_fn = match x
                        .grad_fn
                        .map(|f| (Edge::Node(f), Grad::Alloc(b * numel * x.elem)))
                    {
                        Some(e) if train => {
                            let mut edges = vec![e];
                            for k in 0..g.node_params(i).len() {
                                let c = l.normalized_shape as u128 * self.param_elem;
                                edges.push((Edge::Param(p0 + k), Grad::Alloc(c)));
                            }
                            let all = (0..edges.len()).collect();
                            Some(self.record(
                                i,
                                vec![x.sid, mean, rstd],
                                edges,
                                vec![("aten.native_layer_norm_backward.default", all)],
                            ))
                        }
                        _ => None,
                    };
                    self.sim.decref(mean);
                    self.sim.decref(rstd);
                    if let Some(up) = to_x {
                        self.sim.decref(up);
                    }
                    plain(out, grad_fn, x.elem)
                }
                Op::MultiheadAttention {
                    embed_dim,
                    num_heads,
                } => {
                    let (e, h) = (*embed_dim as u128, *num_heads as u128);
                    if self.rules.cuda {
                        self.attention_cuda(i, x, e, h, train, amp_cache)
                    } else {
                        self.attention(i, x, e, h, train, amp_cache)
                    }
                }
                Op::WindowAttention(w) => {
                    // The stage's nn.Sequential holds the block's input until the block
                    // returns: after the add that takes the add that takes it. (V1's
                    // norm1 input is the block input; V2's attention reads it.)
                    let block_input = if w.v2 {
                        Some(node.inputs[0])
                    } else {
                        g.nodes()[node.inputs[0]].inputs.first().copied()
                    };
                    let last = |j: usize| g.consumers[j].last().copied();
                    if let Some(end) = block_input.and_then(last).and_then(last) {
                        let input = block_input.expect("some");
                        let v = vals[input].expect("computed");
                        self.sim.incref(v.sid);
                        self.held_until.push((end, v.sid));
                        // The first block of a stage: `features` holds the stage's input
                        // until the stage's last block returns.
                        if !matches!(g.nodes()[input].op, Op::Add { .. }) {
                            let starts_block = |c: usize| match &g.nodes()[c].op {
                                Op::WindowAttention(_) => true,
                                Op::LayerNorm(_) => g.consumers[c]
                                    .iter()
                                    .any(|&d| matches!(g.nodes()[d].op, Op::WindowAttention(_))),
                                _ => false,
                            };
                            let mut stage_end = end;
                            while g.consumers[stage_end].iter().any(|&c| starts_block(c)) {
                                match last(stage_end).and_then(last) {
                                    Some(e) if e > stage_end => stage_end = e,
                                    _ => break,
                                }
                            }
                            self.sim.incref(v.sid);
                            self.held_until.push((stage_end, v.sid));
                        }
                    }
                    self.window_attention(i, x, w, train, amp_cache)
                }
                Op::PatchMerge => {
                    // Held by the features' nn.Sequential through norm and reduction.
                    let first = |j: usize| g.consumers[j].first().copied();
                    if let Some(end) = first(i).and_then(first) {
                        self.sim.incref(x.sid);
                        self.held_until.push((end, x.sid));
                    }
                    self.patch_merge(i, x, train)
                }
                Op::RelPosAttention { head_dim, .. } => {
                    self.rel_pos_attention(i, x, *head_dim as u128, train, amp_cache)
                }
                Op::Partition { .. } | Op::Departition { .. } => {
                    // MaxViT's reshape-permute-reshape: a copy forward; backward reshapes
                    // the permuted gradient, one copy. The swap of a grid is a view.
                    let out = self.op(b * numel * x.elem, "aten.clone.default");
                    // MaxVit.forward's `x` holds the last block's output while the
                    // classifier (which starts with the pool) runs.
                    let to_classifier = g.consumers[i]
                        .iter()
                        .any(|&c| matches!(g.nodes()[c].op, Op::AdaptiveAvgPool2d { .. }));
                    if to_classifier {
                        self.sim.incref(out);
                        self.forward_held.push(out);
                    }
                    if let Op::Partition { grid, .. } = node.op {
                        self.sim.incref(x.sid);
                        self.partition_inputs.push(x.sid);
                        self.grid_region = grid;
                    } else {
                        if let Some(held) = self.partition_inputs.pop() {
                            self.sim.decref(held);
                        }
                        self.grid_region = false;
                    }
                    let grad_fn = self.unary_grad(i, &x, train, vec![], "aten.clone.default");
                    plain(out, grad_fn, x.elem)
                }
                Op::Mul => {
                    let y = vals[node.inputs[1]].expect("inputs come first");
                    let elem = x.elem.max(y.elem);
                    let out = self.op(b * numel * elem, "aten.mul.Tensor");
                    // MulBackward0: self's gradient is grad * other (saves other), other's
                    // is grad * self (saves self); each is made at the output's size and
                    // summed down to a broadcast input's size by the engine's
                    // validate_outputs.
                    let full = b * numel * elem;
                    let mut edges = Vec::new();
                    let mut saved = Vec::new();
                    for (v, other, j) in [(x, y, node.inputs[0]), (y, x, node.inputs[1])] {
                        let own = self.value_bytes(&v, j);
                        let how = if own == full {
                            Grad::Alloc(full)
                        } else {
                            Grad::AllocSumTo(full, own)
                        };
                        if let Some(e) = edge(&v, how) {
                            edges.push(e);
                            saved.push(other.sid);
                        }
                    }
                    let ops = (0..edges.len())
                        .map(|e| ("aten.mul.Tensor", vec![e]))
                        .collect();
                    let grad_fn =
                        (train && !edges.is_empty()).then(|| self.record(i, saved, edges, ops));
                    Value {
                        leaf: None,
                        cl: x.cl || y.cl,
                        sid: out,
                        grad_fn,
                        elem,
                    }
                }
                Op::Concat => {
                    let ins: Vec<(Value, usize)> = node
                        .inputs
                        .iter()
                        .map(|&j| (vals[j].expect("inputs come first"), j))
                        .collect();
                    let elem = ins.iter().map(|(v, _)| v.elem).max().unwrap_or(4);
                    let out = self.op(b * numel * elem, "aten.cat.default");
                    // CatBackward0 keeps only sizes; each input's gradient is a slice (a
                    // view) of the incoming one.
                    // A parameter (ViT's class token, expanded over the batch) gets the
                    // slice summed over the batch (ExpandBackward0).
                    // Over a batch of one the expand's sum_to has nothing to sum: the
                    // parameter's `.grad` is the slice itself, and keeps the whole
                    // incoming gradient alive.
                    let edges = ins.iter().map(|(v, j)| {
                        let bytes = self.value_bytes(v, *j);
                        if v.leaf.is_some() && b > 1 {
                            Grad::SumTo(bytes)
                        } else {
                            Grad::View(bytes)
                        }
                    });
                    let edges: Vec<_> = ins.iter().zip(edges).collect();
                    let grad_fn = self.record_mixed(i, train, elem, &edges);
                    // torchvision's VisionTransformer.forward keeps this concatenation in
                    // its local `x` until `self.encoder(x)` returns (after the encoder's
                    // final LayerNorm, the node the class token's select reads). Told by
                    // torchvision's parameter names: the class token joined, then
                    // `encoder.pos_embedding` added.
                    if let Some(end) = vit_encoder_end(g, i) {
                        self.sim.incref(out);
                        self.held_until.push((end, out));
                    }
                    plain(out, grad_fn, elem)
                }
                Op::StochasticDepth { p, row } => {
                    if !train || *p == 0.0 {
                        self.sim.incref(x.sid);
                        x
                    } else {
                        // noise = empty([B,1,1,1] or [1,1,1,1]).bernoulli_(1-p).div_(1-p),
                        // then input * noise (MulBackward0 keeps the noise).
                        let noise_elems = if *row { b } else { 1 };
                        let noise = self.op(noise_elems * x.elem, "aten.empty.memory_format");
                        let out = self.op(b * numel * x.elem, "aten.mul.Tensor");
                        let grad_fn = input_edge(&x).map(|e| {
                            self.record(i, vec![noise], vec![e], vec![("aten.mul.Tensor", vec![0])])
                        });
                        self.sim.decref(noise);
                        Value {
                            leaf: None,
                            cl: x.cl,
                            sid: out,
                            grad_fn,
                            elem: x.elem,
                        }
                    }
                }
                Op::Narrow { .. } => {
                    // A view forward; backward writes the slice's gradient into zeros of
                    // the input's size (split_backward). Modelled, not measured.
                    self.sim.incref(x.sid);
                    let grad_fn = self.unary_grad(i, &x, train, vec![], "aten.new_zeros.default");
                    plain(x.sid, grad_fn, x.elem)
                }
                Op::ChannelShuffle { .. } => {
                    // view, transpose, contiguous (a copy), view; backward reshapes the
                    // transposed gradient, which copies it once.
                    let out = self.op(b * numel * x.elem, "aten.clone.default");
                    let grad_fn = self.unary_grad(i, &x, train, vec![], "aten.clone.default");
                    plain(out, grad_fn, x.elem)
                }
                Op::MaxPool2d(_) => {
                    let out = self.sim.alloc(b * numel * x.elem, None);
                    let idx = self.sim.alloc(b * numel * 8, None);
                    self.sim.boundary("aten.max_pool2d_with_indices.default");
                    let grad_fn = self.unary_grad(
                        i,
                        &x,
                        train,
                        vec![x.sid, idx],
                        "aten.max_pool2d_with_indices_backward.default",
                    );
                    self.sim.decref(idx);
                    plain(out, grad_fn, x.elem)
                }
                Op::AvgPool2d(_) | Op::AdaptiveAvgPool2d { .. } => {
                    let (fwd, bwd, saves) = match node.op {
                        Op::AvgPool2d(_) => (
                            "aten.avg_pool2d.default",
                            "aten.avg_pool2d_backward.default",
                            true,
                        ),
                        // torch turns a 1x1 adaptive pool into a mean, which saves nothing.
                        Op::AdaptiveAvgPool2d {
                            output_size: (1, 1),
                        } => ("aten.mean.dim", "aten.div.Tensor", false),
                        _ => (
                            "aten._adaptive_avg_pool2d.default",
                            "aten._adaptive_avg_pool2d_backward.default",
                            true,
                        ),
                    };
                    let out = self.op(b * numel * x.elem, fwd);
                    let saved = if saves { vec![x.sid] } else { vec![] };
                    // The mean of a channels-last map is restrided in place (as_strided_);
                    // backward first writes the gradient into zeros of the output's size
                    // (AsStridedBackward1), then the mean's backward divides (div.Scalar).
                    let restrided = !saves && x.cl;
                    let bwd = if restrided { "aten.div.Scalar" } else { bwd };
                    let grad_fn = match input_edge(&x) {
                        Some(e) if train => {
                            let mean = self.record(i, saved, vec![e], vec![(bwd, vec![0])]);
                            Some(if restrided {
                                self.grad_node(
                                    i,
                                    mean,
                                    b * numel * x.elem,
                                    "aten.new_zeros.default",
                                )
                            } else {
                                mean
                            })
                        }
                        _ => None,
                    };
                    plain(out, grad_fn, x.elem)
                }
                Op::Flatten => {
                    self.sim.incref(x.sid);
                    x
                }
                Op::Dropout { p, inplace } => {
                    if !train || *p == 0.0 {
                        self.sim.incref(x.sid);
                        x
                    } else if self.rules.cuda && !*inplace && *p < 1.0 {
                        let out = self.sim.alloc(b * numel * x.elem, None);
                        let mask = self.sim.alloc(b * numel, None);
                        self.sim.boundary("aten.native_dropout.default");
                        let grad_fn = input_edge(&x).map(|e| {
                            self.record(
                                i,
                                vec![mask],
                                vec![e],
                                vec![("aten.native_dropout_backward.default", vec![0])],
                            )
                        });
                        self.sim.decref(mask);
                        plain(out, grad_fn, x.elem)
                    } else {
                        // at::dropout off the fused path: a float mask, then input * mask.
                        let mask = self.op(b * numel * x.elem, "aten.empty_like.default");
                        let out = if *inplace {
                            self.sim.incref(x.sid);
                            self.sim.boundary("aten.mul_.Tensor");
                            x.sid
                        } else {
                            self.op(b * numel * x.elem, "aten.mul.Tensor")
                        };
                        let grad_fn = input_edge(&x).map(|e| {
                            self.record(i, vec![mask], vec![e], vec![("aten.mul.Tensor", vec![0])])
                        });
                        self.sim.decref(mask);
                        plain(out, grad_fn, x.elem)
                    }
                }
                Op::Add { inplace } => {
                    let y = vals[node.inputs[1]].expect("inputs come first");
                    let elem = x.elem.max(y.elem);
                    let out = if *inplace {
                        self.sim.incref(x.sid);
                        self.sim.boundary("aten.add_.Tensor");
                        x.sid
                    } else {
                        self.op(b * numel * elem, "aten.add.Tensor")
                    };
                    // A parameter added over the batch (ViT's position embedding) gets
                    // the gradient summed to its shape.
                    let ins = [(x, node.inputs[0]), (y, node.inputs[1])];
                    let edges = ins.iter().map(|(v, j)| {
                        if v.leaf.is_some() {
                            Grad::SumTo(self.value_bytes(v, *j))
                        } else {
                            Grad::Pass
                        }
                    });
                    let edges: Vec<_> = ins.iter().zip(edges).collect();
                    let grad_fn = self.record_mixed(i, train, elem, &edges);
                    Value {
                        leaf: None,
                        cl: x.cl || (!*inplace && y.cl),
                        sid: out,
                        grad_fn,
                        elem,
                    }
                }
            };
            vals[i] = Some(out);
            self.drop_inputs(i, vals);
        }
        Ok(())
    }

    /// `nn.MultiheadAttention(batch_first=True)` as self-attention with
    /// `need_weights=False` on the CPU, op for op as PyTorch 2.15 runs it (measured with
    /// the oracle's dispatch tracker on a small ViT):
    /// - forward: the transposed input made contiguous for the packed in-projection (a
    ///   copy, kept by MmBackward0), `mm`, `+ bias`, the q/k/v split made contiguous (a
    ///   copy, kept through the q, k, v views by the attention), the CPU flash kernel
    ///   (its output and log-sum-exp kept; no T x T matrix), the out-projection `addmm`;
    /// - backward: the output gradient reshaped (a copy), the out-projection's grads, the
    ///   flash backward's three gradients, two reshape copies each for q, k and v,
    ///   `select_backward` into zeros of the packed size for each (added up out of
    ///   place), a reshape copy of the packed gradient, the bias sum, the in-projection's
    ///   grads.
    ///
    /// Under CPU autocast (bfloat16, measured the same way): each projection's bias and
    /// weight cast (cached for the forward), the input cast before its copy (freed with
    /// the `mm` once the bias is added), everything after in bfloat16 (the log-sum-exp
    /// stays fp32); in backward the fp32 gradient arriving at the output cast by the
    /// engine, each parameter's gradient cast to fp32 by its own node, the input's
    /// first.
    fn attention(
        &mut self,
        i: usize,
        x: Value,
        e: u128,
        heads: u128,
        train: bool,
        amp_cache: &mut Vec<Sid>,
    ) -> Value {
        let g = self.g;
        let b = self.micro;
        let t = g.shapes[i][0] as u128;
        let amp = self.amp();
        let el = if amp { 2 } else { x.elem };
        // Parameter gradients come in the dtype the matmul ran in.
        let pe = if amp { 2 } else { self.param_elem };
        let n = b * t * e * el;
        let p0 = self.node_of_param[i];
        let in_weight = amp.then(|| self.autocast_weight(3 * e, e, amp_cache));
        let cast_in = (x.elem != el).then(|| self.op(n, "aten._to_copy.default"));
        let copy = self.op(n, "aten.clone.default");
        let mm = self.op(3 * n, "aten.mm.default");
        let biased = self.op(3 * n, "aten.add.Tensor");
        self.sim.decref(mm);
        if let Some(c) = cast_in {
            self.sim.decref(c);
        }
        let proj = self.op(3 * n, "aten.clone.default");
        self.sim.decref(biased);
        let out = self.sim.alloc(n, None);
        let lse = self.sim.alloc(b * heads * t * 4, None);
        self.sim
            .boundary("aten._scaled_dot_product_flash_attention_for_cpu.default");
        let out_weight = amp.then(|| self.autocast_weight(e, e, amp_cache));
        let result = self.op(n, "aten.addmm.default");
        let mut grad_fn = None;
        if train {
            let x_edge: Vec<(Edge, Grad)> = edge(&x, Grad::Alloc(n)).into_iter().collect();
            let has_x = !x_edge.is_empty();
            // MmBackward0 of the in-projection: the weight's gradient first.
            let mut edges = x_edge;
            edges.push((Edge::Param(p0), Grad::Alloc(3 * e * e * pe)));
            let w = edges.len() - 1;
            let mut ops = vec![("aten.mm.default", vec![w])];
            if has_x {
                ops.push(("aten.mm.default", vec![0]));
            }
            let bias_to = self.bias_grad_edge(i, p0 + 1, 3 * e * 4);
            let mut saved = vec![copy];
            saved.extend(in_weight);
            let a = self.record(i, saved, edges, ops);
            if amp {
                if has_x && cast_in.is_some() {
                    self.nodes[a].casts.push((0, b * t * e * x.elem));
                }
                self.nodes[a].casts.push((w, 3 * e * e * 4));
            }
            // AddBackward0 of the in-projection's bias.
            let bias = self.record(
                i,
                vec![],
                vec![
                    (Edge::Node(a), Grad::Pass),
                    (bias_to, Grad::SumTo(3 * e * pe)),
                ],
                vec![],
            );
            // The packed q/k/v made contiguous; its gradient is reshaped (copied) back.
            let select = self.packed_qkv_grads(i, bias, 3 * n);
            let inner: Vec<usize> = select
                .iter()
                .map(|&s| self.grad_node(i, s, n, "aten.clone.default"))
                .collect();
            let outer: Vec<usize> = inner
                .iter()
                .map(|&v| self.grad_node(i, v, n, "aten.clone.default"))
                .collect();
            let sdpa = self.record(
                i,
                vec![proj, out, lse],
                outer
                    .iter()
                    .map(|&v| (Edge::Node(v), Grad::Alloc(n)))
                    .collect(),
                vec![(
                    "aten._scaled_dot_product_flash_attention_for_cpu_backward.default",
                    vec![0, 1, 2],
                )],
            );
            // AddmmBackward0 of the out-projection: bias, input, weight.
            let o = self.projection_backward(
                i,
                Some(out),
                out_weight,
                Some(sdpa),
                (p0 + 2, p0 + 3),
                n,
                (e, e),
            );
            // The output's transpose reshaped for the out-projection's gradient: a copy.
            grad_fn = Some(self.grad_node(i, o, n, "aten.clone.default"));
        }
        for s in [copy, proj, out, lse] {
            self.sim.decref(s);
        }
        plain(result, grad_fn, el)
    }

    /// `nn.MultiheadAttention(batch_first=True)` as self-attention with
    /// `need_weights=False` on CUDA, as PyTorch 2.11 runs it on an H200 (the allocator
    /// traces of tools/gpu_check.py, crates/memory/tests/fixtures/gpu/):
    /// - forward: under autocast the in-projection's weight and bias cast to half
    ///   (cached for the forward) and the input cast (freed after the matmul); the
    ///   transposed input made contiguous (kept by MmBackward0), `mm`, `+ bias` (the q,
    ///   k, v views of it kept by the attention; no packed copy); in fp32 the
    ///   memory-efficient kernel (output and log-sum-exp padded to 32 tokens, then the
    ///   output made contiguous for the out-projection, which keeps that copy), in half
    ///   precision the flash kernel (its output already in the out-projection's layout,
    ///   log-sum-exp unpadded, and the RNG seed and offset); the out-projection `addmm`;
    /// - backward: the output gradient reshaped (a copy), the out-projection's grads, the
    ///   attention's three gradients, `select_backward` into the packed size for each
    ///   (added in place), a reshape copy of the packed gradient, the bias sum, the
    ///   in-projection's grads; under autocast each parameter's gradient cast to fp32
    ///   and the input's gradient cast back to the input's dtype.
    fn attention_cuda(
        &mut self,
        i: usize,
        x: Value,
        e: u128,
        heads: u128,
        train: bool,
        amp_cache: &mut Vec<Sid>,
    ) -> Value {
        let g = self.g;
        let b = self.micro;
        let t = g.shapes[i][0] as u128;
        let amp = self.amp();
        let el = if amp { 2 } else { x.elem };
        // Parameter gradients come in the dtype the matmul ran in.
        let ge = if amp { 2 } else { self.param_elem };
        let n = b * t * e * el;
        let n_in = b * t * e * x.elem;
        let p0 = self.node_of_param[i];
        let in_weight = amp.then(|| self.autocast_weight(3 * e, e, amp_cache));
        let cast_in = amp.then(|| self.op(n, "aten._to_copy.default"));
        let copy = self.op(n, "aten.clone.default");
        let mm = self.op(3 * n, "aten.mm.default");
        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
        if let Some(c) = cast_in {
            self.sim.decref(c);
        }
        let biased = self.op(3 * n, "aten.add.Tensor");
        self.sim.decref(mm);
        let mut kept = vec![biased];
        let (out, lse, proj_in) = if amp {
            for _ in 0..2 {
                kept.push(self.sim.alloc(8, None));
            }
            let out = self.sim.alloc(n, None);
            let lse = self.sim.alloc(b * heads * t * 4, None);
            self.sim
                .boundary("aten._scaled_dot_product_flash_attention.default");
            self.sim.incref(out);
            (out, lse, out)
        } else {
            let out = self.sim.alloc(n, None);
            let lse = self.sim.alloc(b * heads * t.div_ceil(32) * 32 * 4, None);
            self.sim
                .boundary("aten._scaled_dot_product_efficient_attention.default");
            let contiguous = self.op(n, "aten.clone.default");
            (out, lse, contiguous)
        };
        kept.extend([out, lse]);
        let out_weight = amp.then(|| self.autocast_weight(e, e, amp_cache));
        let result = self.op(n, "aten.addmm.default");
        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
        self.sim.cublaslt_workspace();
        let mut grad_fn = None;
        if train {
            // Under autocast the input's gradient goes back through the cast.
            let to_x = x.grad_fn.map(|f| {
                if amp && x.elem != 2 {
                    (self.grad_node(i, f, n_in, "aten._to_copy.default"), n)
                } else {
                    (f, n)
                }
            });
            // MmBackward0 of the in-projection: the weight's gradient first.
            let mut edges = vec![(Edge::Param(p0), Grad::Alloc(3 * e * e * ge))];
            let mut ops = vec![("aten.mm.default", vec![0])];
            if let Some((f, bytes)) = to_x {
                edges.push((Edge::Node(f), Grad::Alloc(bytes)));
                ops.push(("aten.mm.default", vec![1]));
            }
            let bias_to = self.bias_grad_edge(i, p0 + 1, 3 * e * 4);
            let mut saved = vec![copy];
            saved.extend(in_weight);
            let a = self.record(i, saved, edges, ops);
            if amp {
                self.nodes[a].casts.push((0, 3 * e * e * 4));
            }
            // AddBackward0 of the in-projection's bias.
            let bias = self.record(
                i,
                vec![],
                vec![
                    (Edge::Node(a), Grad::Pass),
                    (bias_to, Grad::SumTo(3 * e * ge)),
                ],
                vec![],
            );
            let select = self.packed_qkv_grads(i, bias, 3 * n);
            let label = if amp {
                "aten._scaled_dot_product_flash_attention_backward.default"
            } else {
                "aten._scaled_dot_product_efficient_attention_backward.default"
            };
            let sdpa = self.record(
                i,
                kept.clone(),
                select
                    .iter()
                    .map(|&v| (Edge::Node(v), Grad::Alloc(n)))
                    .collect(),
                vec![(label, vec![0, 1, 2])],
            );
            // AddmmBackward0 of the out-projection: bias, input, weight.
            let o = self.projection_backward(
                i,
                Some(proj_in),
                out_weight,
                Some(sdpa),
                (p0 + 2, p0 + 3),
                n,
                (e, e),
            );
            // The output's transpose reshaped for the out-projection's gradient: a copy.
            grad_fn = Some(self.grad_node(i, o, n, "aten.clone.default"));
        }
        self.sim.decref(copy);
        self.sim.decref(proj_in);
        for s in kept {
            self.sim.decref(s);
        }
        plain(result, grad_fn, el)
    }

    /// CUDA: cuDNN's workspace for one convolution kernel ([`crate::cudnn`]), capped
    /// by `--cudnn-workspace`.
    fn conv_workspace(&mut self, c: &Conv2d, pass: ConvPass, t: ConvTensors) {
        if !self.rules.cuda {
            return;
        }
        let bytes = crate::cudnn::conv_workspace_bytes(c, pass, t);
        let cap = self.cfg.cudnn_workspace_bytes.unwrap_or(u128::MAX);
        self.sim.cudnn_workspace(bytes.min(cap), pass.op());
    }

    /// The tensors of graph node `i`'s convolution at this batch, in `elem`-byte values.
    fn conv_tensors(&self, i: usize, elem: u128) -> ConvTensors {
        let (g, b) = (self.g, self.micro);
        ConvTensors {
            batch: b,
            input: b * g.numel(g.nodes()[i].inputs[0]),
            output: b * g.numel(i),
            weight: g.node_params(i)[0].numel(),
            elem,
        }
    }

    /// The workspace of the backward kernel that has just allocated `edge`'s gradient
    /// of `bytes` for backward node `k`'s convolution: the input's or the weight's (the
    /// bias's is a sum, without one). The gradient's size gives the element size (half
    /// under autocast).
    fn conv_backward_workspace(&mut self, k: usize, edge: Edge, bytes: u128) {
        let i = self.nodes[k].node;
        let Some(Op::Conv2d(c)) = self.g.nodes().get(i).map(|n| &n.op) else {
            return;
        };
        let t = self.conv_tensors(i, 1);
        let (pass, elem) = match edge {
            Edge::Node(_) => (ConvPass::BackwardData, bytes / t.input.max(1)),
            Edge::Param(p) if p == self.node_of_param[i] => {
                (ConvPass::BackwardFilter, bytes / t.weight.max(1))
            }
            Edge::Param(_) => return,
        };
        self.conv_workspace(c, pass, ConvTensors { elem, ..t });
    }

    /// CUDA: the reduce kernel's staging buffer and semaphores while it sums `grad` down
    /// to `bytes` (a bias's gradient), allocated and freed around the kernel.
    fn reduce_staging(&mut self, grad: Sid, bytes: u128) {
        // Gradients run in half precision under autocast, fp32 otherwise.
        let el = if self.amp() { 2 } else { self.param_elem };
        let outputs = bytes / self.param_elem;
        if outputs == 0 {
            return;
        }
        let rows = self.sim.bytes(grad) / el / outputs;
        let staging = crate::reduce_staging_bytes(
            rows,
            outputs,
            self.cfg.gpu_sms,
            self.cfg.gpu_max_threads_per_sm,
        );
        if let Some((buffer, semaphores)) = staging {
            let a = self.sim.alloc(buffer, None);
            let s = self.sim.alloc(semaphores, None);
            self.sim.boundary("aten.sum.dim_IntList");
            self.sim.decref(s);
            self.sim.decref(a);
        }
    }

    /// Where an in-projection's bias gradient goes: under autocast through its cast's
    /// ToCopyBackward0, recorded before the matmul's node so that the engine runs it
    /// after that node's own casts (measured on the CPU: the bias's fp32 gradient is
    /// made last), else to the parameter itself.
    fn bias_grad_edge(&mut self, i: usize, p: usize, fp32_bytes: u128) -> Edge {
        if !self.amp() {
            return Edge::Param(p);
        }
        Edge::Node(self.record(
            i,
            vec![],
            vec![(Edge::Param(p), Grad::Alloc(fp32_bytes))],
            vec![("aten._to_copy.default", vec![0])],
        ))
    }

    /// Autocast's half copies of a projection's bias (`out_f`) and weight (`out_f` x
    /// `in_f`), cached until autocast exits; the weight's copy is what the matmul's
    /// backward keeps.
    fn autocast_weight(&mut self, out_f: u128, in_f: u128, amp_cache: &mut Vec<Sid>) -> Sid {
        self.autocast_copies(out_f, in_f, true, amp_cache).1
    }

    /// The same, where the bias is a parameter (`bias_leaf`): autocast caches the copy
    /// of a leaf only, so a computed bias's copy (Swin V2's zeroed qkv bias) is returned
    /// for the caller to drop after its matmul.
    fn autocast_copies(
        &mut self,
        out_f: u128,
        in_f: u128,
        bias_leaf: bool,
        amp_cache: &mut Vec<Sid>,
    ) -> (Option<Sid>, Sid) {
        let bias = self.op(out_f * 2, "aten._to_copy.default");
        let weight = self.op(out_f * in_f * 2, "aten._to_copy.default");
        if bias_leaf {
            amp_cache.extend([bias, weight]);
            (None, weight)
        } else {
            amp_cache.push(weight);
            (Some(bias), weight)
        }
    }

    /// AddmmBackward0 of a projection (`in_f` -> `out_f`, parameters `p_w` and `p_b`)
    /// keeping `input` (for the weight's gradient) and the half weight (for the input's):
    /// the bias's gradient summed, the input's of `in_bytes` (when it goes `to` a node)
    /// and the weight's by `mm`; under autocast each parameter's gradient is cast back to
    /// fp32 by its own node, the weight's first.
    #[allow(clippy::too_many_arguments)]
    fn projection_backward(
        &mut self,
        i: usize,
        input: Option<Sid>,
        half_weight: Option<Sid>,
        to: Option<usize>,
        (p_w, p_b): (usize, usize),
        in_bytes: u128,
        (in_f, out_f): (u128, u128),
    ) -> usize {
        let ge = if self.amp() { 2 } else { self.param_elem };
        let saved = input.into_iter().chain(half_weight).collect();
        let mut edges = vec![(Edge::Param(p_b), Grad::SumTo(out_f * ge))];
        let mut ops = Vec::new();
        if let Some(to) = to {
            edges.push((Edge::Node(to), Grad::Alloc(in_bytes)));
            ops.push(("aten.mm.default", vec![1]));
        }
        edges.push((Edge::Param(p_w), Grad::Alloc(out_f * in_f * ge)));
        let w = edges.len() - 1;
        ops.push(("aten.mm.default", vec![w]));
        let o = self.record(i, saved, edges, ops);
        if self.amp() {
            self.nodes[o]
                .casts
                .extend([(w, out_f * in_f * 4), (0, out_f * 4)]);
        }
        o
    }

    /// The backward of a packed q/k/v projection's split: q, k and v each selected into
    /// a gradient of the packed size (`select_backward`, added up into one), reshaped
    /// (copied) back to the projection's output, which goes to `to`. The three nodes the
    /// q, k and v gradients arrive at.
    fn packed_qkv_grads(&mut self, i: usize, to: usize, packed_bytes: u128) -> Vec<usize> {
        let packed = self.grad_node(i, to, packed_bytes, "aten.clone.default");
        (0..3)
            .map(|_| self.grad_node(i, packed, packed_bytes, "aten.select_backward.default"))
            .collect()
    }

    /// The backward node of an add or a concatenation of node `i` (it keeps nothing),
    /// each input `(value, node)` with how it gets its gradient; under autocast a half
    /// input that met an fp32 one (the output's `elem`) gets the fp32 gradient cast to
    /// its dtype by the engine's `validate_outputs`. `None` in inference or when no input
    /// needs a gradient.
    fn record_mixed(
        &mut self,
        i: usize,
        train: bool,
        elem: u128,
        ins: &[(&(Value, usize), Grad)],
    ) -> Option<usize> {
        let mut edges = Vec::new();
        let mut to_dtype = Vec::new();
        for ((v, j), how) in ins {
            if let Some(e) = edge(v, *how) {
                if v.leaf.is_none() && v.elem < elem {
                    to_dtype.push((edges.len(), self.value_bytes(v, *j)));
                }
                edges.push(e);
            }
        }
        if !train || edges.is_empty() {
            return None;
        }
        let k = self.record(i, vec![], edges, vec![]);
        self.nodes[k].to_dtype = to_dtype;
        Some(k)
    }

    /// A chain of copies in backward: `node` receives the gradient, passes a new
    /// tensor of `bytes` made by `label` to `to`.
    fn copy_node(&mut self, i: usize, to: usize, bytes: u128, label: &'static str) -> usize {
        self.grad_node(i, to, bytes, label)
    }

    /// IndexBackward0 of a relative position bias gathered from its table: the
    /// table's gradient is `new_zeros` then an out-of-place `index_put` into it.
    fn index_backward(&mut self, i: usize, to: Edge, bytes: u128) -> usize {
        self.record(
            i,
            vec![],
            vec![(to, Grad::Alloc(bytes))],
            vec![
                ("aten.new_zeros.default", vec![0]),
                ("aten.index_put.default", vec![0]),
            ],
        )
    }

    /// torchvision's `ShiftedWindowAttention` (V1) on `[H, W, C]`, op for op as PyTorch
    /// 2.15 runs it on the CPU (measured with /work/notes/mbv2/trace.py on a small Swin):
    /// - forward: the relative position bias gathered (`index`) and made contiguous (a
    ///   copy); `F.pad` (a copy even when nothing is padded); `roll` when shifted;
    ///   the window partition's reshape (a copy, kept by the qkv `addmm`); `q * scale`
    ///   (its layout follows the permuted q); q and k made contiguous for `bmm` (kept);
    ///   `+ bias`; the shifted windows' mask (`new_zeros`, a reshape copy, `sub`, `ne`,
    ///   `masked_fill`, `eq`, `masked_fill`) and `+ mask`; softmax (its result kept);
    ///   v made contiguous (kept); `bmm`; the heads' reshape (a copy, kept by the
    ///   projection's `addmm`); the window reverse's reshape (a copy); `roll` back; the
    ///   crop's `contiguous()` when padded;
    /// - backward, in reverse: the crop's `slice_backward`s, `roll`, the reverse's
    ///   reshape copy, the projection's grads, the heads' reshape copy, `bmm` grads (v,
    ///   then the attention), softmax's, the bias sum, `bmm` grads (k, then q), `q`'s
    ///   scale, three `select_backward`s of the packed qkv (added up out of place), its
    ///   reshape copy, the qkv grads, the partition's reshape copy, `roll`, the pad's
    ///   slice; the bias table's `new_zeros` and `index_put` last.
    ///
    /// The partition's and reverse's reshapes are views when the windows do not move
    /// (one window across, or windows one row high). V2 (measured the same way): the
    /// bias from `cpb_mlp` (`addmm`, in-place ReLU, `mm`, kept for backward), `sigmoid`
    /// and `* 16`; the qkv bias copied with its k part zeroed (CopySlices rebuilds its
    /// gradient); `F.normalize` of q and k (norm, `clamp_min`, `div`, keeping q and k,
    /// so the packed qkv lives to backward); `* logit_scale.clamp().exp()`.
    fn window_attention(
        &mut self,
        i: usize,
        x: Value,
        w: &vramlab_graph::op::WindowAttention,
        train: bool,
        amp_cache: &mut Vec<Sid>,
    ) -> Value {
        let g = self.g;
        let b = self.micro;
        let el = x.elem;
        let pe = self.param_elem;
        let p0 = self.node_of_param[i];
        let shape = &g.shapes[i];
        let (h, wd, c) = (shape[0] as u128, shape[1] as u128, shape[2] as u128);
        let (w0, w1) = (w.window.0 as u128, w.window.1 as u128);
        let (hp, wp) = (h.div_ceil(w0) * w0, wd.div_ceil(w1) * w1);
        let s0 = if w0 >= hp { 0 } else { w.shift.0 };
        let s1 = if w1 >= wp { 0 } else { w.shift.1 };
        let shifted = s0 + s1 > 0;
        let heads = w.heads as u128;
        let n = w0 * w1;
        let nw = (hp / w0) * (wp / w1);
        let x0 = b * h * wd * c * el;
        let xb = b * hp * wp * c * el;
        // Under autocast the projections and matmuls run in half precision: their
        // outputs and gradients are half; adding the fp32 position bias promotes the
        // scores to fp32, softmax stays fp32, and its result is cast back for `@ v`.
        let amp = self.amp();
        let hel = if amp { 2 } else { el };
        // V1's bias is gathered from the table, in the table's dtype, and the scores it
        // is added to (then the softmax) take that dtype too under autocast. V2's comes
        // out of its MLP in the matmuls' dtype, and the fp32 logit scale the scores are
        // multiplied by promotes them instead.
        let te = if w.v2 { hel } else { pe };
        let att = b * nw * heads * n * n * if w.v2 && amp { pe } else { el.max(te) };
        let tb = n * n * heads * te;
        let table_rows = w.table_len() as u128;
        let ge = if amp { 2 } else { pe };
        let xh = b * hp * wp * c * hel;
        let att_h = b * nw * heads * n * n * hel;
        // Parameters: v1 [table, qkv.w, qkv.b, proj.w, proj.b]; v2 [logit_scale, qkv.w,
        // qkv.b, proj.w, proj.b, cpb0.w, cpb0.b, cpb2.w].
        let mut temps = Vec::new();
        // The relative position bias; `bias_grad` is the node its gradient goes to.
        let (bias, bias_grad) = if w.v2 {
            // cpb_mlp on the coordinates table: addmm, ReLU in place (keeps its
            // result, which the next mm keeps too), mm; index, copy, sigmoid, * 16.
            // Under autocast its Linears run in half precision: their bias and weight
            // cast (cached), and the fp32 coordinates (kept by the addmm for the
            // weight's gradient); measured on the CPU (tests/cpu_amp.rs, Swin V2).
            let mut coords = None;
            let mut w2_cast = None;
            if amp {
                // The addmm keeps no weight: its input needs no gradient.
                let _ = self.autocast_weight(512, 2, amp_cache);
                coords = Some(self.op(table_rows * 2 * 2, "aten._to_copy.default"));
            }
            let hidden = self.op(table_rows * 512 * hel, "aten.addmm.default");
            self.sim.boundary("aten.relu_.default");
            if amp {
                let w2 = self.op(heads * 512 * 2, "aten._to_copy.default");
                amp_cache.push(w2);
                w2_cast = Some(w2);
            }
            let mm = self.op(table_rows * heads * hel, "aten.mm.default");
            let idx = self.op(tb, "aten.index.Tensor");
            let cl = self.op(tb, "aten.clone.default");
            self.sim.decref(idx);
            self.sim.decref(mm);
            let sig = self.op(tb, "aten.sigmoid.default");
            let bias = self.op(tb, "aten.mul.Tensor");
            self.sim.decref(cl);
            let node = train.then(|| {
                // AddmmBackward0 (bias, weight; its input needs no grad), ReLU's,
                // MmBackward0 (the weight), IndexBackward0's scatter, sigmoid's, * 16.
                // Under autocast each weight's and bias's half gradient is cast back
                // by its own node, the weight's first (its cast was made last).
                let lin =
                    self.projection_backward(i, coords, None, None, (p0 + 5, p0 + 6), 0, (2, 512));
                let relu = self.record(
                    i,
                    vec![hidden],
                    vec![(Edge::Node(lin), Grad::Alloc(table_rows * 512 * hel))],
                    vec![("aten.threshold_backward.default", vec![0])],
                );
                let mut saved = vec![hidden];
                saved.extend(w2_cast);
                let mm_node = self.record(
                    i,
                    saved,
                    vec![
                        (Edge::Node(relu), Grad::Alloc(table_rows * 512 * hel)),
                        (Edge::Param(p0 + 7), Grad::Alloc(heads * 512 * ge)),
                    ],
                    vec![("aten.mm.default", vec![1]), ("aten.mm.default", vec![0])],
                );
                if amp {
                    self.nodes[mm_node].casts.push((1, heads * 512 * 4));
                }
                let zeros = self.index_backward(i, Edge::Node(mm_node), table_rows * heads * hel);
                let sig_node = self.record(
                    i,
                    vec![sig],
                    vec![(Edge::Node(zeros), Grad::Alloc(tb))],
                    vec![("aten.sigmoid_backward.default", vec![0])],
                );
                self.copy_node(i, sig_node, tb, "aten.mul.Tensor")
            });
            self.sim.decref(hidden);
            self.sim.decref(sig);
            if let Some(c) = coords {
                self.sim.decref(c);
            }
            (bias, node)
        } else {
            let idx = self.op(tb, "aten.index.Tensor");
            let bias = self.op(tb, "aten.clone.default");
            self.sim.decref(idx);
            let node =
                train.then(|| self.index_backward(i, Edge::Param(p0), table_rows * heads * pe));
            (bias, node)
        };
        temps.push(bias);
        let pad = self.op(xb, "aten.constant_pad_nd.default");
        let pad_node = train
            .then(|| {
                x.grad_fn
                    .map(|f| self.grad_node(i, f, x0, "aten.constant_pad_nd.default"))
            })
            .flatten();
        let mut cur = pad;
        let mut node = pad_node;
        if shifted {
            let r = self.op(xb, "aten.roll.default");
            self.sim.decref(cur);
            cur = r;
            node = node.map(|k| self.copy_node(i, k, xb, "aten.roll.default"));
        }
        // The partition's permute swaps a window row with the windows across; unless
        // one of them has size 1, the reshape copies (and so does its gradient's).
        let moves = wp / w1 > 1 && w0 > 1;
        let xw = if moves {
            let xw = self.op(xb, "aten.clone.default");
            self.sim.decref(cur);
            node = node.map(|k| self.copy_node(i, k, xb, "aten.clone.default"));
            xw
        } else {
            cur
        };
        // v2 zeroes the k part of a copy of the qkv bias.
        let mut bias_slices = None;
        if w.v2 {
            let cb = self.op(3 * c * pe, "aten.clone.default");
            self.sim.boundary("aten.zero_.default");
            temps.push(cb);
            // CopySlices of `qkv_bias[C:2C].zero_()`: the bias's gradient rebuilt.
            bias_slices = train.then(|| {
                self.record(
                    i,
                    vec![],
                    vec![(Edge::Param(p0 + 2), Grad::Alloc(3 * c * pe))],
                    vec![("aten.new_empty_strided.default", vec![0])],
                )
            });
        }
        let mut qkv_weight = None;
        let mut qkv_bias_cast = None;
        let mut mm_in = xw;
        if amp {
            // V2's bias is the zeroed copy, not a parameter: its cast dies after the
            // addmm (measured on the CPU).
            let (bias_cast, weight) = self.autocast_copies(3 * c, c, !w.v2, amp_cache);
            qkv_bias_cast = bias_cast;
            qkv_weight = Some(weight);
            // An fp32 input (CUDA's autocast runs layer_norm in fp32) is cast; the CPU's
            // layer_norm already gives half precision.
            if el != hel {
                mm_in = self.op(xh, "aten._to_copy.default");
                self.sim.decref(xw);
                node = node.map(|k| self.copy_node(i, k, xb, "aten._to_copy.default"));
            }
        }
        let qkv = self.op(3 * xh, "aten.addmm.default");
        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
        if let Some(cast) = qkv_bias_cast {
            self.sim.decref(cast);
        }
        temps.push(qkv);
        let qkv_node = train.then(|| {
            let bias_edge = match bias_slices {
                Some(k) => Edge::Node(k),
                None => Edge::Param(p0 + 2),
            };
            let bias_is_param = matches!(bias_edge, Edge::Param(_));
            let mut edges = vec![(bias_edge, Grad::SumTo(3 * c * ge))];
            let mut ops = Vec::new();
            if let Some(k) = node {
                edges.push((Edge::Node(k), Grad::Alloc(xh)));
                ops.push(("aten.mm.default", vec![1]));
            }
            edges.push((Edge::Param(p0 + 1), Grad::Alloc(3 * c * c * ge)));
            let weight_edge = edges.len() - 1;
            ops.push(("aten.mm.default", vec![weight_edge]));
            let mut saved = vec![mm_in];
            saved.extend(qkv_weight);
            let a = self.record(i, saved, edges, ops);
            if amp {
                self.nodes[a].casts.push((weight_edge, 3 * c * c * 4));
                if bias_is_param {
                    self.nodes[a].casts.push((0, 3 * c * 4));
                }
            }
            // The packed q/k/v's reshape; its permuted gradient is copied back.
            self.packed_qkv_grads(i, a, 3 * xh)
        });
        self.sim.decref(mm_in);
        let mut after_bmm = Vec::new();
        // q and k as bmm reads them, and the node q's gradient goes to.
        let (qc, kc, q_node, k_node) = if w.v2 {
            // F.normalize(q) and F.normalize(k): the norm, clamp_min, div (keeping the
            // input and the clamped norm); then contiguous copies for bmm.
            let rows = b * nw * heads * n * hel;
            let mut outs = Vec::new();
            let mut nodes = Vec::new();
            for s in 0..2 {
                let norm = self.op(rows, "aten.linalg_vector_norm.default");
                let clamped = self.op(rows, "aten.clamp_min.default");
                let div = self.op(xh, "aten.div.Tensor");
                let nd = qkv_node.as_ref().map(|sel| {
                    // DivBackward0 (both: the input's part and the norm's), then the
                    // clamp's and the norm's backward into the select; the norm and
                    // the division keep q, a view of the packed qkv.
                    let norm_node = self.record(
                        i,
                        vec![qkv, norm],
                        vec![(Edge::Node(sel[s]), Grad::Alloc(xh))],
                        vec![("aten.mul.Tensor", vec![0])],
                    );
                    let clamp_node = self.record(
                        i,
                        vec![norm],
                        vec![(Edge::Node(norm_node), Grad::Alloc(rows))],
                        vec![("aten.where.self", vec![0])],
                    );
                    self.record(
                        i,
                        vec![qkv, clamped],
                        vec![
                            (Edge::Node(sel[s]), Grad::Alloc(xh)),
                            (Edge::Node(clamp_node), Grad::AllocSumTo(xh, rows)),
                        ],
                        vec![("aten.div.Tensor", vec![0]), ("aten.div.Tensor", vec![1])],
                    )
                });
                self.sim.decref(norm);
                self.sim.decref(clamped);
                outs.push(div);
                nodes.push(nd);
            }
            let qc = self.op(xh, "aten.clone.default");
            let kc = self.op(xh, "aten.clone.default");
            after_bmm = outs;
            (qc, kc, nodes[0], nodes[1])
        } else {
            let qs = self.op(xh, "aten.mul.Tensor");
            temps.push(qs);
            let q_node = qkv_node
                .as_ref()
                .map(|sel| self.copy_node(i, sel[0], xh, "aten.mul.Tensor"));
            let qc = self.op(xh, "aten.clone.default");
            let kc = self.op(xh, "aten.clone.default");
            (qc, kc, q_node, qkv_node.as_ref().map(|sel| sel[1]))
        };
        let dots = self.op(att_h, "aten.bmm.default");
        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
        let bmm1 = train.then(|| {
            let mut edges = Vec::new();
            let mut ops = Vec::new();
            if let Some(k) = k_node {
                edges.push((Edge::Node(k), Grad::Alloc(xh)));
                ops.push(("aten.bmm.default", vec![edges.len() - 1]));
            }
            if let Some(q) = q_node {
                edges.push((Edge::Node(q), Grad::Alloc(xh)));
                ops.push(("aten.bmm.default", vec![edges.len() - 1]));
            }
            self.record(i, vec![qc, kc], edges, ops)
        });
        self.sim.decref(qc);
        self.sim.decref(kc);
        for t in after_bmm {
            self.sim.decref(t);
        }
        let mut scores = dots;
        let mut score_node = bmm1;
        if w.v2 {
            // logit_scale: clamp, exp (kept); attn * scale (MulBackward0 keeps both).
            let clamp = self.op(heads * pe, "aten.clamp.default");
            let exp = self.op(heads * pe, "aten.exp.default");
            self.sim.decref(clamp);
            // Under autocast the fp32 scale promotes the half scores: the product is
            // fp32, and so is its gradient, which the engine casts down for the bmm.
            let scaled = self.op(att, "aten.mul.Tensor");
            score_node = score_node.map(|k| {
                let clamp_node = self.record(
                    i,
                    vec![],
                    vec![(Edge::Param(p0), Grad::Alloc(heads * pe))],
                    vec![("aten.where.self", vec![0])],
                );
                let exp_node = self.record(
                    i,
                    vec![exp],
                    vec![(Edge::Node(clamp_node), Grad::Alloc(heads * pe))],
                    vec![("aten.mul.Tensor", vec![0])],
                );
                let m = self.record(
                    i,
                    vec![exp, scores],
                    vec![
                        (Edge::Node(k), Grad::Alloc(att)),
                        (Edge::Node(exp_node), Grad::AllocSumTo(att, heads * pe)),
                    ],
                    vec![("aten.mul.Tensor", vec![0]), ("aten.mul.Tensor", vec![1])],
                );
                if att != att_h {
                    self.nodes[m].to_dtype.push((0, att_h));
                }
                m
            });
            self.sim.decref(exp);
            self.sim.decref(scores);
            scores = scaled;
        }
        let biased = self.op(att, "aten.add.Tensor");
        self.sim.decref(scores);
        let add_node = score_node.map(|k| {
            // Under autocast the half scores' gradient is the fp32 one cast down (V1's;
            // V2's scores are fp32 already, and its half bias takes the fp32 sum cast
            // down by the engine).
            let (how, ops) = if amp && !w.v2 {
                (Grad::Alloc(att_h), vec![("aten._to_copy.default", vec![0])])
            } else {
                (Grad::Pass, vec![])
            };
            let mut edges = vec![(Edge::Node(k), how)];
            let half_bias = w.v2 && amp;
            if let Some(bg) = bias_grad {
                let sum = if half_bias { n * n * heads * pe } else { tb };
                edges.push((Edge::Node(bg), Grad::SumTo(sum)));
            }
            let a = self.record(i, vec![], edges, ops);
            if half_bias && bias_grad.is_some() {
                self.nodes[a].to_dtype.push((1, tb));
            }
            a
        });
        let mut scores = biased;
        if shifted {
            let plane = hp * wp * el;
            let pairs = nw * n * n;
            let zeros = self.op(plane, "aten.new_zeros.default");
            let cl = self.op(plane, "aten.clone.default");
            self.sim.decref(zeros);
            let sub = self.op(pairs * el, "aten.sub.Tensor");
            self.sim.decref(cl);
            let ne = self.op(pairs, "aten.ne.Scalar");
            let f1 = self.op(pairs * el, "aten.masked_fill.Scalar");
            self.sim.decref(ne);
            let eq = self.op(pairs, "aten.eq.Scalar");
            let mask = self.op(pairs * el, "aten.masked_fill.Scalar");
            for t in [sub, f1, eq] {
                self.sim.decref(t);
            }
            let masked = self.op(att, "aten.add.Tensor");
            self.sim.decref(scores);
            scores = masked;
            temps.push(mask);
        }
        let (probs, soft) = self.softmax(i, att, add_node);
        self.sim.decref(scores);
        // Autocast casts the fp32 probabilities down for `@ v` (the cast is kept).
        let (probs_mm, soft) = if amp {
            let cast = self.op(att_h, "aten._to_copy.default");
            self.sim.decref(probs);
            let node = soft.map(|k| self.copy_node(i, k, att, "aten._to_copy.default"));
            (cast, node)
        } else {
            (probs, soft)
        };
        let vc = self.op(xh, "aten.clone.default");
        let ctx = self.op(xh, "aten.bmm.default");
        let bmm2 = soft.map(|k| {
            let mut edges = Vec::new();
            let mut ops = Vec::new();
            if let Some(sel) = &qkv_node {
                edges.push((Edge::Node(sel[2]), Grad::Alloc(xh)));
                ops.push(("aten.bmm.default", vec![0]));
            }
            edges.push((Edge::Node(k), Grad::Alloc(att_h)));
            ops.push(("aten.bmm.default", vec![edges.len() - 1]));
            self.record(i, vec![probs_mm, vc], edges, ops)
        });
        self.sim.decref(probs_mm);
        self.sim.decref(vc);
        let heads_cat = self.op(xh, "aten.clone.default");
        self.sim.decref(ctx);
        let reshaped = bmm2.map(|k| self.copy_node(i, k, xh, "aten.clone.default"));
        let proj_weight = amp.then(|| self.autocast_weight(c, c, amp_cache));
        let proj = self.op(xh, "aten.addmm.default");
        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
        self.sim.cublaslt_workspace();
        let proj_node = reshaped.map(|k| {
            self.projection_backward(
                i,
                Some(heads_cat),
                proj_weight,
                Some(k),
                (p0 + 3, p0 + 4),
                xh,
                (c, c),
            )
        });
        self.sim.decref(heads_cat);
        let (mut out, mut grad_fn) = if moves {
            let out = self.op(xh, "aten.clone.default");
            self.sim.decref(proj);
            (
                out,
                proj_node.map(|k| self.copy_node(i, k, xh, "aten.clone.default")),
            )
        } else {
            (proj, proj_node)
        };
        if shifted {
            let r = self.op(xh, "aten.roll.default");
            self.sim.decref(out);
            out = r;
            grad_fn = grad_fn.map(|k| self.copy_node(i, k, xh, "aten.roll.default"));
        }
        if hp != h || wp != wd {
            // x[:, :H, :W, :].contiguous(): a slice per cropped dimension, a copy.
            let cropped = self.op(b * h * wd * c * hel, "aten.clone.default");
            self.sim.decref(out);
            out = cropped;
            if hp != h {
                grad_fn = grad_fn.map(|k| self.copy_node(i, k, xh, "aten.slice_backward.default"));
            }
            if wp != wd {
                let part = b * h * wp * c * hel;
                grad_fn =
                    grad_fn.map(|k| self.copy_node(i, k, part, "aten.slice_backward.default"));
            }
        }
        for t in temps {
            self.sim.decref(t);
        }
        plain(out, grad_fn, hel)
    }

    /// Swin's `_patch_merging_pad`: `F.pad` (a copy even when nothing is padded), the
    /// four strided 2x2 slices (views), `cat` on the channels. Backward: each slice's
    /// gradient is a view of the concatenation's, scattered by two `slice_backward`s
    /// (rows of the padded size, then all of it), added up out of place, then the pad's
    /// slice.
    fn patch_merge(&mut self, i: usize, x: Value, train: bool) -> Value {
        let g = self.g;
        let b = self.micro;
        let el = x.elem;
        let inp = &g.shapes[g.nodes()[i].inputs[0]];
        let (h, w, c) = (inp[0] as u128, inp[1] as u128, inp[2] as u128);
        let (hp, wp) = (h.div_ceil(2) * 2, w.div_ceil(2) * 2);
        let padded = b * hp * wp * c * el;
        let pad = self.op(padded, "aten.constant_pad_nd.default");
        let out = self.op(padded, "aten.cat.default");
        self.sim.decref(pad);
        let grad_fn = if train {
            x.grad_fn.map(|f| {
                let pad_node =
                    self.grad_node(i, f, b * h * w * c * el, "aten.constant_pad_nd.default");
                let parts: Vec<usize> = (0..4)
                    .map(|_| {
                        let rows =
                            self.copy_node(i, pad_node, padded, "aten.slice_backward.default");
                        self.copy_node(i, rows, padded / 2, "aten.slice_backward.default")
                    })
                    .collect();
                self.record(
                    i,
                    vec![],
                    parts
                        .iter()
                        .map(|&k| (Edge::Node(k), Grad::View(padded / 4)))
                        .collect(),
                    vec![],
                )
            })
        } else {
            None
        };
        plain(out, grad_fn, el)
    }

    /// MaxViT's `RelativePositionalMultiHeadAttention` on `[G, P, D]`: the qkv linear,
    /// chunk and head views, `k * scale`, the einsums as `bmm` on contiguous copies,
    /// the gathered bias, softmax, the heads' reshape and `merge`. Modelled after the
    /// measured Swin attention, not measured itself.
    fn rel_pos_attention(
        &mut self,
        i: usize,
        x: Value,
        head_dim: u128,
        train: bool,
        amp_cache: &mut Vec<Sid>,
    ) -> Value {
        let g = self.g;
        let b = self.micro;
        let amp = self.amp();
        // Under autocast the projections and both matrix products run in half
        // precision; the bias gathered from the fp32 table promotes the scores it is
        // added to (and so the softmax) to fp32, and the second product casts the
        // probabilities back (its ToCopyBackward0 casts their gradient up again).
        let el = if amp { 2 } else { x.elem };
        let pe = if amp { 2 } else { self.param_elem };
        let te = self.param_elem;
        let p0 = self.node_of_param[i];
        let shape = &g.shapes[i];
        let (groups, p, d) = (shape[0] as u128, shape[1] as u128, shape[2] as u128);
        let heads = d / head_dim.max(1);
        let xb = b * groups * p * d * el;
        let att = b * groups * heads * p * p * el;
        let att_biased = b * groups * heads * p * p * el.max(te);
        let tb = p * p * heads * te;
        let table = self.g.node_params(i)[0].numel() * te;
        let qkv_weight = amp.then(|| self.autocast_weight(3 * d, d, amp_cache));
        let cast_in = (x.elem != el).then(|| self.op(xb, "aten._to_copy.default"));
        let qkv = self.op(3 * xb, "aten.addmm.default");
        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
        let sel = train.then(|| {
            let mut edges = vec![(Edge::Param(p0 + 2), Grad::SumTo(3 * d * pe))];
            let mut ops = Vec::new();
            if let Some(f) = x.grad_fn {
                edges.push((Edge::Node(f), Grad::Alloc(xb)));
                ops.push(("aten.mm.default", vec![1]));
            }
            edges.push((Edge::Param(p0 + 1), Grad::Alloc(3 * d * d * pe)));
            let w = edges.len() - 1;
            ops.push(("aten.mm.default", vec![w]));
            let mut saved = vec![cast_in.unwrap_or(x.sid)];
            saved.extend(qkv_weight);
            let a = self.record(i, saved, edges, ops);
            if amp {
                // The input's cast (made last) first, then the weight's, the bias's.
                if cast_in.is_some() && x.grad_fn.is_some() {
                    self.nodes[a].casts.push((1, b * groups * p * d * x.elem));
                }
                self.nodes[a]
                    .casts
                    .extend([(w, 3 * d * d * 4), (0, 3 * d * 4)]);
            }
            // chunk's backward (SplitBackward0) takes the three gradients and stacks
            // them (one cat); q's and k's come through their heads' reshape (a copy),
            // v's as the einsum leaves it.
            let split = self.grad_node(i, a, 3 * xb, "aten.cat.default");
            self.nodes[split].gather = true;
            let q = self.copy_node(i, split, xb, "aten.clone.default");
            let k = self.copy_node(i, split, xb, "aten.clone.default");
            vec![q, k, split]
        });
        if let Some(c) = cast_in {
            self.sim.decref(c);
        }
        let ks = self.op(xb, "aten.mul.Tensor");
        let k_node = sel
            .as_ref()
            .map(|s| self.copy_node(i, s[1], xb, "aten.mul.Tensor"));
        let qc = self.op(xb, "aten.clone.default");
        let kc = self.op(xb, "aten.clone.default");
        let dots = self.op(att, "aten.bmm.default");
        let bmm1 = train.then(|| {
            let mut edges = Vec::new();
            if let Some(k) = k_node {
                edges.push((Edge::Node(k), Grad::Alloc(xb)));
            }
            if let Some(s) = &sel {
                edges.push((Edge::Node(s[0]), Grad::Alloc(xb)));
            }
            let ops = (0..edges.len())
                .map(|e| ("aten.bmm.default", vec![e]))
                .collect();
            self.record(i, vec![qc, kc], edges, ops)
        });
        self.sim.decref(qc);
        self.sim.decref(kc);
        let idx = self.op(tb, "aten.index.Tensor");
        let bias = self.op(tb, "aten.clone.default");
        self.sim.decref(idx);
        let bias_node = train.then(|| self.index_backward(i, Edge::Param(p0), table));
        let biased = self.op(att_biased, "aten.add.Tensor");
        let add = bmm1.map(|k| {
            let mut edges = vec![(Edge::Node(k), Grad::Pass)];
            edges.extend(bias_node.map(|n| (Edge::Node(n), Grad::SumTo(tb))));
            let add = self.record(i, vec![], edges, vec![]);
            if att_biased != att {
                self.nodes[add].to_dtype.push((0, att));
            }
            add
        });
        let (probs, soft) = self.softmax(i, att_biased, add);
        self.sim.decref(biased);
        self.sim.decref(dots);
        let vc = self.op(xb, "aten.clone.default");
        let probs_cast = (att_biased != att).then(|| self.op(att, "aten._to_copy.default"));
        let to_soft = soft.map(|k| match probs_cast {
            Some(_) => self.grad_node(i, k, att_biased, "aten._to_copy.default"),
            None => k,
        });
        let ctx = self.op(xb, "aten.bmm.default");
        let bmm2 = to_soft.map(|k| {
            let mut edges = Vec::new();
            if let Some(s) = &sel {
                edges.push((Edge::Node(s[2]), Grad::Alloc(xb)));
            }
            edges.push((Edge::Node(k), Grad::Alloc(att)));
            let ops = (0..edges.len())
                .map(|e| ("aten.bmm.default", vec![e]))
                .collect();
            self.record(i, vec![probs_cast.unwrap_or(probs), vc], edges, ops)
        });
        self.sim.decref(probs);
        if let Some(c) = probs_cast {
            self.sim.decref(c);
        }
        self.sim.decref(vc);
        let merged_in = self.op(xb, "aten.clone.default");
        self.sim.decref(ctx);
        let reshaped = bmm2.map(|k| self.copy_node(i, k, xb, "aten.clone.default"));
        let merge_weight = amp.then(|| self.autocast_weight(d, d, amp_cache));
        let out = self.op(xb, "aten.addmm.default");
        self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
        let mut grad_fn = reshaped.map(|k| {
            self.projection_backward(
                i,
                Some(merged_in),
                merge_weight,
                Some(k),
                (p0 + 3, p0 + 4),
                xb,
                (d, d),
            )
        });
        self.sim.decref(merged_in);
        if self.grid_region {
            // The output's gradient comes back through the grid's swap: reshaping it
            // for the matrix product copies it (UnsafeViewBackward0).
            grad_fn = grad_fn.map(|k| self.copy_node(i, k, xb, "aten.clone.default"));
        }
        // q, k, v (views of the packed qkv), the scaled k and the bias live to the end.
        for t in [qkv, ks, bias] {
            self.sim.decref(t);
        }
        plain(out, grad_fn, el)
    }

    /// Python drops a tensor once its last reader has run.
    fn drop_inputs(&mut self, i: usize, vals: &[Option<Value>]) {
        let inputs = &self.g.nodes()[i].inputs;
        for (k, &j) in inputs.iter().enumerate() {
            // An input listed twice (`cat([a, a])`, `a * a`) is one reference.
            if inputs[..k].contains(&j) {
                continue;
            }
            if self.g.consumers[j].last() == Some(&i) {
                self.sim.decref(vals[j].expect("computed").sid);
            }
        }
    }

    /// What each graph node's backward keeps now, each storage counted once.
    fn saved_by_node(&self) -> Vec<u128> {
        let mut out = vec![0u128; self.g.nodes().len()];
        let mut counted = std::collections::HashSet::new();
        let mut order: Vec<&BNode> = self.nodes.iter().collect();
        order.sort_by_key(|n| n.seq);
        for node in order {
            let Some(slot) = out.get_mut(node.node) else {
                continue;
            };
            for &s in &node.saved {
                if self.sim.fixed_category(s).is_none() && counted.insert(s) {
                    *slot += self.sim.bytes(s);
                }
            }
        }
        out
    }

    /// `F.cross_entropy(logits, labels)`: log-softmax (saves its result) and NLL loss
    /// (saves total_weight). Returns the root node and the loss.
    fn cross_entropy(&mut self, logits: Value) -> (usize, Sid) {
        let b = self.micro;
        let k = self.g.num_classes() as u128;
        self.sim.layer = self.loss_layer;
        self.current_node = usize::MAX;
        let mut input = logits;
        let mut cast = None;
        // Autocast runs log_softmax in fp32; a model that computes in bf16 without it
        // (FSDP2's MixedPrecisionPolicy) takes its loss in bf16.
        let e = if self.amp() { 4 } else { logits.elem };
        self.loss_elem = e;
        if logits.elem != 4 && self.amp() {
            let c = self.op(b * k * 4, "aten._to_copy.default");
            let f = self.record(
                self.loss_layer,
                vec![],
                vec![(
                    Edge::Node(logits.grad_fn.expect("checked")),
                    Grad::Alloc(b * k * logits.elem),
                )],
                vec![("aten._to_copy.default", vec![0])],
            );
            cast = Some(c);
            input = plain(c, Some(f), 4);
        }
        let ls = self.op(b * k * e, "aten._log_softmax.default");
        let ls_node = self.record(
            self.loss_layer,
            vec![ls],
            vec![(
                Edge::Node(input.grad_fn.expect("checked")),
                Grad::Alloc(b * k * e),
            )],
            vec![("aten._log_softmax_backward_data.default", vec![0])],
        );
        if let Some(c) = cast {
            self.sim.decref(c);
        }
        let loss = self.sim.alloc(e, None);
        let total_weight = self.sim.alloc(e, None);
        self.sim.boundary("aten.nll_loss_forward.default");
        let root = self.record(
            self.loss_layer,
            vec![total_weight],
            vec![(Edge::Node(ls_node), Grad::Alloc(b * k * e))],
            vec![("aten.nll_loss_backward.default", vec![0])],
        );
        self.sim.decref(total_weight);
        self.sim.decref(ls);
        (root, loss)
    }

    /// torchvision's training loss: `cross_entropy(logits) + 0.3 * cross_entropy(aux)`
    /// for each auxiliary head (GoogLeNet, Inception v3), summed left to right; the
    /// auxiliary logits are dropped with the model's output. Returns the root and the
    /// loss.
    fn total_loss(&mut self, out: Value) -> (usize, Sid) {
        let (mut root, mut loss) = self.cross_entropy(out);
        for aux in std::mem::take(&mut self.aux_vals) {
            let (r, l) = self.cross_entropy(aux);
            let scaled = self.op(4, "aten.mul.Tensor");
            let m = self.record(
                self.loss_layer,
                vec![],
                vec![(Edge::Node(r), Grad::Alloc(4))],
                vec![("aten.mul.Tensor", vec![0])],
            );
            self.sim.decref(l);
            let sum = self.op(4, "aten.add.Tensor");
            root = self.record(
                self.loss_layer,
                vec![],
                vec![(Edge::Node(root), Grad::Pass), (Edge::Node(m), Grad::Pass)],
                vec![],
            );
            self.sim.decref(scaled);
            self.sim.decref(loss);
            // The model's output tuple keeps the auxiliary logits with the main ones.
            self.held_outputs.push(aux.sid);
            loss = sum;
        }
        (root, loss)
    }

    /// Leaving `torch.autocast`: its cache of half copies is cleared (the copies the
    /// backward pass saved live on).
    fn release_autocast_cache(&mut self) {
        for c in std::mem::take(&mut self.autocast_cache) {
            self.sim.decref(c);
        }
    }

    /// `loss.backward()`.
    fn backward(&mut self, root: usize, slots: &mut [ParamSlot]) {
        self.sim.phase = Phase::Backward;
        self.sim.layer = self.loss_layer;
        // DeepSpeed ZeRO-1/2 with contiguous_gradients: the IPG buffers, allocated as
        // backward starts (the first gradient hook) and freed in its epilogue.
        if let Some(d) = &mut self.dist {
            if matches!(
                d.cfg.strategy,
                dist::Strategy::Zero1 | dist::Strategy::Zero2
            ) && d.cfg.world_size() > 1
            {
                for _ in 0..d.cfg.ipg_buffers() {
                    let b = d.cfg.reduce_bucket_elems * self.param_elem;
                    d.ipg.push(self.sim.alloc(b, Some(Category::Communication)));
                }
                self.sim.boundary("aten.empty.memory_format");
            }
        }
        let n = self.nodes.len();
        // Dependencies: edges from nodes reachable from the root.
        let mut deps = vec![0u32; n];
        let mut seen = vec![false; n];
        let mut stack = vec![root];
        seen[root] = true;
        while let Some(k) = stack.pop() {
            for (edge, _) in &self.nodes[k].edges {
                if let Edge::Node(m) = *edge {
                    deps[m] += 1;
                    if !seen[m] {
                        seen[m] = true;
                        stack.push(m);
                    }
                }
            }
        }
        let seed = self.op(self.loss_elem, "aten.ones_like.default");
        self.sim.incref(seed);
        // Each node's incoming gradient: its storage and its own size (a slice of a
        // concatenation's gradient is smaller than the storage it keeps alive).
        let mut buffers: Vec<Option<(Sid, u128)>> = vec![None; n];
        buffers[root] = Some((seed, 4));
        let mut ready = BinaryHeap::new();
        ready.push((self.nodes[root].seq, root));
        while let Some((_, k)) = ready.pop() {
            if let Some(&c) = self.segment_of_node.get(&k) {
                self.recompute(c);
            }
            let node = self.nodes[k].node;
            self.dist_before_backward(node);
            self.evaluate(k, &mut buffers, &mut deps, &mut ready, slots);
        }
        self.dist_after_backward();
        for (c, done) in std::mem::take(&mut self.done_checkpoints) {
            if !done {
                self.sim.decref(c.input.sid);
            }
        }
        self.segment_of_node.clear();
        self.sim.decref(seed);
        // Nodes the loss does not reach free their saved tensors with the graph.
        for k in 0..n {
            for s in std::mem::take(&mut self.nodes[k].saved) {
                self.sim.unsave(s);
            }
        }
        self.nodes.clear();
    }

    fn evaluate(
        &mut self,
        k: usize,
        buffers: &mut [Option<(Sid, u128)>],
        deps: &mut [u32],
        ready: &mut BinaryHeap<(u64, usize)>,
        slots: &mut [ParamSlot],
    ) {
        let (grad_in, _) = buffers[k].take().expect("a ready node has its gradient");
        self.sim.layer = self.nodes[k].layer;
        let edges = self.nodes[k].edges.clone();
        let mut outputs: Vec<Option<Sid>> = vec![None; edges.len()];
        for (e, (_, how)) in edges.iter().enumerate() {
            if matches!(how, Grad::Pass | Grad::SumTo(_) | Grad::View(_)) {
                self.sim.incref(grad_in);
                outputs[e] = Some(grad_in);
            }
        }
        let ops = std::mem::take(&mut self.nodes[k].ops);
        for (label, es) in &ops {
            // An op that remakes an edge's gradient (index_put into new_zeros) frees
            // the one before it.
            let mut replaced = Vec::new();
            for &e in es {
                // A parameter's gradient counts as one once AccumulateGrad stores it
                // in `.grad`, as PyTorch's own trackers count it.
                let (Grad::Alloc(bytes) | Grad::AllocSumTo(bytes, _) | Grad::AllocRelayout(bytes)) =
                    edges[e].1
                else {
                    continue;
                };
                replaced.extend(outputs[e].replace(self.sim.alloc(bytes, None)));
                // cuDNN's backward: each gradient's kernel takes its workspace right
                // after the gradient is allocated (the input's, then the weight's).
                if *label == "aten.convolution_backward.default" {
                    self.conv_backward_workspace(k, edges[e].0, bytes);
                }
            }
            if uses_cublas(label) {
                self.sim.cublas_workspace(self.cfg.cublas_workspace_bytes);
            }
            self.sim.boundary(label);
            for old in replaced {
                self.sim.decref(old);
            }
        }
        // The engine's validate_outputs, edge by edge: sum_to for broadcast biases,
        // then the cast to the input's dtype.
        let to_dtype = std::mem::take(&mut self.nodes[k].to_dtype);
        for (e, (_, how)) in edges.iter().enumerate() {
            if let Grad::SumTo(bytes) | Grad::AllocSumTo(_, bytes) = *how {
                let new = self.sim.alloc(bytes, None);
                // A bias's gradient sums the columns of the incoming gradient (the
                // leading dimensions); a broadcast multiply's sums inner ones instead.
                if self.rules.cuda && matches!(how, Grad::SumTo(_)) {
                    self.reduce_staging(outputs[e].expect("set above"), bytes);
                }
                self.sim.boundary("aten.sum.dim_IntList");
                self.sim.decref(outputs[e].replace(new).expect("set above"));
            }
            if let Some(&(_, bytes)) = to_dtype.iter().find(|(c, _)| *c == e) {
                let new = self.sim.alloc(bytes, None);
                self.sim.boundary("aten._to_copy.default");
                self.sim.decref(outputs[e].replace(new).expect("set above"));
            }
        }
        // The node is done: the engine drops its input gradient and releases what it
        // saved before the next node runs.
        self.sim.decref(grad_in);
        for s in std::mem::take(&mut self.nodes[k].held) {
            self.sim.decref(s);
        }
        for s in std::mem::take(&mut self.nodes[k].saved) {
            self.sim.unsave(s);
        }
        // The engine hands each output to its next node (adding into a gradient already
        // waiting there) before any next node runs; AccumulateGrad runs first of all
        // ready nodes; autocast's casts are nodes of their own (ToCopyBackward0), run
        // next, each handing its fp32 gradient on at once (a parameter's AccumulateGrad
        // then runs before the next cast). Measured on the CPU: a residual's add comes
        // before the weight's cast (efficientnet_v2_s), and a weight's AccumulateGrad
        // before the bias's cast (ConvNeXt's downsampling convolutions).
        let casts = std::mem::take(&mut self.nodes[k].casts);
        let is_cast = |e: usize| casts.iter().any(|(c, _)| *c == e);
        let mut leftovers = Vec::new();
        for (e, &(edge, how)) in edges.iter().enumerate() {
            if let (Edge::Node(m), false, Some(sid)) = (edge, is_cast(e), outputs[e]) {
                let cast = to_dtype.iter().any(|(c, _)| *c == e);
                self.route(m, sid, how, cast, buffers, deps, ready, &mut leftovers);
            }
        }
        for s in std::mem::take(&mut leftovers) {
            self.sim.decref(s);
        }
        for (e, &(edge, how)) in edges.iter().enumerate() {
            if let (Edge::Param(p), false, Some(sid)) = (edge, is_cast(e), outputs[e]) {
                self.accumulate_grad(p, sid, matches!(how, Grad::AllocRelayout(_)), slots);
            }
        }
        for &(e, bytes) in &casts {
            let new = self.sim.alloc(bytes, None);
            self.sim.boundary("aten._to_copy.default");
            self.sim
                .decref(outputs[e].replace(new).expect("param grad made"));
            let (edge, how) = edges[e];
            match edge {
                Edge::Node(m) => {
                    let cast = to_dtype.iter().any(|(c, _)| *c == e);
                    self.route(m, new, how, cast, buffers, deps, ready, &mut leftovers);
                    for s in std::mem::take(&mut leftovers) {
                        self.sim.decref(s);
                    }
                }
                Edge::Param(p) => {
                    self.accumulate_grad(p, new, matches!(how, Grad::AllocRelayout(_)), slots)
                }
            }
        }
    }

    /// The engine's input buffer of node `m` takes gradient `sid`: the first one is
    /// kept; a later one is added in place where one of them is a dense gradient no one
    /// else holds (PyTorch's `InputBuffer::add`; out of place on the CPU profiles), else
    /// into a new tensor.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        m: usize,
        sid: Sid,
        how: Grad,
        cast: bool,
        buffers: &mut [Option<(Sid, u128)>],
        deps: &mut [u32],
        ready: &mut BinaryHeap<(u64, usize)>,
        leftovers: &mut Vec<Sid>,
    ) {
        let size = match how {
            Grad::View(bytes) if !cast => bytes,
            _ => self.sim.bytes(sid),
        };
        match buffers[m] {
            None => buffers[m] = Some((sid, size)),
            Some(_) if self.nodes[m].gather => self.nodes[m].held.push(sid),
            Some((old, old_size)) => {
                let dense = |s: Sid, size: u128| self.sim.bytes(s) == size;
                if !self.rules.out_of_place_accumulation
                    && self.sim.refs(old) == 1
                    && dense(old, old_size)
                {
                    leftovers.push(sid);
                } else if !self.rules.out_of_place_accumulation
                    && self.sim.refs(sid) == 1
                    && dense(sid, size)
                {
                    self.sim.decref(old);
                    buffers[m] = Some((sid, size));
                } else {
                    let bytes = old_size.max(size);
                    let new = self.sim.alloc(bytes, None);
                    self.sim.boundary("aten.add.Tensor");
                    self.sim.decref(old);
                    buffers[m] = Some((new, bytes));
                    leftovers.push(sid);
                }
            }
        }
        deps[m] -= 1;
        if deps[m] == 0 {
            ready.push((self.nodes[m].seq, m));
        }
    }

    /// AccumulateGrad of parameter `p`: it steals a fresh gradient (copying one whose
    /// layout differs from the parameter's, `relayout`), or adds in place into an
    /// existing one (gradient accumulation).
    fn accumulate_grad(&mut self, p: usize, sid: Sid, relayout: bool, slots: &mut [ParamSlot]) {
        match slots[p].grad {
            None if relayout => {
                // A temporary until the copy is stored as `.grad`.
                let new = self.sim.alloc(self.sim.bytes(sid), None);
                self.sim.boundary("aten.new_empty_strided.default");
                self.sim.decref(sid);
                self.sim.recategorize(new, Category::Grads);
                self.dist_grad(p, new, slots);
            }
            None => {
                self.sim.recategorize(sid, Category::Grads);
                self.dist_grad(p, sid, slots);
            }
            // Added into `.grad` (a later micro-batch); sharded, it is reduce-scattered
            // first, as in every micro-batch unless gradient sync is turned off.
            Some(_) => self.dist_accumulate(p, sid, slots),
        }
    }
}

/// `file: ` for a model read from a file, to start the errors about it.
fn file_prefix(g: &Shaped) -> String {
    g.graph
        .source
        .as_ref()
        .map_or(String::new(), |f| format!("{f}: "))
}

/// One rank's memory besides the single-device plan, under many GPUs
/// ([`crate::dist`]): DDP's buckets, sharded parameters gathered per unit, gradients
/// reduce-scattered per unit.
struct DistState {
    cfg: Distributed,
    /// Ranks a shard group spans.
    ranks: u128,
    unit_of_node: Vec<usize>,
    /// The last node of each unit in forward order.
    unit_last: Vec<usize>,
    /// Each unit's parameters, and the bytes of their gathered (unsharded) copy.
    unit_params: Vec<Vec<usize>>,
    unit_bytes: Vec<u128>,
    param_unit: Vec<usize>,
    param_shard: Vec<u128>,
    gathered: Vec<Option<Sid>>,
    /// FSDP2: a unit's all-gather output waiting to be copied out into its parameters'
    /// own storages (a prefetched unit's, until its backward starts).
    staged: Vec<Option<Sid>>,
    /// Parameters of each unit whose gradient arrived in this backward pass.
    arrived: Vec<usize>,
    /// A later micro-batch's unsharded gradients of each unit, waiting for the unit's
    /// last to be reduce-scattered and added into the sharded `.grad`.
    accumulating: Vec<Vec<Sid>>,
    /// Units whose sharded `.grad` an earlier micro-batch of this step made.
    has_shard: Vec<bool>,
    /// Units reduce-scattered in this backward pass.
    reduced: Vec<bool>,
    /// The last reduce-scatter's input, alive until the next one is issued (FSDP2's
    /// `reduce_scatter_state`) or backward ends.
    pending_reduce: Option<Sid>,
    /// Bytes per element of the shards, of the gathered parameters (a
    /// MixedPrecisionPolicy's param_dtype) and of the gradient reduce-scatter.
    elem: u128,
    gather_elem: u128,
    reduce_elem: u128,
    /// CPUOffloadPolicy (or DeepSpeed's offload_optimizer) on a GPU: reduced gradient
    /// shards go to the host.
    offload: bool,
    /// FSDP2's: the shards, in host memory, are copied in for each all-gather.
    offload_gathers: bool,
    /// DeepSpeed's IPG buffers of this backward (stages 1 and 2).
    ipg: Vec<Sid>,
    /// FSDP2 in forward: the last all-gather output, kept after its copy-out until the
    /// next unit's copy-out or the end of the root's forward (`comm_ctx.all_gather_state`,
    /// to overlap a copy-out with the next all-gather).
    retained: Option<Sid>,
}

impl DistState {
    fn new(g: &Shaped, d: &Distributed, elem: u128, sim: &mut Sim) -> Result<Self, PlanError> {
        if d.world_size() == 0 {
            return Err(PlanError::Config(
                "--gpus and --nodes must be at least 1".into(),
            ));
        }
        let (unit_of_node, n_units) = dist::units(g, &d.wrap);
        if !d.wrap.is_empty() && n_units == 1 {
            return Err(PlanError::Config(format!(
                "--wrap {}: no layer of the model has that name (or starts with it)",
                d.wrap.join(",")
            )));
        }
        let ranks = d.shard_ranks();
        let first = param_index(g);
        let params = g.params();
        let mut param_unit = vec![0; params.len()];
        for (i, _) in g.nodes().iter().enumerate() {
            for (k, slot) in param_unit
                .iter_mut()
                .enumerate()
                .skip(first[i])
                .take(g.node_params(i).len())
            {
                let _ = k;
                *slot = unit_of_node[i];
            }
        }
        let mut unit_params = vec![Vec::new(); n_units];
        let mut unit_bytes = vec![0u128; n_units];
        let mut param_shard = Vec::with_capacity(params.len());
        for (p, t) in params.iter().enumerate() {
            let shard = dist::shard_bytes(&t.shape, elem, ranks);
            unit_params[param_unit[p]].push(p);
            unit_bytes[param_unit[p]] += shard * ranks;
            param_shard.push(shard);
        }
        match d.strategy {
            // DeepSpeed ZeRO-3: each parameter partitioned by its element count,
            // ceil(numel / W) per rank (partition_parameters.py `_partition_param`).
            dist::Strategy::Zero3 => {
                for (p, t) in params.iter().enumerate() {
                    param_shard[p] = t.numel().div_ceil(ranks) * elem;
                }
                // What a unit gathers: its partitions from every rank.
                for (u, ps) in unit_params.iter().enumerate() {
                    unit_bytes[u] = ps.iter().map(|&p| param_shard[p] * ranks).sum();
                }
            }
            // ZeRO-1/2: the parameter group flattened and aligned to 2W elements, each
            // rank's partition one flat tensor of aligned / W (stage_1_and_2.py,
            // `flatten_dense_tensors_aligned`); held here by a parameter of the unit
            // whose gradients are reduced first in backward (the last block; stage 2
            // allocates its gradient partition at the first reduced gradient).
            dist::Strategy::Zero1 | dist::Strategy::Zero2 => {
                let numel: u128 = params.iter().map(|t| t.numel()).sum();
                let partition = numel.div_ceil(2 * ranks) * 2;
                let holder = (1..n_units)
                    .rev()
                    .chain([0])
                    .find_map(|u| unit_params[u].first().copied());
                for (p, shard) in param_shard.iter_mut().enumerate() {
                    *shard = if Some(p) == holder {
                        partition * elem
                    } else {
                        0
                    };
                }
                // What a unit reduces: its gradients, unpadded.
                for (u, ps) in unit_params.iter().enumerate() {
                    unit_bytes[u] = ps.iter().map(|&p| params[p].numel() * elem).sum();
                }
            }
            // Per-parameter dim-0 shards (FSDP2), flat ones (FSDP1, below), or none.
            dist::Strategy::Ddp
            | dist::Strategy::Fsdp
            | dist::Strategy::Fsdp1
            | dist::Strategy::FsdpGradOp
            | dist::Strategy::Hybrid => {}
        }
        if d.strategy.flat_params() {
            // FSDP1: the unit's parameters flattened into one, padded to a multiple of the
            // ranks; its shard is held by the unit's first parameter.
            for (u, ps) in unit_params.iter().enumerate() {
                let numel: u128 = ps.iter().map(|&p| params[p].numel()).sum();
                let shard = numel.div_ceil(ranks) * elem;
                unit_bytes[u] = shard * ranks;
                for (k, &p) in ps.iter().enumerate() {
                    param_shard[p] = if k == 0 { shard } else { 0 };
                }
            }
        }
        let mut unit_last = vec![0; n_units];
        for (i, &u) in unit_of_node.iter().enumerate() {
            unit_last[u] = i;
        }
        let _ = sim;
        Ok(DistState {
            cfg: d.clone(),
            ranks,
            unit_of_node,
            unit_last,
            unit_params,
            unit_bytes,
            param_unit,
            param_shard,
            gathered: vec![None; n_units],
            staged: vec![None; n_units],
            arrived: vec![0; n_units],
            accumulating: vec![Vec::new(); n_units],
            has_shard: vec![false; n_units],
            reduced: vec![false; n_units],
            pending_reduce: None,
            elem,
            gather_elem: d
                .param_dtype_bytes
                .filter(|_| d.mixed_precision())
                .unwrap_or(elem),
            // MixedPrecisionPolicy's reduce_dtype, also alone (fp32 parameters whose
            // gradients are reduce-scattered in bf16), else the param_dtype.
            reduce_elem: d
                .reduce_dtype_bytes
                .or(d.param_dtype_bytes.filter(|_| d.mixed_precision()))
                .unwrap_or(elem),
            retained: None,
            offload: false,
            offload_gathers: false,
            ipg: Vec::new(),
        })
    }

    /// DDP's reducer allocates its buckets when it wraps the model: gradients' own
    /// storage with `gradient_as_bucket_view`, communication buffers otherwise.
    fn buckets(&mut self, params: &[vramlab_graph::NamedTensor], elem: u128, sim: &mut Sim) {
        if self.cfg.strategy != dist::Strategy::Ddp || self.cfg.world_size() < 2 {
            return;
        }
        let sizes: Vec<u128> = params.iter().map(|p| p.numel() * elem).collect();
        let category = if self.cfg.gradient_as_bucket_view {
            Category::Grads
        } else {
            Category::Communication
        };
        for b in dist::ddp_buckets(&sizes, self.cfg.bucket_cap_bytes) {
            sim.alloc(b, Some(category));
        }
        // find_unused_parameters / static_graph: the used-parameter map and its copy.
        let map = self.cfg.used_map_bytes(params.len());
        if map > 0 {
            sim.alloc(map, Some(Category::Communication));
            sim.alloc(map, Some(Category::Communication));
        }
    }

    /// Bytes of unit `u` gathered (in param_dtype).
    fn gather_bytes(&self, u: usize) -> u128 {
        self.unit_bytes[u] / self.elem * self.gather_elem
    }

    /// Bytes of unit `u`'s reduce-scatter input (in reduce_dtype).
    /// Elements of this rank's partition of every parameter.
    fn partition_elems(&self) -> u128 {
        self.param_shard.iter().map(|s| s / self.elem).sum()
    }

    fn reduce_bytes(&self, u: usize) -> u128 {
        self.unit_bytes[u] / self.elem * self.reduce_elem
    }

    fn sharding(&self) -> bool {
        self.cfg.strategy.shards_params() && self.ranks > 1
    }

    /// All-gathers unit `u`'s parameters if they are not gathered, and (`copy_out`)
    /// makes them usable. FSDP1 gathers into the flat parameter itself; FSDP2 gathers
    /// into one output and copies it out into each parameter's own storage, the output
    /// alive until then (a prefetched unit's until its backward starts).
    fn gather(&mut self, u: usize, copy_out: bool, in_forward: bool, sim: &mut Sim) {
        if !self.sharding() || self.unit_bytes[u] == 0 {
            return;
        }
        if self.gathered[u].is_none() && self.staged[u].is_none() {
            // Offloaded: the unit's shard copied to the device for the all-gather.
            let h2d = self.offload_gathers.then(|| {
                let b = self.unit_bytes[u] / self.ranks;
                let s = sim.alloc(b, Some(Category::Communication));
                sim.boundary("aten._to_copy.default");
                s
            });
            // A lower param_dtype: the shard is first cast into a flat all-gather input
            // (the fp32 path gathers from a view of the output).
            let cast = (self.gather_elem != self.elem).then(|| {
                let b = self.gather_bytes(u) / self.ranks;
                sim.alloc(b, Some(Category::Communication))
            });
            let s = sim.alloc(self.gather_bytes(u), Some(Category::Communication));
            sim.boundary("all_gather_into_tensor");
            if let Some(c) = cast {
                sim.decref(c);
            }
            if let Some(c) = h2d {
                sim.decref(c);
            }
            if self.cfg.strategy.flat_params() {
                self.gathered[u] = Some(s);
            } else {
                self.staged[u] = Some(s);
            }
        }
        if copy_out {
            if let Some(out) = self.staged[u].take() {
                // FSDP2's wait_for_unshard: in forward, the previous unit's output goes
                // before this copy-out, and this one is kept in its place.
                if in_forward {
                    if let Some(prev) = self.retained.take() {
                        sim.decref(prev);
                    }
                }
                let s = sim.alloc(self.gather_bytes(u), Some(Category::Communication));
                sim.boundary("split_with_sizes_copy");
                if in_forward {
                    self.retained = Some(out);
                } else {
                    sim.decref(out);
                }
                self.gathered[u] = Some(s);
            }
        }
    }

    fn release(&mut self, u: usize, sim: &mut Sim) {
        if let Some(s) = self.gathered[u].take() {
            sim.decref(s);
        }
        if let Some(s) = self.staged[u].take() {
            sim.decref(s);
        }
    }
}

impl Runner<'_> {
    /// Before node `i` runs forward: its unit's parameters gathered.
    fn dist_before_forward(&mut self, i: usize) {
        if let Some(d) = &mut self.dist {
            let u = d.unit_of_node[i];
            d.gather(u, true, true, &mut self.sim);
        }
    }

    /// After node `i` ran forward: a unit whose forward is over reshards (the root keeps
    /// its parameters for backward).
    fn dist_after_forward(&mut self, i: usize) {
        if let Some(d) = &mut self.dist {
            let u = d.unit_of_node[i];
            if u != 0 && d.unit_last[u] == i && d.cfg.reshards_after_forward() {
                d.release(u, &mut self.sim);
            }
            // The root's post-forward frees the last kept all-gather output.
            if i + 1 == d.unit_of_node.len() {
                if let Some(out) = d.retained.take() {
                    self.sim.decref(out);
                }
            }
        }
    }

    /// Before a backward node of graph node `node` runs: its unit gathered again, and
    /// the unit whose backward comes next prefetched (FSDP's backward prefetch: the
    /// previous unit in forward order; after the root's head, the last unit).
    fn dist_before_backward(&mut self, node: usize) {
        if let Some(d) = &mut self.dist {
            if let Some(&u) = d.unit_of_node.get(node) {
                if d.reduced[u] {
                    return;
                }
                d.gather(u, true, false, &mut self.sim);
                let units = d.unit_bytes.len();
                let next = if u == 0 {
                    (1..units).rev().find(|&v| d.unit_bytes[v] > 0)
                } else {
                    (1..u).rev().find(|&v| d.unit_bytes[v] > 0)
                };
                if let Some(v) = next.filter(|&v| !d.reduced[v]) {
                    d.gather(v, false, false, &mut self.sim);
                }
            }
        }
    }

    /// AccumulateGrad stored parameter `p`'s gradient `sid`. Sharded gradients: once
    /// every gradient of its unit is in, they are copied into one reduce-scatter input,
    /// reduced to this rank's shards, and the unit's gathered parameters are freed.
    /// DDP with `gradient_as_bucket_view`: the gradient is copied into its bucket and
    /// `.grad` becomes a view of it. Sets `slots[p].grad`.
    /// A gradient arriving where `.grad` holds one already (gradient accumulation):
    /// added in place, after the unit's reduce-scatter where gradients are sharded.
    fn dist_accumulate(&mut self, p: usize, sid: Sid, slots: &mut [ParamSlot]) {
        let sharded = self
            .dist
            .as_ref()
            .is_some_and(|d| d.cfg.strategy.shards_grads() && d.ranks >= 2);
        if !sharded {
            self.sim.decref(sid);
            return;
        }
        self.dist_grad(p, sid, slots);
    }

    fn dist_grad(&mut self, p: usize, sid: Sid, slots: &mut [ParamSlot]) {
        let Some(d) = &mut self.dist else {
            slots[p].grad = Some(sid);
            return;
        };
        if d.cfg.strategy == dist::Strategy::Ddp
            && d.cfg.gradient_as_bucket_view
            && d.cfg.world_size() > 1
        {
            self.sim.decref(sid);
            slots[p].grad = Some(self.sim.alloc(0, Some(Category::Grads)));
            return;
        }
        if !d.cfg.strategy.shards_grads() || d.ranks < 2 {
            slots[p].grad = Some(sid);
            return;
        }
        let u = d.param_unit[p];
        // A later micro-batch's gradient: the unit's `.grad` is a shard already (FSDP1's
        // on its first parameter only).
        if d.has_shard[u] {
            d.accumulating[u].push(sid);
        } else {
            slots[p].grad = Some(sid);
        }
        d.arrived[u] += 1;
        if d.arrived[u] < d.unit_params[u].len() {
            return;
        }
        // The unit's unsharded gradients: in `.grad` (the first micro-batch) or held
        // for accumulation (later ones, whose reduced shards are added into `.grad`).
        let later = std::mem::take(&mut d.accumulating[u]);
        let accumulate = d.has_shard[u];
        d.has_shard[u] = true;
        // The unit's unsharded gradients are freed once copied into the collective's
        // input; the reduced shards become `.grad`, or are added into it.
        if d.cfg.strategy.flat_params() {
            // FSDP1: autograd concatenates the unit's gradients into the unsharded flat
            // gradient while the unit is still gathered; the post-backward hook then
            // reshards and reduce-scatters it into a new flat shard.
            let flat = self
                .sim
                .alloc(d.unit_bytes[u], Some(Category::Communication));
            self.sim.boundary("aten.cat.default");
            for &s in &later {
                self.sim.decref(s);
            }
            if !accumulate {
                for &q in &d.unit_params[u] {
                    if let Some(full) = slots[q].grad.take() {
                        self.sim.decref(full);
                    }
                }
            }
            d.release(u, &mut self.sim);
            d.reduced[u] = true;
            let first = d.unit_params[u][0];
            let shard = self.sim.alloc(d.param_shard[first], Some(Category::Grads));
            self.sim.boundary("reduce_scatter_tensor");
            if accumulate {
                self.sim.decref(shard);
            } else {
                slots[first].grad = Some(shard);
            }
            self.sim.decref(flat);
            return;
        }
        // FSDP's post-backward reshards the unit's parameters first, then copies its
        // gradients into one reduce-scatter input.
        d.release(u, &mut self.sim);
        d.reduced[u] = true;
        // The previous reduce-scatter is waited for before this one is issued.
        if let Some(prev) = d.pending_reduce.take() {
            self.sim.decref(prev);
        }
        let input = self
            .sim
            .alloc(d.reduce_bytes(u), Some(Category::Communication));
        self.sim.boundary("reduce_scatter_tensor");
        // A reduce_dtype below the shards': the reduced shard, cast up into the sharded
        // gradients.
        let low = (d.reduce_elem < d.elem).then(|| {
            let b = d.reduce_bytes(u) / d.ranks;
            self.sim.alloc(b, Some(Category::Communication))
        });
        for &s in &later {
            self.sim.decref(s);
        }
        let mut added = Vec::new();
        for &q in &d.unit_params[u] {
            if !accumulate {
                if let Some(full) = slots[q].grad.take() {
                    self.sim.decref(full);
                }
            }
            let shard = self.sim.alloc(d.param_shard[q], Some(Category::Grads));
            if accumulate {
                added.push(shard);
            } else {
                slots[q].grad = Some(shard);
            }
        }
        if let Some(l) = low {
            self.sim.decref(l);
        }
        self.sim.boundary("reduce_scatter_tensor");
        // Added into `.grad` (on the host, offloaded), then freed.
        for shard in added {
            self.sim.decref(shard);
        }
        // Offloaded: the reduced shards are copied to the host and leave the device.
        if d.offload && !accumulate {
            for &q in &d.unit_params[u] {
                if let Some(g) = slots[q].grad.take() {
                    self.sim.decref(g);
                }
                slots[q].grad = Some(self.sim.alloc(0, Some(Category::Grads)));
            }
            self.sim.boundary("aten._to_copy.default");
        }
        d.pending_reduce = Some(input);
    }

    /// After backward: whatever is still gathered is freed, and counts reset.
    fn dist_after_backward(&mut self) {
        if let Some(d) = &mut self.dist {
            for u in 0..d.gathered.len() {
                d.release(u, &mut self.sim);
            }
            if let Some(prev) = d.pending_reduce.take() {
                self.sim.decref(prev);
            }
            if let Some(out) = d.retained.take() {
                self.sim.decref(out);
            }
            for s in std::mem::take(&mut d.ipg) {
                self.sim.decref(s);
            }
            d.arrived.iter_mut().for_each(|a| *a = 0);
            d.reduced.iter_mut().for_each(|r| *r = false);
        }
    }
}
