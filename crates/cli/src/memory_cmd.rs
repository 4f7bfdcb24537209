//! `vramlab memory`: the categories of training memory, the peak and where it is.

use clap::Args;
use vramlab_graph::fmt_shape;
use vramlab_memory::{plan, Category, DeviceReport, MemoryReport, Mode};

use crate::fmt::{bytes, thousands, Table};
use crate::lang::{s, t, Lang};
use crate::{print_json, ModelArgs, PlanArgs, Result};

#[derive(Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Images per training step.
    #[arg(long, short = 'b', default_value_t = 64, value_name = "N")]
    batch_size: u64,
    #[command(flatten)]
    plan: PlanArgs,
    /// A card from `vramlab gpus` (pytorch-cuda): the device section uses its cuBLAS
    /// workspace, CUDA context and multiprocessors, and runs the allocator within what
    /// PyTorch sees on it, so a batch that does not fit says where it fails.
    #[arg(long, value_name = "GPU")]
    gpu: Option<String>,
    /// Include the whole timeline (every op's live total) in the JSON.
    #[arg(long)]
    timeline: bool,
    /// With --json: every malloc and free the simulated caching allocator sees, in order
    /// (device.trace), to hold against torch.cuda.memory._snapshot()'s device_traces.
    #[arg(long)]
    device_trace: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The global --lang, set by `main`.
    #[arg(skip)]
    pub lang: Lang,
}

/// One plain sentence per category.
pub fn explain(c: Category, r: &MemoryReport, lang: Lang) -> String {
    match c {
        Category::Params => t(lang, "the weights and biases the model learns ({0} params)", &[&thousands(r.num_params)]),
        Category::Buffers => s(lang, "state that is not learned: BatchNorm running mean and variance"),
        Category::Grads => s(lang, "one gradient per parameter, made by backward, read by the optimizer"),
        Category::OptimizerState => s(lang, "what the optimizer remembers between steps (momentum, Adam's two moments), made at the first step()"),
        Category::DataBatch => s(lang, "the batch of input images and its int64 labels on the device"),
        Category::Activations => s(lang, "what forward keeps for backward: conv and linear inputs, ReLU outputs, max-pool indices, BatchNorm statistics"),
        Category::Temporaries => s(lang, "short-lived tensors: gradients flowing back, outputs nobody keeps, optimizer scratch"),
        Category::Overhead => s(lang, "outside the tensors: the allocator's rounding up to 512 B blocks and the CUDA context"),
        Category::Communication => s(lang, "many GPUs: DDP's gradient buckets, DeepSpeed's IPG buffers, gathered parameters and reduce-scatter buffers of sharding"),
    }
}

pub fn run(a: &MemoryArgs) -> Result<()> {
    let g = a.model.load()?;
    vramlab_memory::fit::check_batch(&g, a.batch_size)?;
    let mut cfg = a.plan.config(a.batch_size)?;
    cfg.record_timeline = a.timeline;
    if a.device_trace && !cfg.profile.is_cuda() {
        return Err(crate::UserError(format!(
            "--device-trace is the simulated CUDA allocator's: it needs the pytorch-cuda profile (got --profile {})",
            cfg.profile.name()
        )));
    }
    if a.timeline && !a.json {
        return Err(crate::UserError(
            "--timeline is part of the JSON: add --json".into(),
        ));
    }
    if a.device_trace && !a.json {
        return Err(crate::UserError(
            "--device-trace is part of the JSON: add --json".into(),
        ));
    }
    cfg.record_device_trace = a.device_trace;
    a.plan.gpu_needs_cuda(a.gpu.as_deref(), cfg.profile, "")?;
    if let Some(name) = &a.gpu {
        let gpu = vramlab_memory::fit::find_gpu_or(name, "").map_err(crate::UserError)?;
        if let Some(card) = vramlab_memory::cards::card_memory(gpu.name) {
            if let Some(v) = &a.plan.cuda_version {
                vramlab_memory::check_cuda_version(v, gpu.label, card.compute_major)
                    .map_err(crate::UserError)?;
            }
            let given = cfg.cublas_workspace_bytes;
            card.configure(&mut cfg);
            if a.plan.cublas_workspace.is_some() {
                cfg.cublas_workspace_bytes = given;
            }
            let (total, _) = card.budget(gpu.memory_bytes);
            crate::fit_cmd::check_context(&cfg, total)?;
            cfg.device_limit_bytes = Some(vramlab_memory::device_fit::allocator_limit(&cfg, total));
        }
    }
    let r = plan(&g, &cfg)?;
    if a.json {
        return print_json(&r);
    }
    crate::out!("{}", render(&r, a.plan.cuda_context.is_some(), a.lang));
    Ok(())
}

pub fn phase(p: vramlab_memory::Phase, lang: Lang) -> String {
    s(lang, &p.to_string())
}

/// What a plan is of: the model, batch, optimizer, profile and precision, and the
/// gradient accumulation and ranks where there are (`memory`'s first lines, the report's
/// memory section).
pub fn setup_lines(r: &MemoryReport, lang: Lang) -> String {
    let mut out = String::new();
    let what = if r.mode == Mode::Inference {
        s(lang, "inference")
    } else {
        t(lang, "training with {0}", &[&r.optimizer])
    };
    out.push_str(&t(
        lang,
        "{0} on {1} images, batch {2}, {3}, profile {4}, {5}",
        &[
            &r.model,
            &fmt_shape(&r.input_shape),
            &thousands(r.batch_size as u128),
            &what,
            &r.profile.name(),
            &r.precision.name(),
        ],
    ));
    out.push('\n');
    if r.accumulation_steps > 1 {
        out.push_str(&t(
            lang,
            "Gradient accumulation: {0} micro-batches of {1} per optimizer step; the figures below are one micro-batch's.",
            &[
                &r.accumulation_steps,
                &thousands((r.batch_size / r.accumulation_steps as u64) as u128),
            ],
        ));
        out.push('\n');
    }
    if r.checkpoint_segments > 1 {
        out.push_str(&t(
            lang,
            "Activation checkpointing: the layers in {0} segments (checkpoint_sequential); forward runs again in backward.",
            &[&r.checkpoint_segments],
        ));
        out.push('\n');
    }
    if let Some(d) = &r.distributed {
        out.push_str(&t(
            lang,
            "one rank of {0} (--gpus {1} x --nodes {2}), strategy {3}: batch {4} per rank, {5} in all",
            &[
                &d.world_size(),
                &d.gpus_per_node,
                &d.nodes,
                &d.strategy.name(),
                &thousands(r.batch_size as u128),
                &thousands(r.batch_size as u128 * d.world_size()),
            ],
        ));
        out.push('\n');
    }
    out
}

/// `context_given`: the CUDA context is the user's `--cuda-context`, not an estimate.
pub fn render(r: &MemoryReport, context_given: bool, lang: Lang) -> String {
    let mut out = setup_lines(r, lang);
    out.push('\n');
    let names = [s(lang, "step 1 peak"), s(lang, "step 2 peak")];
    let mut header = vec![s(lang, "category")];
    for st in &r.steps {
        header.push(names[(st.step - 1) as usize].clone());
    }
    header.push(s(lang, "after step"));
    header.push(s(lang, "what it is"));
    let mut right = vec![false];
    right.extend(std::iter::repeat_n(true, r.steps.len() + 1));
    right.push(false);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut tb = Table::new(&header, &right);
    for c in Category::ALL {
        // Communication buffers exist only with --gpus.
        let none = r
            .steps
            .iter()
            .all(|st| st.at_peak.get(c) == 0 && st.after_step.get(c) == 0);
        if c == Category::Communication && none {
            continue;
        }
        let mut row = vec![c.key().to_string()];
        for st in &r.steps {
            row.push(bytes(st.at_peak.get(c)));
        }
        row.push(bytes(r.steps.last().expect("one step").after_step.get(c)));
        row.push(explain(c, r, lang));
        tb.row(row);
    }
    let mut total = vec![s(lang, "total")];
    for st in &r.steps {
        total.push(bytes(st.peak_bytes));
    }
    total.push(bytes(r.steps.last().expect("one step").after_step.total()));
    total.push(String::new());
    tb.row(total);
    out.push_str(&tb.render());
    out.push('\n');
    for st in &r.steps {
        out.push_str(&t(
            lang,
            "Peak of step {0}: {1} ({2} B) in {3}, at {4}.",
            &[
                &st.step,
                &bytes(st.peak_bytes),
                &thousands(st.peak_bytes),
                &phase(st.peak_phase, lang),
                &st.peak_at,
            ],
        ));
        out.push('\n');
    }
    if r.steps.len() == 2 && r.steps[0].peak_bytes != r.steps[1].peak_bytes {
        out.push_str(&s(lang, "Step 1 differs from step 2: optimizer state is created during the first step(), and step 1's gradients live until step 2's zero_grad()."));
        out.push('\n');
    }
    if r.context_bytes > 0 {
        let context = if context_given {
            t(
                lang,
                "the CUDA context, {0} as given with --cuda-context",
                &[&bytes(r.context_bytes)],
            )
        } else {
            t(
                lang,
                "the CUDA context, estimated at {0} (set it with --cuda-context)",
                &[&bytes(r.context_bytes)],
            )
        };
        let nccl = if r.nccl_bytes > 0 {
            t(
                lang,
                " and NCCL's buffers, estimated at {0} (set them with --nccl-buffer)",
                &[&bytes(r.nccl_bytes)],
            )
        } else {
            String::new()
        };
        let outside = r.context_bytes + r.nccl_bytes;
        out.push_str(&if r.device.is_some() {
            t(lang, "Overhead includes {0}{1}.", &[&context, &nccl])
        } else {
            t(
                lang,
                "Overhead includes {0}{1}; torch.cuda.max_memory_allocated() would report about {2}.",
                &[&context, &nccl, &bytes(r.peak_bytes.saturating_sub(outside))],
            )
        });
        out.push('\n');
    }
    if let Some(d) = &r.device {
        out.push('\n');
        out.push_str(&render_device(d, r.steps.len(), r.mode, lang));
    }
    out
}

/// Allocated, reserved and the nvidia-smi total per step, each marked modelled or
/// estimated.
pub fn render_device(d: &DeviceReport, reported_steps: usize, mode: Mode, lang: Lang) -> String {
    let mut out = t(
        lang,
        "On the GPU, with the caching allocator simulated (PYTORCH_CUDA_ALLOC_CONF: {0}):",
        &[&d.alloc_conf],
    );
    out.push('\n');
    let header = [
        s(lang, "step"),
        s(lang, "allocated peak"),
        s(lang, "reserved peak"),
        s(lang, "fragmentation at peak"),
        s(lang, "nvidia-smi total"),
    ];
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut tb = Table::new(&header, &[false, true, true, true, true]);
    for (i, st) in d.steps.iter().enumerate() {
        // The extra step shows whether the cache has settled: no more reserved than the
        // step before it.
        let settled = i > 0 && st.reserved_peak_bytes <= d.steps[i - 1].reserved_peak_bytes;
        let oom = d.out_of_memory.as_ref().is_some_and(|o| o.step == st.step);
        let name = match (st.step as usize > reported_steps, settled) {
            _ if oom => t(lang, "{0} (out of memory)", &[&st.step]),
            (true, true) => t(lang, "{0} (steady state)", &[&st.step]),
            (true, false) => t(lang, "{0} (cache still growing)", &[&st.step]),
            _ => st.step.to_string(),
        };
        tb.row(vec![
            name,
            bytes(st.allocated_peak_bytes),
            bytes(st.reserved_peak_bytes),
            format!("{:.1} %", 100.0 * st.fragmentation),
            bytes(st.device_total_bytes),
        ]);
    }
    out.push_str(&tb.render());
    out.push('\n');
    let cudnn = (d.cudnn_workspace_peak_bytes > 0).then(|| {
        t(
            lang,
            "cuDNN workspaces: estimated per convolution (the largest {0}) from the plans cuDNN 9 picked on Hopper cards, and inside allocated and reserved; --cudnn-workspace caps them.",
            &[&bytes(d.cudnn_workspace_peak_bytes)],
        )
    });
    for line in [
        if mode == Mode::Inference {
            t(
                lang,
                "allocated: modelled, as torch.cuda.max_memory_allocated() counts it; the cuBLAS and cuBLASLt workspaces ({0}: one cuBLAS workspace for forward's thread, 1 MiB for cuBLASLt) are included.",
                &[&bytes(d.cublas_workspace_bytes)],
            )
        } else {
            t(
                lang,
                "allocated: modelled, as torch.cuda.max_memory_allocated() counts it; the cuBLAS and cuBLASLt workspaces ({0}: one cuBLAS workspace for forward's thread, one for backward's, 1 MiB for cuBLASLt) are included.",
                &[&bytes(d.cublas_workspace_bytes)],
            )
        },
        if d.expandable_segments {
            s(lang, "reserved: modelled, as torch.cuda.max_memory_reserved() counts it: with expandable_segments, one segment per pool that maps pages as it grows (2 MiB for small requests, 20 MiB for large ones).")
        } else {
            s(lang, "reserved: modelled, as torch.cuda.max_memory_reserved() counts it: segments of 2 MiB, 20 MiB, or the request rounded up to 2 MiB.")
        },
        if d.nccl_bytes > 0 {
            t(
                lang,
                "nvidia-smi total: estimated: the CUDA context ({0}) + NCCL's buffers ({1}) + reserved.",
                &[&bytes(d.cuda_context_bytes), &bytes(d.nccl_bytes)],
            )
        } else {
            t(
                lang,
                "nvidia-smi total: estimated: the CUDA context ({0}) + reserved.",
                &[&bytes(d.cuda_context_bytes)],
            )
        },
    ]
    .into_iter()
    .chain(cudnn)
    .chain((d.expandable_segments && d.max_split_size_bytes.is_some()).then(|| {
        s(lang, "max_split_size_mb with expandable_segments: a free block of max_split_size_mb or more serves no smaller request (PyTorch's get_free_block), so those map new pages past it and reserved can grow well beyond either setting alone.")
    }))
    .chain(d.garbage_collection_inactive.then(|| {
        s(lang, "garbage_collection_threshold acts only under a per-process memory fraction (fit --fraction), as in PyTorch: here it changes nothing.")
    }))
    .chain([s(lang, "Estimates: the CUDA context depends on the driver, the card and the CUDA version (--cuda-version, --cuda-context; docs/ARCHITECTURE.md has the table); cuDNN's workspaces on the plans cuDNN picks (estimated per convolution; --cudnn-workspace caps them).").to_string()])
    {
        out.push_str(&line);
        out.push('\n');
    }
    if let (None, Some(limit)) = (&d.out_of_memory, d.device_limit_bytes) {
        out.push_str(&t(
            lang,
            "Fits: the allocator served every request of the {0} steps within a limit of {1}.",
            &[&d.steps.len(), &bytes(limit)],
        ));
        out.push('\n');
    }
    if let (Some(o), Some(limit)) = (&d.out_of_memory, d.device_limit_bytes) {
        out.push_str(&t(
            lang,
            "CUDA out of memory under a limit of {0}: step {1}, {2}, at {3}; tried to allocate {4}.",
            &[
                &bytes(limit),
                &o.step,
                &phase(o.phase, lang),
                &o.layer,
                &bytes(o.tried_to_allocate_bytes),
            ],
        ));
        out.push('\n');
    }
    out
}
