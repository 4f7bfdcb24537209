//! `vramlab fit` and `vramlab gpus`: batch size against a card's memory.

use clap::Args;
use serde::Serialize;
use vramlab_graph::fmt_shape;
use vramlab_memory::fit::{self, AdviceReport, FitReport, FitRequest, LrAdvice, GPUS};
use vramlab_memory::{Mode, Phase};

use crate::fmt::{
    bytes, is_decimal_size, parse_size, size_as_read, terminal_width, thousands, wrap_words, Table,
};
use crate::lang::{s, t, Lang};
use crate::{print_json, ModelArgs, PlanArgs, Result, UserError};

#[derive(Args)]
pub struct GpusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The total a budget rests on for a catalog card, and which figure that is: the total
/// a PyTorch process sees where one is published or measured, else nvidia-smi's, else the
/// nominal size.
pub fn card_budget_total(gpu: &fit::Gpu) -> (u128, String) {
    match vramlab_memory::cards::card_memory(gpu.name) {
        Some(c) => {
            let (total, basis) = c.budget(gpu.memory_bytes);
            if basis.starts_with("nominal") {
                (total, basis)
            } else {
                (
                    total,
                    format!("{basis}; nominal {}", bytes(gpu.memory_bytes)),
                )
            }
        }
        None => (
            gpu.memory_bytes,
            "nominal size: no published total known".to_string(),
        ),
    }
}

/// A card to fit on: a catalog card (`--gpu`) or a size (`--memory`).
struct CardChoice {
    gpu: Option<fit::Gpu>,
    total_bytes: u128,
    /// Which figure `total_bytes` is, for a catalog card.
    basis: Option<String>,
}

pub fn gpus(a: &GpusArgs) -> Result<()> {
    // Each card with the total a process sees (nvidia-smi) and where that figure comes from.
    #[derive(Serialize)]
    struct GpuRow {
        #[serde(flatten)]
        gpu: fit::Gpu,
        usable_bytes: u128,
        usable_source: &'static str,
        /// What a PyTorch process sees (total_memory), where published or measured.
        pytorch_total_bytes: Option<u128>,
        pytorch_total_source: Option<&'static str>,
        compute_capability_major: Option<u32>,
        /// The CUDA context and libraries outside PyTorch's counters on this generation.
        cuda_context_bytes: Option<u128>,
    }
    let rows: Vec<GpuRow> = GPUS
        .iter()
        .map(|g| {
            let c = vramlab_memory::cards::card_memory(g.name);
            let pt = c.and_then(|c| c.pytorch_total());
            GpuRow {
                gpu: *g,
                usable_bytes: c.map_or(g.memory_bytes, |c| c.total_bytes(g.memory_bytes)),
                usable_source: c.map_or("nominal", |c| c.source),
                pytorch_total_bytes: pt.map(|p| p.0),
                pytorch_total_source: pt.map(|p| p.1),
                compute_capability_major: c.map(|c| c.compute_major),
                cuda_context_bytes: c.map(|c| c.cuda_context_bytes()),
            }
        })
        .collect();
    if a.json {
        return print_json(&rows);
    }
    let mut t = Table::new(
        &[
            "--gpu",
            "card",
            "memory",
            "nvidia-smi total",
            "PyTorch total",
            "also",
        ],
        &[false, false, true, true, true, false],
    );
    for r in &rows {
        let measured = !r.usable_source.starts_with("nominal");
        t.row(vec![
            r.gpu.name.into(),
            r.gpu.label.into(),
            bytes(r.gpu.memory_bytes),
            if measured {
                bytes(r.usable_bytes)
            } else {
                format!("{} (nominal)", bytes(r.usable_bytes))
            },
            r.pytorch_total_bytes.map_or_else(|| "-".into(), bytes),
            r.gpu.aliases.join(", "),
        ]);
    }
    crate::out!("{}", t.render());
    crate::outln!("\nnvidia-smi total: what nvidia-smi shows, from published output (sources: gpus --json); nominal where none is known.");
    crate::outln!("PyTorch total: torch.cuda.get_device_properties(0).total_memory, what the caching allocator can reach and --fraction takes its share of (nvidia-smi's less what the driver keeps); from published PyTorch output, measured on the H200. fit rests on it where known.");
    let lazy = vramlab_memory::ModuleLoading::Lazy;
    crate::outln!(
        "CUDA context: {} on Hopper and newer (measured on an H200, CUDA 13.0), {} before (an estimate); --cuda-context sets it.",
        bytes(vramlab_memory::cuda_context(9, lazy).bytes),
        bytes(vramlab_memory::cuda_context(0, lazy).bytes)
    );
    crate::outln!("Any other card: --memory SIZE (e.g. --memory 24GiB).");
    Ok(())
}

#[derive(Args)]
pub struct FitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A card from `vramlab gpus`, or several separated by commas to compare them
    /// (t4,a100-40gb,h100).
    #[arg(long)]
    gpu: Option<String>,
    /// The card's memory with its unit: 24GiB (binary, as cards are measured) or 80GB
    /// (decimal, 10^9 B).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Use at most this fraction of the card (the lesson's 80 %); when given, also
    /// torch.cuda.set_per_process_memory_fraction for the simulated allocator.
    #[arg(long, value_name = "F")]
    fraction: Option<f64>,
    /// An effective batch to reach with gradient accumulation.
    #[arg(long, value_name = "N")]
    target_batch: Option<u64>,
    /// The number of training images: a batch larger than the dataset is pointed out.
    #[arg(long, value_name = "N")]
    dataset_size: Option<u64>,
    /// The batch size your learning rate was tuned at.
    #[arg(long, default_value_t = 16, value_name = "N")]
    base_batch: u64,
    /// The learning rate tuned at --base-batch (default: PyTorch's default for the optimizer).
    #[arg(long, value_name = "LR")]
    base_lr: Option<f64>,
    #[command(flatten)]
    plan: PlanArgs,
    /// Draw memory against batch size, stacked by category, with the card and the
    /// budget (.svg or .png).
    #[arg(long, value_name = "FILE")]
    plot: Option<std::path::PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The global --lang, set by `main`.
    #[arg(skip)]
    pub lang: Lang,
}

#[derive(Serialize)]
pub struct FitJson {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub gpu: Option<String>,
    /// Which figure the card's total is (nvidia-smi's or the nominal size), for a
    /// catalog card.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_total_basis: Option<String>,
    /// `--memory` as the user wrote it (`12GB`), to show what it was read as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_as_given: Option<String>,
    pub profile: &'static str,
    pub optimizer: String,
    pub precision: &'static str,
    /// Many GPUs: the plan and the batch sizes are one rank's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributed: Option<vramlab_memory::dist::Distributed>,
    #[serde(flatten)]
    pub fit: FitReport,
    pub lr_advice: Option<LrAdvice>,
}

impl FitJson {
    /// Ranks the batch is split over (1 on one GPU).
    pub fn world(&self) -> u128 {
        self.distributed.as_ref().map_or(1, |d| d.world_size())
    }
}

/// `fit`'s JSON for one card: the planner's answer and the allocator's.
#[derive(Serialize)]
struct FitWithDevice<'a> {
    #[serde(flatten)]
    fit: &'a FitJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: &'a Option<crate::device_fit_text::DeviceAnswer>,
}

/// A `--cuda-context` at or above the card's total leaves nothing for PyTorch: refused
/// (by `fit`, `memory` and `report` alike) rather than planned as a card where nothing
/// runs.
pub fn check_context(cfg: &vramlab_memory::PlanConfig, card_total: u128) -> Result<()> {
    match cfg.cuda_context_bytes {
        Some(ctx) if ctx >= card_total => Err(UserError(format!(
            "--cuda-context {} is not less than the card's {}: nothing would be left for PyTorch",
            bytes(ctx),
            bytes(card_total)
        ))),
        _ => Ok(()),
    }
}

/// The allocator's answer on one card (pytorch-cuda only), with the default settings'
/// answer beside it when `--alloc-conf` changes them.
fn device_answer(
    g: &vramlab_graph::Shaped,
    cfg: &vramlab_memory::PlanConfig,
    card_bytes: u128,
    gpu: Option<&fit::Gpu>,
    fraction: Option<f64>,
    cublas_given: Option<&str>,
    cuda_version: Option<&str>,
) -> Result<Option<crate::device_fit_text::DeviceAnswer>> {
    use vramlab_memory::device_fit::{device_fit, DeviceBudget};
    if !cfg.profile.is_cuda() {
        return Ok(None);
    }
    let card = gpu.and_then(|g| vramlab_memory::cards::card_memory(g.name));
    if let (Some(v), Some(c), Some(g)) = (cuda_version, card, gpu) {
        vramlab_memory::check_cuda_version(v, g.label, c.compute_major).map_err(UserError)?;
    }
    let mut template = cfg.clone();
    let (total, source) = match card {
        Some(c) => c.budget(card_bytes),
        None => (card_bytes, "--memory, as given".to_string()),
    };
    check_context(cfg, total)?;
    let budget = DeviceBudget {
        card_total_bytes: total,
        card_total_source: source,
        fraction: fraction.unwrap_or(1.0),
    };
    // The card decides cuBLAS's workspace (unless --cublas-workspace says) and the SMs.
    if let Some(c) = card {
        let given = template.cublas_workspace_bytes;
        c.configure(&mut template);
        if cublas_given.is_some() {
            template.cublas_workspace_bytes = given;
        }
    }
    let answer = device_fit(g, &template, &budget)?;
    let default_conf = if template.alloc_conf != Default::default() {
        template.alloc_conf = Default::default();
        Some(device_fit(g, &template, &budget)?)
    } else {
        None
    };
    Ok(Some(crate::device_fit_text::DeviceAnswer {
        fit: answer,
        default_conf,
    }))
}

/// The cards to fit on: each `--gpu` name, or the one `--memory` size.
fn cards(a: &FitArgs) -> Result<Vec<CardChoice>> {
    match (&a.gpu, &a.memory) {
        (Some(names), _) => {
            let mut out = Vec::new();
            for name in names.split(',').map(str::trim) {
                if name.is_empty() {
                    return Err(UserError(format!(
                        "--gpu `{names}`: an empty name in the list (write e.g. t4,h100)"
                    )));
                }
                let gpu = fit::find_gpu(name)?;
                if out
                    .iter()
                    .any(|c: &CardChoice| c.gpu.is_some_and(|g| g.name == gpu.name))
                {
                    return Err(UserError(format!(
                        "--gpu `{names}`: {} is listed twice (an alias names the same card): each card once",
                        gpu.name
                    )));
                }
                let (total_bytes, basis) = card_budget_total(&gpu);
                out.push(CardChoice {
                    gpu: Some(gpu),
                    total_bytes,
                    basis: Some(basis),
                });
            }
            if out.len() > GPUS.len() {
                return Err(UserError(format!(
                    "--gpu lists {} cards: at most {} (each card once)",
                    out.len(),
                    GPUS.len()
                )));
            }
            Ok(out)
        }
        (None, Some(m)) => {
            let bytes = parse_size(m).map_err(|e| UserError(format!("--memory: {e}")))?;
            if bytes == 0 {
                return Err(UserError("--memory must be more than 0 B".into()));
            }
            Ok(vec![CardChoice {
                gpu: None,
                total_bytes: bytes,
                basis: None,
            }])
        }
        (None, None) => Err(UserError("give --gpu NAME or --memory SIZE".into())),
    }
}

pub fn fit(a: &FitArgs) -> Result<()> {
    // One line naming both ways (clap's "required: --gpu" hid --memory).
    match (&a.gpu, &a.memory) {
        (None, None) => {
            return Err(UserError(
                "give the card: --gpu NAME (`vramlab gpus` lists them) or its memory with \
                 --memory SIZE"
                    .into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(UserError(
                "--gpu and --memory both give the card: keep one".into(),
            ))
        }
        _ => {}
    }
    if a.plan.accumulation_steps > 1 {
        return Err(UserError(format!(
            "--accumulation-steps {}: fit searches the batch per optimizer step without it; \
             give --target-batch N and fit plans the accumulation that reaches N",
            a.plan.accumulation_steps
        )));
    }
    let g = a.model.load()?;
    let cfg = a.plan.config(1)?;
    a.plan.gpu_needs_cuda(
        a.gpu.as_deref(),
        cfg.profile,
        "; give a memory size with --memory instead",
    )?;
    let cards = cards(a)?;
    let base_lr = a.base_lr.unwrap_or(match cfg.optimizer.kind {
        vramlab_memory::OptimizerKind::RmsProp | vramlab_memory::OptimizerKind::Adagrad => 1e-2,
        _ => 1e-3,
    });
    // Checked before the search, whether or not a batch fits.
    fit::lr_advice(a.base_batch, base_lr, a.base_batch)?;
    if cards.len() > 1 && a.plot.is_some() {
        return Err(UserError(
            "--plot draws one card: give one --gpu, or leave --plot out to compare cards".into(),
        ));
    }
    if let Some(path) = &a.plot {
        crate::plot::check_plot_path(path, "--plot")?;
    }
    if let (Some(d), None) = (&cfg.distributed, &a.plan.strategy) {
        if d.world_size() > 1 {
            if a.plot.is_some() {
                return Err(UserError(
                    "--plot draws one strategy: give --strategy S, or leave --plot out to \
                     compare strategies"
                        .into(),
                ));
            }
            if a.base_lr.is_some() {
                return Err(UserError(
                    "--base-lr: the strategy comparison gives no learning rate; give \
                     --strategy S for one strategy's advice"
                        .into(),
                ));
            }
            return compare_strategies(a, &g, &cfg, cards);
        }
    }
    // Many GPUs: the batch searched is one rank's; an effective batch and the dataset
    // are split over the ranks (DistributedSampler), the learning rate follows the
    // global batch.
    let world = cfg
        .distributed
        .as_ref()
        .map_or(1, |d| d.world_size() as u64);
    let mut outs = Vec::new();
    let mut devices = Vec::new();
    for choice in cards {
        let card = choice.total_bytes;
        // The card's generation decides the CUDA context, unless --cuda-context says.
        let mut cfg = cfg.clone();
        if cfg.cuda_context_bytes.is_none() {
            cfg.cuda_context_bytes = choice
                .gpu
                .as_ref()
                .and_then(|g| vramlab_memory::cards::card_memory(g.name))
                .map(|c| vramlab_memory::cuda_context(c.compute_major, cfg.module_loading).bytes);
        }
        let req = FitRequest {
            card_bytes: card,
            fraction: a.fraction.unwrap_or(0.8),
            target_batch: a.target_batch.map(|t| t.div_ceil(world)),
            dataset_size: a.dataset_size.map(|n| n.div_ceil(world)),
        };
        let planner_only = vramlab_memory::PlanConfig {
            simulate_allocator: false,
            ..cfg.clone()
        };
        // The allocator's answer and the planner's are independent: one on another
        // thread while this one makes the other.
        let (device, report) = std::thread::scope(|scope| {
            let device = scope.spawn(|| {
                device_answer(
                    &g,
                    &cfg,
                    card,
                    choice.gpu.as_ref(),
                    a.fraction,
                    a.plan.cublas_workspace.as_deref(),
                    a.plan.cuda_version.as_deref(),
                )
            });
            let report = fit::fit_with(&g, &planner_only, &req);
            let device = device
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (device, report)
        });
        let device = device?;
        let mut report = report?;
        if let Some(d) = &device {
            report.cap_to_allocator(d.fit.max_batch_size);
        }
        devices.push(device);
        // Inference has no learning rate to scale.
        let lr = report
            .recommended_batch
            .filter(|_| cfg.mode == vramlab_memory::Mode::Train)
            .map(|b| fit::lr_advice(a.base_batch, base_lr, b.saturating_mul(world)))
            .transpose()?;
        outs.push(FitJson {
            distributed: cfg.distributed.clone(),
            model: g.graph.name.clone(),
            input_shape: g.graph.input_shape.clone(),
            gpu: choice.gpu.map(|g| g.label.to_string()),
            card_total_basis: choice.basis,
            memory_as_given: a.memory.clone(),
            profile: cfg.profile.name(),
            optimizer: cfg.optimizer.describe(),
            precision: cfg.precision.name(),
            fit: report,
            lr_advice: lr,
        });
    }
    if outs.len() > 1 {
        if a.json {
            let rows: Vec<FitWithDevice> = outs
                .iter()
                .zip(&devices)
                .map(|(fit, device)| FitWithDevice { fit, device })
                .collect();
            return print_json(&rows);
        }
        crate::out!("{}", render_cards(&outs, a.lang));
        crate::out!(
            "{}",
            crate::device_fit_text::render_cards(&outs, &devices, a.lang)
        );
        return Ok(());
    }
    let out = outs.pop().expect("at least one card");
    let device = devices.pop().expect("one per card");
    if let Some(path) = &a.plot {
        batch_chart(&g, &cfg, &out, a.lang).save(path)?;
    }
    if a.json {
        return print_json(&FitWithDevice {
            fit: &out,
            device: &device,
        });
    }
    crate::out!("{}", render(&out, a.lang));
    if let Some(d) = &device {
        crate::out!("\n{}", crate::device_fit_text::render(d, a.lang));
        // The planner's budget answer counts neither the allocator's segments nor
        // cuDNN's workspaces: where it is above what runs, say which one to use.
        match (out.fit.max_batch_size, d.fit.max_batch_size) {
            (Some(planned), Some(runs)) if planned > runs => crate::outln!(
                "{}",
                t(
                    a.lang,
                    "Use {0}, not {1}: at {2} the caching allocator cannot serve the steps (its segments and cuDNN's workspaces are not in the budget's peak).",
                    &[
                        &thousands(runs as u128),
                        &thousands(planned as u128),
                        &thousands(runs as u128 + 1),
                    ],
                )
            ),
            (Some(planned), None) => crate::outln!(
                "{}",
                t(
                    a.lang,
                    "Nothing runs on the card, though {0} fits the budget: its peak counts neither the caching allocator's segments nor the cuBLAS and cuDNN workspaces.",
                    &[&thousands(planned as u128)],
                )
            ),
            _ => {}
        }
    }
    if let Some(path) = &a.plot {
        crate::outln!("\n{}", t(a.lang, "Plot: {0}", &[&path.display()]));
    }
    Ok(())
}

/// Strategies from the least communication to the most: DDP and ZeRO-1/2 move about
/// 2x the parameters per step, FSDP and ZeRO-3 3x; HYBRID_SHARD (several nodes) shards
/// within a node only.
const CHEAPEST_FIRST: [vramlab_memory::dist::Strategy; 6] = {
    use vramlab_memory::dist::Strategy::*;
    [Ddp, Zero1, Zero2, FsdpGradOp, Hybrid, Fsdp]
};

#[derive(Serialize)]
struct StrategyFit {
    strategy: &'static str,
    fit: FitReport,
}

#[derive(Serialize)]
struct CardStrategies {
    gpu: Option<String>,
    card_bytes: u128,
    world_size: u128,
    strategies: Vec<StrategyFit>,
    /// The first strategy (least communication) whose largest per-GPU batch reaches the
    /// needed one (1, or --target-batch split over the ranks).
    cheapest: Option<&'static str>,
    per_gpu_batch: Option<u64>,
}

/// `fit --gpus N` without `--strategy`: every strategy on each card, and the cheapest
/// that fits.
fn compare_strategies(
    a: &FitArgs,
    g: &vramlab_graph::Shaped,
    cfg: &vramlab_memory::PlanConfig,
    cards: Vec<CardChoice>,
) -> Result<()> {
    let d = cfg.distributed.clone().expect("checked by the caller");
    let world = d.world_size();
    let needed = a
        .target_batch
        .map_or(1, |t| t.div_ceil(world as u64).max(1));
    let mut rows = Vec::new();
    for choice in cards {
        let mut strategies = Vec::new();
        for s in CHEAPEST_FIRST {
            if s == vramlab_memory::dist::Strategy::Hybrid && d.nodes < 2 {
                continue;
            }
            let mut c = cfg.clone();
            c.simulate_allocator = false;
            let mut ds = d.clone();
            ds.strategy = s;
            c.distributed = Some(ds);
            let req = FitRequest {
                card_bytes: choice.total_bytes,
                fraction: a.fraction.unwrap_or(0.8),
                target_batch: a.target_batch.map(|t| t.div_ceil(world as u64).max(1)),
                dataset_size: a.dataset_size.map(|n| n.div_ceil(world as u64)),
            };
            strategies.push(StrategyFit {
                strategy: s.name(),
                fit: fit::fit_with(g, &c, &req)?,
            });
        }
        let cheapest = strategies
            .iter()
            .find(|s| s.fit.max_batch_size.is_some_and(|b| b >= needed));
        rows.push(CardStrategies {
            gpu: choice.gpu.map(|g| g.label.to_string()),
            card_bytes: choice.total_bytes,
            world_size: world,
            cheapest: cheapest.map(|s| s.strategy),
            per_gpu_batch: cheapest.and_then(|s| s.fit.recommended_batch.or(s.fit.max_batch_size)),
            strategies,
        });
    }
    if a.json {
        return print_json(&rows);
    }
    let lang = a.lang;
    for r in &rows {
        crate::outln!(
            "{}",
            t(
                lang,
                "{0} on {1} ranks of {2} ({3}), {4}, within {5} % of each card:",
                &[
                    &g.graph.name,
                    &world,
                    &r.gpu.clone().unwrap_or_else(|| bytes(r.card_bytes)),
                    &bytes(r.card_bytes),
                    &cfg.optimizer.describe(),
                    &format!("{:.0}", a.fraction.unwrap_or(0.8) * 100.0),
                ],
            )
        );
        let h = [
            s(lang, "strategy"),
            s(lang, "largest batch per GPU"),
            s(lang, "global batch"),
            s(lang, "peak per GPU at it"),
        ];
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        let mut tb = Table::new(&h, &[false, true, true, true]);
        for st in &r.strategies {
            let b = st.fit.max_batch_size;
            tb.row(vec![
                st.strategy.to_string(),
                b.map(|b| thousands(b as u128))
                    .unwrap_or_else(|| s(lang, "none")),
                b.map(|b| thousands(b as u128 * world))
                    .unwrap_or_else(|| "-".into()),
                st.fit
                    .peak_bytes_at_max
                    .map(bytes)
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        crate::out!("{}", tb.render());
        match (r.cheapest, r.per_gpu_batch) {
            (Some(name), Some(b)) => crate::outln!(
                "{}\n",
                t(
                    lang,
                    "Cheapest that fits: {0}, {1} images per GPU ({2} in all).",
                    &[&name, &thousands(b as u128), &thousands(b as u128 * world)],
                )
            ),
            // What fails is the batch asked for in one step: accumulation may reach it.
            _ => {
                let reachable = r
                    .strategies
                    .iter()
                    .find_map(|st| st.fit.accumulation.as_ref().map(|acc| (st.strategy, acc)));
                let line = match (a.target_batch, reachable) {
                    (Some(target), Some((name, acc))) => t(
                        lang,
                        "No strategy fits {0} images per GPU ({1} in all) in one step. With gradient accumulation, the cheapest: {2}, micro-batches of {3} per GPU with --accumulation-steps {4} ({5} in all).",
                        &[
                            &thousands(needed as u128),
                            &thousands(target as u128),
                            &name,
                            &thousands(acc.micro_batch as u128),
                            &acc.accumulation_steps,
                            &thousands(
                                acc.micro_batch as u128 * acc.accumulation_steps as u128 * world,
                            ),
                        ],
                    ),
                    (Some(target), None) if r.strategies.iter().any(|st| st.fit.max_batch_size.is_some()) => t(
                        lang,
                        "No strategy fits {0} images per GPU ({1} in all) in one step.",
                        &[&thousands(needed as u128), &thousands(target as u128)],
                    ),
                    _ => s(lang, "No strategy fits a batch of one per GPU on this card."),
                };
                crate::outln!("{}\n", line);
            }
        }
    }
    crate::outln!(
        "{}",
        s(
            lang,
            "Per rank, modelled; NCCL's buffers are an estimate (--nccl-buffer). --strategy S shows one strategy in full, with the allocator, and plans the two left out here (zero3, fsdp1)."
        )
    );
    Ok(())
}

/// One row per card: the largest batch on each.
pub fn render_cards(outs: &[FitJson], lang: Lang) -> String {
    let mut out = headline(&outs[0], lang);
    out.push('\n');
    out.push_str(&t(
        lang,
        "Largest batch on each card, within {0} % of its memory:",
        &[&format!("{:.0}", outs[0].fit.fraction * 100.0)],
    ));
    out.push('\n');
    let h = [
        s(lang, "card"),
        s(lang, "card total"),
        s(lang, "budget"),
        s(lang, "largest batch"),
        s(lang, "power of two"),
        s(lang, "peak at the largest batch"),
    ];
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut tb = Table::new(&h, &[false, true, true, true, true, true]);
    let none = || "-".to_string();
    for o in outs {
        let r = &o.fit;
        // The card's name, and its total marked where it is the nominal size.
        let nominal = o
            .card_total_basis
            .as_deref()
            .is_some_and(|b| b.starts_with("nominal"));
        tb.row(vec![
            o.gpu.clone().unwrap_or_default(),
            if nominal {
                format!("{} {}", bytes(r.card_bytes), s(lang, "(nominal)"))
            } else {
                bytes(r.card_bytes)
            },
            bytes(r.budget_bytes),
            r.max_batch_size
                .map(|b| thousands(b as u128))
                .unwrap_or_else(|| s(lang, "none")),
            r.max_power_of_two
                .map(|b| thousands(b as u128))
                .unwrap_or_else(none),
            r.peak_bytes_at_max.map(bytes).unwrap_or_else(none),
        ]);
    }
    out.push_str(&tb.render());
    if let Some(n) = outs[0].fit.dataset_size {
        if outs.iter().any(|o| o.fit.max_batch_exceeds_dataset) {
            out.push_str(&t(
                lang,
                "A largest batch above the dataset's {0} images means the whole dataset fits in one batch.",
                &[&thousands(n as u128)],
            ));
            out.push('\n');
        }
    }
    out
}

/// Memory against batch size, stacked by category, with the card and the budget.
pub fn batch_chart(
    g: &vramlab_graph::Shaped,
    cfg: &vramlab_memory::PlanConfig,
    o: &FitJson,
    lang: Lang,
) -> crate::plot::Chart {
    use crate::plot::{Chart, HLine, Series, COLORS};
    use vramlab_memory::Category;
    let r = &o.fit;
    let top = r
        .max_batch_size
        .map_or(64, |b| b.saturating_mul(2).max(32))
        .min(fit::MAX_BATCH);
    let mut batches: Vec<u64> = (0..=48)
        .map(|i| ((top as f64 * i as f64 / 48.0).round() as u64).max(1))
        .collect();
    batches.dedup();
    let gib = (1u64 << 30) as f64;
    let mut series: Vec<Series> = Category::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| Series {
            name: c.key().to_string(),
            points: Vec::new(),
            color: COLORS[i].to_string(),
        })
        .collect();
    for b in batches {
        let mut c = cfg.clone();
        c.batch_size = b;
        let Ok(rep) = vramlab_memory::plan(g, &c) else {
            continue;
        };
        let s = rep
            .steps
            .iter()
            .max_by_key(|s| s.peak_bytes)
            .expect("a step");
        for (i, cat) in Category::ALL.iter().enumerate() {
            series[i]
                .points
                .push((b as f64, s.at_peak.get(*cat) as f64 / gib));
        }
    }
    Chart {
        title: t(
            lang,
            "{0} {1}: peak memory by batch size ({2}, {3})",
            &[
                &o.model,
                &fmt_shape(&o.input_shape),
                &o.optimizer,
                &o.profile,
            ],
        ),
        x_label: s(lang, "batch size"),
        y_label: s(lang, "GiB at the peak"),
        x_log: false,
        stacked: true,
        series,
        hlines: vec![
            HLine {
                y: r.card_bytes as f64 / gib,
                label: t(lang, "card {0}", &[&bytes(r.card_bytes)]),
                color: "#c00000".into(),
                dashed: false,
            },
            HLine {
                y: r.budget_bytes as f64 / gib,
                label: t(
                    lang,
                    "{0} % budget",
                    &[&format!("{:.0}", r.fraction * 100.0)],
                ),
                color: "#e08000".into(),
                dashed: true,
            },
        ],
        vline: r.max_batch_size.map(|b| {
            (
                b as f64,
                t(lang, "largest batch {0}", &[&thousands(b as u128)]),
            )
        }),
    }
}

/// A sentence as a paragraph that fits the terminal (at most 100 columns), ending in a
/// newline.
fn paragraph(text: &str) -> String {
    let mut out = wrap_words(text, terminal_width().clamp(60, 100)).join("\n");
    out.push('\n');
    out
}

/// The first line: model, input, and what is simulated.
fn headline(o: &FitJson, lang: Lang) -> String {
    match o.fit.mode {
        Mode::Train => t(
            lang,
            "{0} on {1} images, training with {2}, profile {3}, {4}",
            &[
                &o.model,
                &fmt_shape(&o.input_shape),
                &o.optimizer,
                &o.profile,
                &o.precision,
            ],
        ),
        Mode::Inference => t(
            lang,
            "{0} on {1} images, inference (model.eval() under torch.no_grad(), no optimizer), profile {2}, {3}",
            &[&o.model, &fmt_shape(&o.input_shape), &o.profile, &o.precision],
        ),
    }
}

pub fn render(o: &FitJson, lang: Lang) -> String {
    let r = &o.fit;
    let mut out = headline(o, lang);
    out.push('\n');
    let world = o.world();
    if let Some(d) = &o.distributed {
        out.push_str(&paragraph(&t(
            lang,
            "one rank of {0} (--gpus {1} x --nodes {2}), strategy {3}: every batch size below is one rank's (each rank draws 1/{0} of the data)",
            &[&world, &d.gpus_per_node, &d.nodes, &d.strategy.name()],
        )));
    }
    let card = o
        .gpu
        .as_deref()
        .map(|l| match &o.card_total_basis {
            Some(basis) => format!("{l} ({basis}), "),
            None => format!("{l}, "),
        })
        .unwrap_or_default();
    // What the card's size was read as, in bytes and GiB, so that a decimal `12GB`
    // and a 12 GiB card are told apart.
    let size = match &o.memory_as_given {
        Some(given) if o.gpu.is_none() => size_as_read(given, r.card_bytes),
        _ => format!("{} = {} B", bytes(r.card_bytes), thousands(r.card_bytes)),
    };
    out.push_str(&paragraph(&t(
        lang,
        "Card: {0}{1}; budget {2} % = {3} (peaks include the overhead)",
        &[
            &card,
            &size,
            &format!("{:.0}", r.fraction * 100.0),
            &bytes(r.budget_bytes),
        ],
    )));
    if let Some(given) = o.memory_as_given.as_deref().filter(|g| is_decimal_size(g)) {
        out.push_str(&paragraph(&t(
            lang,
            "Note: {0} is in decimal units (1 GB = 10^9 B); cards are measured in binary units (1 GiB = 2^30 B), so a card sold as 12 GB has 12GiB.",
            &[&given.trim()],
        )));
    }
    out.push('\n');
    match (r.max_batch_size, r.peak_bytes_at_max) {
        (Some(b), Some(p)) => {
            out.push_str(&match r.peak_bytes_at_max_plus_one {
                Some(next) => {
                    // Two peaks that read the same at two decimals are shown in bytes.
                    let (p, next) = if bytes(p) == bytes(next) {
                        (
                            format!("{} B", thousands(p)),
                            format!("{} B", thousands(next)),
                        )
                    } else {
                        (bytes(p), bytes(next))
                    };
                    t(
                        lang,
                        "Largest batch size that fits: {0} (peak {1}; at {2}: {3})",
                        &[&thousands(b as u128), &p, &thousands(b as u128 + 1), &next],
                    )
                }
                None => t(
                    lang,
                    "Largest batch size that fits: {0} (peak {1}; no larger batch is searched: its images would hold more values than one tensor may)",
                    &[&thousands(b as u128), &bytes(p)],
                ),
            });
            out.push('\n');
            if let Some(p2) = r.max_power_of_two {
                out.push_str(&t(
                    lang,
                    "Largest power of two under it: {0}",
                    &[&thousands(p2 as u128)],
                ));
                out.push('\n');
            }
            if let (true, Some(n)) = (r.max_batch_exceeds_dataset, r.dataset_size) {
                out.push_str(&paragraph(&if world > 1 {
                    t(
                        lang,
                        "That is more than the {0} images each of the {1} ranks draws from the dataset: its whole share fits in one batch (one step an epoch); no batch above {0} per rank can be drawn.",
                        &[&thousands(n as u128), &world],
                    )
                } else {
                    t(
                        lang,
                        "That is more than the dataset's {0} images: the whole dataset fits in one batch (one step an epoch, as in full-batch training); no batch above {0} can be drawn from it.",
                        &[&thousands(n as u128)],
                    )
                }));
                if let (Some(rb), false) = (r.recommended_batch, r.capped_by_allocator) {
                    out.push_str(&t(
                        lang,
                        "Largest power of two within the dataset: {0}",
                        &[&thousands(rb as u128)],
                    ));
                    out.push('\n');
                }
            }
            if r.capped_by_allocator {
                out.push_str(&match r.recommended_batch {
                    Some(rb) => t(
                        lang,
                        "Power of two to train with: {0} (capped by what the caching allocator serves, below)",
                        &[&thousands(rb as u128)],
                    ),
                    None => s(
                        lang,
                        "No batch to train with: the caching allocator, below, serves not even the smallest.",
                    ),
                });
                out.push('\n');
            }
        }
        _ => {
            let batch = r.advice.as_ref().map_or(1, |a| a.batch);
            out.push_str(&if batch == 1 {
                s(lang, "It does not fit even at batch 1.")
            } else {
                t(
                    lang,
                    "It does not fit even at batch {0}, the smallest BatchNorm allows in training.",
                    &[&batch],
                )
            });
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(&t(lang, "The lesson's procedure: start at 16 and double while the peak stays under {0} % of the card.", &[&format!("{:.0}", r.fraction * 100.0)]));
    out.push('\n');
    let h = [
        s(lang, "batch"),
        s(lang, "peak"),
        s(lang, "% of card"),
        s(lang, "result"),
    ];
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut tb = Table::new(&h, &[true, true, true, false]);
    for row in &r.procedure {
        tb.row(vec![
            thousands(row.batch_size as u128),
            row.peak_bytes.map(bytes).unwrap_or_else(|| "-".into()),
            row.percent_of_card
                .map(|p| format!("{p:.1} %"))
                .unwrap_or_else(|| "-".into()),
            if row.fits {
                s(lang, "fits")
            } else {
                s(lang, "over the budget: stop")
            },
        ]);
    }
    out.push_str(&tb.render());
    if let Some(adv) = &r.advice {
        out.push('\n');
        out.push_str(&render_advice(adv, o, lang));
    }
    if let Some(acc) = &r.accumulation {
        out.push('\n');
        out.push_str(&if world > 1 {
            t(
                lang,
                "To train with an effective batch of {0} ({1} per rank x {2} ranks): micro-batches of {3} per rank with --accumulation-steps {4} (peak {5}).",
                &[
                    &thousands(acc.target_batch as u128 * world),
                    &thousands(acc.target_batch as u128),
                    &world,
                    &thousands(acc.micro_batch as u128),
                    &acc.accumulation_steps,
                    &bytes(acc.peak_bytes),
                ],
            )
        } else {
            t(
                lang,
                "To train with an effective batch of {0}: micro-batches of {1} with --accumulation-steps {2} (peak {3}).",
                &[&thousands(acc.target_batch as u128), &thousands(acc.micro_batch as u128), &acc.accumulation_steps, &bytes(acc.peak_bytes)],
            )
        });
        out.push('\n');
        // An effective batch past the dataset: one step would be more than an epoch.
        if let Some(n) = r.dataset_size.filter(|&n| acc.target_batch > n) {
            out.push_str(&t(
                lang,
                "That effective batch is more than the {0} training images: one optimizer step would take more than an epoch.",
                &[&thousands(n as u128 * world)],
            ));
            out.push('\n');
        }
    }
    if let Some(lr) = &o.lr_advice {
        out.push('\n');
        out.push_str(&if world > 1 {
            t(
                lang,
                "Learning rate at the global batch {0} ({1} ranks; tuned {2} at batch {3}):",
                &[
                    &thousands(lr.batch as u128),
                    &world,
                    &lr.base_lr,
                    &lr.base_batch,
                ],
            )
        } else {
            t(
                lang,
                "Learning rate at batch {0} (tuned {1} at batch {2}):",
                &[&thousands(lr.batch as u128), &lr.base_lr, &lr.base_batch],
            )
        });
        out.push_str("\n  ");
        out.push_str(&t(
            lang,
            "linear scaling rule: {0} (lr x {1}/{2}; SGD, with a few epochs of warm-up)",
            &[
                &format!("{:.3e}", lr.linear_scaling_rule),
                &lr.batch,
                &lr.base_batch,
            ],
        ));
        out.push_str("\n  ");
        out.push_str(&t(
            lang,
            "square-root scaling rule: {0} (lr x sqrt({1}/{2}); usual for Adam)",
            &[
                &format!("{:.3e}", lr.square_root_scaling_rule),
                &lr.batch,
                &lr.base_batch,
            ],
        ));
        out.push('\n');
    }
    out
}

fn phase_name(p: Phase, lang: Lang) -> String {
    s(
        lang,
        match p {
            Phase::Forward => "the forward pass",
            Phase::Backward => "backward",
            Phase::Optimizer => "the optimizer step",
        },
    )
}

/// The "what would make it fit" table: the plan as given first, each change alone,
/// then all together; then why some rows change nothing and why all together can be
/// worse than one change.
fn render_advice(adv: &AdviceReport, o: &FitJson, lang: Lang) -> String {
    let mut out = t(
        lang,
        "What would make batch {0} fit (each change alone, then all together; budget {1}):",
        &[&adv.batch, &bytes(o.fit.budget_bytes)],
    );
    out.push('\n');
    // The sentence last, where the table wraps it to the terminal.
    let h = [
        t(lang, "peak at batch {0}", &[&adv.batch]),
        s(lang, "vs as given"),
        s(lang, "result"),
        s(lang, "change"),
    ];
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut tb = Table::new(&h, &[true, true, false, false]);
    let base = adv.baseline.as_ref().map(|b| b.peak_bytes);
    let verdict = |fits: bool| {
        if fits {
            s(lang, "fits")
        } else {
            s(lang, "still over")
        }
    };
    tb.row(vec![
        base.map(bytes).unwrap_or_else(|| "-".into()),
        "-".into(),
        s(lang, "over the budget"),
        match o.fit.mode {
            Mode::Train => t(lang, "as given: {0}, {1}", &[&o.optimizer, &o.precision]),
            Mode::Inference => t(lang, "as given: inference, {0}", &[&o.precision]),
        },
    ]);
    for a in &adv.changes {
        let vs = match (a.peak_bytes, base) {
            _ if a.changes_nothing => s(lang, "no change"),
            (Some(p), Some(b)) if b > 0 => {
                format!("{:+.1} %", (p as f64 - b as f64) / b as f64 * 100.0)
            }
            _ => "-".into(),
        };
        let change = if a.flags.is_empty() {
            s(lang, a.template)
        } else {
            t(lang, a.template, &[&a.flags])
        };
        tb.row(vec![
            a.peak_bytes.map(bytes).unwrap_or_else(|| "-".into()),
            vs,
            verdict(a.fits),
            change,
        ]);
    }
    out.push_str(&tb.render());
    let unchanged: Vec<&str> = adv
        .changes
        .iter()
        .filter(|a| a.changes_nothing)
        .map(|a| a.flags.as_str())
        .collect();
    if let (false, Some(b)) = (unchanged.is_empty(), &adv.baseline) {
        out.push_str(&paragraph(&t(
            lang,
            "\"no change\" ({0}): these save less than 1 % because the peak is in {1}, at {2}, where the weights, gradients and optimizer state alone take {3} of the {4}; they shrink what is not alive there (activations, the input).",
            &[
                &unchanged.join("; "),
                &phase_name(b.phase, lang),
                &b.at,
                &bytes(b.state_bytes),
                &bytes(b.peak_bytes),
            ],
        )));
    }
    if let Some(c) = &adv.combination {
        let why = match c.costly_flags.as_str() {
            "--precision amp-bf16" => s(
                lang,
                "mixed precision keeps a bf16 copy of the weights for forward and backward, which at a small batch costs more than the smaller activations save",
            ),
            "--checkpoint-segments" => s(
                lang,
                "checkpointing runs each segment's forward again in backward, so its outputs are alive again at the peak",
            ),
            _ => s(lang, "it moves the peak to where it adds memory"),
        };
        let best = adv
            .changes
            .iter()
            .find(|a| a.change == c.best_alone)
            .map_or_else(|| c.best_alone.clone(), |a| a.flags.clone());
        out.push_str(&paragraph(&t(
            lang,
            "All together ({0}) is worse than {1} alone ({2}): changes interact, and here {3} adds memory ({4} without it): {5}.",
            &[
                &bytes(c.together_bytes),
                &best,
                &bytes(c.best_alone_bytes),
                &c.costly_flags,
                &bytes(c.without_costly_bytes),
                &why,
            ],
        )));
    }
    out
}
