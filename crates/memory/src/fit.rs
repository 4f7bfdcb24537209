//! Batch-size planning: the GPU catalog, the largest batch that fits a budget (found
//! exactly, without assuming memory is linear in the batch), the lesson's doubling
//! procedure, and what to change when even one image does not fit.

use serde::Serialize;
use vramlab_graph::Shaped;

use crate::{plan, Mode, Optimizer, OptimizerKind, Phase, PlanConfig, PlanError, Precision};

/// A GPU and its memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gpu {
    /// Canonical name, as `--gpu` takes it.
    pub name: &'static str,
    pub label: &'static str,
    /// Nominal memory in bytes (the vendor's GB, which are GiB for these cards).
    pub memory_bytes: u128,
    pub aliases: &'static [&'static str],
}

const GIB: u128 = 1 << 30;

macro_rules! gpu {
    ($name:expr, $label:expr, $gib:expr, [$($alias:expr),*]) => {
        Gpu { name: $name, label: $label, memory_bytes: $gib * GIB, aliases: &[$($alias),*] }
    };
}

/// Common training cards.
pub const GPUS: &[Gpu] = &[
    gpu!("t4", "NVIDIA T4 16 GB", 16, []),
    gpu!("p100", "NVIDIA Tesla P100 16 GB", 16, []),
    gpu!("v100-16gb", "NVIDIA V100 16 GB", 16, ["v100"]),
    gpu!("v100-32gb", "NVIDIA V100 32 GB", 32, []),
    gpu!("a10", "NVIDIA A10 24 GB", 24, ["a10g"]),
    gpu!("a40", "NVIDIA A40 48 GB", 48, []),
    gpu!("a100-40gb", "NVIDIA A100 40 GB", 40, []),
    gpu!("a100-80gb", "NVIDIA A100 80 GB", 80, []),
    gpu!(
        "h100",
        "NVIDIA H100 80 GB",
        80,
        ["h100-80gb", "h100-sxm", "h100-pcie"]
    ),
    gpu!("h100-nvl", "NVIDIA H100 NVL 94 GB", 94, []),
    gpu!("h200", "NVIDIA H200 141 GB", 141, []),
    gpu!("b200", "NVIDIA B200 180 GB", 180, []),
    gpu!("l4", "NVIDIA L4 24 GB", 24, []),
    gpu!("l40s", "NVIDIA L40S 48 GB", 48, ["l40"]),
    gpu!("rtx-a6000", "NVIDIA RTX A6000 48 GB", 48, ["a6000"]),
    gpu!("rtx-6000-ada", "NVIDIA RTX 6000 Ada 48 GB", 48, []),
    gpu!(
        "gtx-1080-ti",
        "NVIDIA GeForce GTX 1080 Ti 11 GB",
        11,
        ["1080ti", "1080-ti"]
    ),
    gpu!(
        "rtx-2080-ti",
        "NVIDIA GeForce RTX 2080 Ti 11 GB",
        11,
        ["2080ti", "2080-ti"]
    ),
    gpu!("titan-rtx", "NVIDIA TITAN RTX 24 GB", 24, []),
    gpu!("rtx-3060", "NVIDIA GeForce RTX 3060 12 GB", 12, ["3060"]),
    gpu!("rtx-3070", "NVIDIA GeForce RTX 3070 8 GB", 8, ["3070"]),
    gpu!("rtx-3080", "NVIDIA GeForce RTX 3080 10 GB", 10, ["3080"]),
    gpu!("rtx-3090", "NVIDIA GeForce RTX 3090 24 GB", 24, ["3090"]),
    gpu!("rtx-4060", "NVIDIA GeForce RTX 4060 8 GB", 8, ["4060"]),
    gpu!(
        "rtx-4060-ti-16gb",
        "NVIDIA GeForce RTX 4060 Ti 16 GB",
        16,
        []
    ),
    gpu!("rtx-4070", "NVIDIA GeForce RTX 4070 12 GB", 12, ["4070"]),
    gpu!("rtx-4080", "NVIDIA GeForce RTX 4080 16 GB", 16, ["4080"]),
    gpu!("rtx-4090", "NVIDIA GeForce RTX 4090 24 GB", 24, ["4090"]),
    gpu!("rtx-5090", "NVIDIA GeForce RTX 5090 32 GB", 32, ["5090"]),
];

fn normalize(s: &str) -> String {
    s.to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .trim_start_matches("nvidia")
        .trim_start_matches("geforce")
        .to_string()
}

/// Finds a card by name or alias (`h100`, `RTX 4090`, `rtx-4090`, `4090`).
pub fn find_gpu(name: &str) -> Result<Gpu, String> {
    find_gpu_or(
        name,
        " (or give any card's memory with --memory SIZE, e.g. --memory 24GiB)",
    )
}

/// [`find_gpu`], its errors ending in `otherwise` (what the command takes instead of a
/// card: `fit`'s --memory; nothing for `memory`).
pub fn find_gpu_or(name: &str, otherwise: &str) -> Result<Gpu, String> {
    // Names are letters, digits, spaces, '-' and '_' (`RTX 4090`, `rtx-4090`): anything
    // else is not a card's name, whatever normalising would leave of it.
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_');
    if name.trim().is_empty() || !name.chars().all(allowed) {
        return Err(format!(
            "unknown GPU `{name}`: a card's name has letters, digits and '-' (see `vramlab \
             gpus`){otherwise}"
        ));
    }
    let n = normalize(name);
    let hit = GPUS
        .iter()
        .find(|g| normalize(g.name) == n || g.aliases.iter().any(|a| normalize(a) == n));
    if let Some(g) = hit {
        return Ok(*g);
    }
    let similar: Vec<&str> = GPUS
        .iter()
        .filter(|g| !n.is_empty() && normalize(g.name).contains(&n))
        .map(|g| g.name)
        .collect();
    Err(if similar.len() == 1 {
        format!(
            "unknown GPU `{name}`: did you mean {}? (see `vramlab gpus`)",
            similar[0]
        )
    } else if similar.is_empty() {
        format!("unknown GPU `{name}`: see `vramlab gpus`{otherwise}")
    } else {
        format!(
            "`{name}` matches several GPUs: {}; name one{otherwise}",
            similar.join(", ")
        )
    })
}

/// The predicted peak for a batch size under a template config.
pub fn peak_at(g: &Shaped, template: &PlanConfig, batch: u64) -> Result<u128, PlanError> {
    let mut c = template.clone();
    c.batch_size = batch;
    c.record_timeline = false;
    // The planner's peak alone; the allocator's answer is `device_fit`'s.
    c.simulate_allocator = false;
    Ok(plan(g, &c)?.peak_bytes)
}

/// The planner's peaks of one model and config, each batch size planned once: `fit`'s
/// searches and its table ask for some batch sizes more than once.
struct Peaks<'a> {
    g: &'a Shaped,
    template: &'a PlanConfig,
    known: std::cell::RefCell<Vec<(u64, u128)>>,
    /// The largest batch searched ([`batch_limit`]).
    max_batch: u64,
}

impl<'a> Peaks<'a> {
    fn new(g: &'a Shaped, template: &'a PlanConfig) -> Self {
        Peaks {
            g,
            template,
            known: Default::default(),
            max_batch: batch_limit(g),
        }
    }

    fn at(&self, batch: u64) -> Result<u128, PlanError> {
        if let Some(&(_, p)) = self.known.borrow().iter().find(|(b, _)| *b == batch) {
            return Ok(p);
        }
        let p = peak_at(self.g, self.template, batch)?;
        self.known.borrow_mut().push((batch, p));
        Ok(p)
    }
}

/// One row of the lesson's procedure: start at 16, double.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcedureRow {
    pub batch_size: u64,
    pub peak_bytes: Option<u128>,
    pub percent_of_card: Option<f64>,
    pub fits: bool,
}

/// Where a step's highest point is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeakPoint {
    pub peak_bytes: u128,
    pub phase: Phase,
    /// `layer (aten op)`.
    pub at: String,
    /// Weights, buffers, gradients and optimizer state at the peak: what no change to
    /// activations can shrink.
    pub state_bytes: u128,
}

/// The highest point of the plan at `batch` (over its steps).
pub fn peak_point(g: &Shaped, template: &PlanConfig, batch: u64) -> Result<PeakPoint, PlanError> {
    let mut c = template.clone();
    c.batch_size = batch;
    c.record_timeline = false;
    let r = plan(g, &c)?;
    let step = r
        .steps
        .iter()
        .max_by_key(|s| s.peak_bytes)
        .ok_or_else(|| PlanError::Config("the plan has no step".into()))?;
    let a = &step.at_peak;
    Ok(PeakPoint {
        peak_bytes: r.peak_bytes,
        phase: step.peak_phase,
        at: step.peak_at.clone(),
        state_bytes: a.params + a.buffers + a.grads + a.optimizer_state,
    })
}

/// A change that would make the smallest batch fit, with its predicted peak.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    /// The sentence, in English.
    pub change: String,
    /// The sentence's template (`{0}` stands for `flags`), for translations.
    #[serde(skip)]
    pub template: &'static str,
    /// The command-line options that make the change.
    pub flags: String,
    pub peak_bytes: Option<u128>,
    pub fits: bool,
    /// Where this change's peak is (`None` when the plan fails).
    pub peak: Option<PeakPoint>,
    /// The change saves less than 1 % of the peak as given.
    pub changes_nothing: bool,
}

/// Why "all together" has a higher peak than the best of its parts alone: the part
/// whose removal from the combination lowers the peak most.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CombinationNote {
    /// The best of the combination's parts alone (its `change` sentence) and its peak.
    pub best_alone: String,
    pub best_alone_bytes: u128,
    pub together_bytes: u128,
    /// Flags of the change that costs memory in the combination, and the peak without it.
    pub costly_flags: String,
    pub without_costly_bytes: u128,
}

/// Everything the "what would make it fit" table shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdviceReport {
    /// 1, or 2 where BatchNorm makes batch 1 impossible.
    pub batch: u64,
    /// The plan as given, at that batch.
    pub baseline: Option<PeakPoint>,
    pub changes: Vec<Advice>,
    pub combination: Option<CombinationNote>,
}

/// Gradient accumulation to reach an effective batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccumulationPlan {
    pub target_batch: u64,
    pub micro_batch: u64,
    pub accumulation_steps: u64,
    pub peak_bytes: u128,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitReport {
    pub card_bytes: u128,
    pub fraction: f64,
    pub budget_bytes: u128,
    pub max_batch_size: Option<u64>,
    pub max_power_of_two: Option<u64>,
    pub peak_bytes_at_max: Option<u128>,
    pub peak_bytes_at_max_plus_one: Option<u128>,
    pub procedure: Vec<ProcedureRow>,
    /// Training or inference: inference has no optimizer and no backward.
    pub mode: Mode,
    /// Filled when nothing fits.
    pub advice: Option<AdviceReport>,
    pub accumulation: Option<AccumulationPlan>,
    /// The number of training images, when known.
    pub dataset_size: Option<u64>,
    /// The largest batch is more than the dataset: any batch up to the whole dataset
    /// fits, and no larger one can be drawn from it.
    pub max_batch_exceeds_dataset: bool,
    /// The power of two to train with: the largest one under both the largest batch and
    /// the dataset size (and the caching allocator's answer, once
    /// [`FitReport::cap_to_allocator`] has it).
    pub recommended_batch: Option<u64>,
    /// The simulated caching allocator's largest batch capped `recommended_batch`: the
    /// budget's peak counts neither its segments nor cuDNN's workspaces.
    pub capped_by_allocator: bool,
}

impl FitReport {
    /// Takes the caching allocator's answer (`device_fit`'s largest batch that runs;
    /// `None`: not even the smallest runs) into the batch to train with, so that the
    /// recommendation (and the learning rate scaled to it) never names a batch the
    /// simulated allocator cannot serve.
    pub fn cap_to_allocator(&mut self, runs: Option<u64>) {
        let Some(planned) = self.recommended_batch else {
            return;
        };
        let capped = runs.map(|r| power_of_two_under(r.min(planned)));
        if capped != Some(planned) {
            self.recommended_batch = capped;
            self.capped_by_allocator = true;
        }
    }
}

/// What `fit` is asked: a card, the share of it to use, and optionally an effective
/// batch to reach by accumulation and the dataset's size.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRequest {
    pub card_bytes: u128,
    /// Use at most this fraction of the card, in (0, 1].
    pub fraction: f64,
    pub target_batch: Option<u64>,
    pub dataset_size: Option<u64>,
}

impl FitRequest {
    /// The lesson's defaults: 80 % of the card, no accumulation, dataset unknown.
    pub fn new(card_bytes: u128) -> Self {
        FitRequest {
            card_bytes,
            fraction: 0.8,
            target_batch: None,
            dataset_size: None,
        }
    }
}

/// The largest effective batch `--target-batch` takes (2^40): its divisors are found by
/// trial division up to its square root, a million steps at most.
pub const MAX_TARGET_BATCH: u64 = 1 << 40;

/// Batches beyond this are not searched (the answer is then "at least this").
pub const MAX_BATCH: u64 = 1 << 60;

/// The largest batch a search tries: [`MAX_BATCH`], or fewer where the batch of images
/// would hold more values than one tensor may (`MAX_TENSOR_ELEMENTS`, the cap every
/// tensor of a plan has), which [`check_batch`] refuses.
pub fn batch_limit(g: &Shaped) -> u64 {
    let per_image: u128 = g.shapes[0].iter().map(|&d| d as u128).product();
    (vramlab_graph::MAX_TENSOR_ELEMENTS / per_image.max(1)).clamp(1, MAX_BATCH as u128) as u64
}

/// A batch of images is one tensor: refused where it would hold more values than a
/// tensor may have, as a layer's oversized tensor is.
pub fn check_batch(g: &Shaped, batch: u64) -> Result<(), PlanError> {
    let limit = batch_limit(g);
    if batch > limit {
        return Err(PlanError::Config(format!(
            "--batch-size {batch}: the batch of {batch}x{} images holds more than the {} values a \
             tensor may have (--input sets the image; at most {limit} such images)",
            vramlab_graph::fmt_shape(&g.shapes[0]),
            vramlab_graph::MAX_TENSOR_ELEMENTS,
        )));
    }
    Ok(())
}

/// The largest batch whose peak stays within `budget`: exact, found by bracketing an
/// affine estimate and bisecting, so that `peak(b) <= budget < peak(b + 1)`.
pub fn max_batch(
    g: &Shaped,
    template: &PlanConfig,
    budget: u128,
) -> Result<Option<(u64, u128)>, PlanError> {
    max_batch_in(&Peaks::new(g, template), budget)
}

/// The largest batch in `[lo, hi)` when `lo` fits and `hi` does not: first where the
/// line through their peaks meets the budget, then that guess's neighbours, then
/// bisection, so that `peak(b) <= budget < peak(b + 1)` as [`max_batch`] finds it.
fn max_batch_within(
    peaks: &Peaks,
    budget: u128,
    (mut lo, mut hi): (u64, u64),
) -> Result<Option<(u64, u128)>, PlanError> {
    let (p_lo, p_hi) = (peaks.at(lo)?, peaks.at(hi)?);
    let mut lo_peak = p_lo;
    let rise = p_hi.saturating_sub(p_lo).max(1);
    let guess = lo as u128 + (budget - p_lo) * (hi - lo) as u128 / rise;
    let guess = (guess as u64).clamp(lo, hi - 1);
    // The guess, then the batch next to it on the side the answer lies.
    let mut probe = guess.max(lo + 1);
    for _ in 0..2 {
        if probe <= lo || probe >= hi {
            break;
        }
        let p = peaks.at(probe)?;
        if p <= budget {
            (lo, lo_peak) = (probe, p);
            probe += 1;
        } else {
            hi = probe;
            probe -= 1;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let p = peaks.at(mid)?;
        if p <= budget {
            (lo, lo_peak) = (mid, p);
        } else {
            hi = mid;
        }
    }
    Ok(Some((lo, lo_peak)))
}

fn max_batch_in(peaks: &Peaks, budget: u128) -> Result<Option<(u64, u128)>, PlanError> {
    let fits = |b: u64| -> Result<Option<u128>, PlanError> {
        let p = peaks.at(b)?;
        Ok((p <= budget).then_some(p))
    };
    // Batch 1 is impossible where BatchNorm would see one value per channel (as in
    // PyTorch); the smallest batch is then 2.
    let (b_min, p_min) = match peaks.at(1) {
        Ok(p) => (1u64, p),
        Err(PlanError::Framework { .. }) => (2u64, peaks.at(2)?),
        Err(e) => return Err(e),
    };
    if p_min > budget {
        return Ok(None);
    }
    let p1 = p_min;
    // An affine estimate from two large batches, where the peak is in backward and
    // grows with the batch; the bracket search below makes it exact.
    let (b_lo, b_hi) = (1u64 << 20, 1u64 << 21);
    let (q_lo, q_hi) = (peaks.at(b_lo)?, peaks.at(b_hi)?);
    let slope = (q_hi.saturating_sub(q_lo)) / (b_hi - b_lo) as u128;
    let max_batch = peaks.max_batch.max(b_min);
    let guess = if slope == 0 {
        max_batch
    } else {
        let intercept = q_lo.saturating_sub(slope.saturating_mul(b_lo as u128));
        (budget.saturating_sub(intercept) / slope).clamp(b_min as u128, max_batch as u128) as u64
    };
    // Bracket [lo fits, hi does not] around the guess, widening by doubling steps.
    let (mut lo, mut lo_peak, mut hi);
    if let Some(p) = fits(guess)? {
        lo = guess;
        lo_peak = p;
        let mut step = 1u64;
        loop {
            let next = lo.saturating_add(step).min(max_batch);
            if next == lo {
                return Ok(Some((lo, lo_peak)));
            }
            match fits(next)? {
                Some(p) => {
                    lo = next;
                    lo_peak = p;
                    step = step.saturating_mul(2);
                }
                None => {
                    hi = next;
                    break;
                }
            }
        }
    } else {
        hi = guess;
        lo = b_min;
        lo_peak = p1;
        let mut step = 1u64;
        loop {
            let next = hi.saturating_sub(step).max(b_min);
            if next <= b_min {
                break;
            }
            match fits(next)? {
                Some(p) => {
                    lo = next;
                    lo_peak = p;
                    break;
                }
                None => {
                    hi = next;
                    step = step.saturating_mul(2);
                }
            }
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match fits(mid)? {
            Some(p) => {
                lo = mid;
                lo_peak = p;
            }
            None => hi = mid,
        }
    }
    Ok(Some((lo, lo_peak)))
}

/// Everything `vramlab fit` reports (see [`fit_with`] for the dataset size).
pub fn fit(
    g: &Shaped,
    template: &PlanConfig,
    card_bytes: u128,
    fraction: f64,
    target_batch: Option<u64>,
) -> Result<FitReport, PlanError> {
    fit_with(
        g,
        template,
        &FitRequest {
            card_bytes,
            fraction,
            target_batch,
            dataset_size: None,
        },
    )
}

/// Everything `vramlab fit` reports, for a request.
pub fn fit_with(
    g: &Shaped,
    template: &PlanConfig,
    req: &FitRequest,
) -> Result<FitReport, PlanError> {
    let (card_bytes, fraction) = (req.card_bytes, req.fraction);
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(PlanError::Config(format!(
            "--fraction must be in (0, 1], got {fraction}"
        )));
    }
    if card_bytes == 0 {
        return Err(PlanError::Config(
            "the card's memory must be more than 0 bytes".into(),
        ));
    }
    if let Some(t) = req.target_batch {
        if template.mode == Mode::Inference {
            return Err(PlanError::Config(
                "--target-batch is for training (gradient accumulation): inference has no \
                 optimizer step to reach"
                    .into(),
            ));
        }
        if !(1..=MAX_TARGET_BATCH).contains(&t) {
            return Err(PlanError::Config(format!(
                "--target-batch must be between 1 and {MAX_TARGET_BATCH}, got {t}"
            )));
        }
    }
    if req.dataset_size == Some(0) {
        return Err(PlanError::Config(
            "the dataset has no images: nothing to batch".into(),
        ));
    }
    let budget = (card_bytes as f64 * fraction).floor() as u128;
    let peaks = Peaks::new(g, template);
    // Doubling from 16 up to MAX_BATCH: at most 57 rows. Made first: where its last row
    // does not fit and the one before does, they bracket the largest batch.
    let mut procedure = Vec::new();
    let mut b = 16u64;
    loop {
        let peak = peaks.at(b).ok();
        let fits = peak.is_some_and(|p| p <= budget);
        procedure.push(ProcedureRow {
            batch_size: b,
            peak_bytes: peak,
            percent_of_card: peak.map(|p| 100.0 * p as f64 / card_bytes as f64),
            fits,
        });
        match b.checked_mul(2) {
            Some(next) if fits && next <= peaks.max_batch => b = next,
            _ => break,
        }
    }
    let bracket = match procedure.as_slice() {
        [.., a, z] if a.fits && !z.fits && z.peak_bytes.is_some() => {
            Some((a.batch_size, z.batch_size))
        }
        _ => None,
    };
    let best = match bracket {
        Some(br) => max_batch_within(&peaks, budget, br)?,
        None => max_batch_in(&peaks, budget)?,
    };
    let max_batch_size = best.map(|(b, _)| b);
    let max_power_of_two = max_batch_size.map(power_of_two_under);
    let peak_bytes_at_max_plus_one = match max_batch_size {
        Some(b) if b < peaks.max_batch => Some(peaks.at(b + 1)?),
        _ => None,
    };
    let advice = if best.is_none() {
        Some(advise(g, template, budget)?)
    } else {
        None
    };
    let accumulation = match (req.target_batch, max_batch_size) {
        (Some(t), Some(m)) => accumulate(g, template, t, m, budget)?,
        _ => None,
    };
    let max_batch_exceeds_dataset = matches!(
        (max_batch_size, req.dataset_size),
        (Some(b), Some(n)) if b > n
    );
    let recommended_batch =
        max_batch_size.map(|b| power_of_two_under(req.dataset_size.map_or(b, |n| b.min(n))));
    Ok(FitReport {
        card_bytes,
        fraction,
        budget_bytes: budget,
        max_batch_size,
        max_power_of_two,
        peak_bytes_at_max: best.map(|(_, p)| p),
        peak_bytes_at_max_plus_one,
        procedure,
        mode: template.mode,
        advice,
        accumulation,
        dataset_size: req.dataset_size,
        max_batch_exceeds_dataset,
        recommended_batch,
        capped_by_allocator: false,
    })
}

/// The largest power of two that is at most `n` (`n` >= 1).
fn power_of_two_under(n: u64) -> u64 {
    1u64 << (63 - n.max(1).leading_zeros())
}

/// The smallest batch the plan accepts: 1, or 2 where BatchNorm in training would see
/// one value per channel (PyTorch refuses that).
fn smallest_batch(g: &Shaped, template: &PlanConfig) -> u64 {
    match peak_at(g, template, 1) {
        Err(PlanError::Framework { .. }) => 2,
        _ => 1,
    }
}

/// What would make the smallest batch fit: each change alone, then all together, with
/// where each peak is, so that a change that saves nothing can be explained.
fn advise(g: &Shaped, template: &PlanConfig, budget: u128) -> Result<AdviceReport, PlanError> {
    let batch = smallest_batch(g, template);
    let baseline = peak_point(g, template, batch).ok();
    let base_bytes = baseline.as_ref().map(|p| p.peak_bytes);
    let mut out = Vec::new();
    let mut try_cfg = |template: &'static str, flags: String, c: PlanConfig, graph: &Shaped| {
        let peak = peak_point(graph, &c, batch).ok();
        let bytes = peak.as_ref().map(|p| p.peak_bytes);
        out.push(Advice {
            change: template.replace("{0}", &flags),
            template,
            flags,
            fits: bytes.is_some_and(|p| p <= budget),
            peak_bytes: bytes,
            changes_nothing: match (bytes, base_bytes) {
                (Some(p), Some(b)) => p.saturating_mul(100) >= b.saturating_mul(99),
                _ => false,
            },
            peak,
        });
    };
    let training = template.mode == Mode::Train;
    let mut amp = template.clone();
    amp.precision = Precision::AmpBf16;
    if template.precision == Precision::Fp32 {
        try_cfg(
            "mixed precision ({0})",
            "--precision amp-bf16".into(),
            amp.clone(),
            g,
        );
    }
    let mut ckpt = template.clone();
    let pieces = (g.nodes().len() as f64).sqrt().round().max(2.0) as u32;
    ckpt.checkpoint_segments = pieces;
    if training {
        try_cfg(
            "activation checkpointing ({0})",
            format!("--checkpoint-segments {pieces}"),
            ckpt.clone(),
            g,
        );
    }
    let mut sgd = template.clone();
    sgd.optimizer = Optimizer {
        momentum: 0.9,
        ..Optimizer::new(OptimizerKind::Sgd)
    };
    if training && template.optimizer.kind != OptimizerKind::Sgd {
        try_cfg(
            "SGD with momentum instead ({0}): one state tensor, not two",
            "--optimizer sgd --momentum 0.9".into(),
            sgd.clone(),
            g,
        );
    }
    if training
        && template.optimizer.implementation != Some(crate::OptimizerImpl::Fused)
        && template.optimizer.kind != OptimizerKind::RmsProp
    {
        let mut fused = template.clone();
        fused.optimizer.implementation = Some(crate::OptimizerImpl::Fused);
        try_cfg(
            "a fused optimizer ({0}): no per-parameter temporaries",
            "--optimizer-impl fused".into(),
            fused,
            g,
        );
    }
    if training {
        let mut plain = template.clone();
        plain.optimizer = Optimizer::new(OptimizerKind::Sgd);
        try_cfg(
            "plain SGD ({0}): no optimizer state at all",
            "--optimizer sgd".into(),
            plain,
            g,
        );
    }
    if template.precision != Precision::Bf16 {
        let mut bf16 = template.clone();
        bf16.precision = Precision::Bf16;
        try_cfg(
            "pure bf16 training ({0}): half of every tensor, weights included",
            "--precision bf16".into(),
            bf16,
            g,
        );
    }
    let s = &g.graph.input_shape;
    if s.len() == 3 && s[1] >= 64 && s[2] >= 64 {
        let mut small = g.graph.clone();
        small.input_shape = vec![s[0], s[1] / 2, s[2] / 2];
        if let Ok(sg) = small.infer() {
            try_cfg(
                "a smaller input ({0})",
                format!("--input {}x{}x{}", s[0], s[1] / 2, s[2] / 2),
                template.clone(),
                &sg,
            );
        }
    }
    let mut combination = None;
    if training {
        let mut all = sgd.clone();
        all.precision = amp.precision;
        all.checkpoint_segments = ckpt.checkpoint_segments;
        try_cfg(
            "all of AMP, checkpointing and SGD together",
            String::new(),
            all.clone(),
            g,
        );
        combination = explain_combination(g, &out, batch, &all, template)?;
    }
    Ok(AdviceReport {
        batch,
        baseline,
        changes: out,
        combination,
    })
}

/// Where "all together" peaks higher than the best of its parts alone, finds which part
/// costs memory in the combination: the one whose removal lowers the peak most.
fn explain_combination(
    g: &Shaped,
    rows: &[Advice],
    batch: u64,
    all: &PlanConfig,
    template: &PlanConfig,
) -> Result<Option<CombinationNote>, PlanError> {
    let Some((last, singles)) = rows.split_last() else {
        return Ok(None);
    };
    let Some(together) = last.peak_bytes else {
        return Ok(None);
    };
    // Compared with the parts of the combination alone (AMP, checkpointing, SGD with
    // momentum), not with changes it does not contain.
    let parts = [
        "--precision amp-bf16",
        "--checkpoint-segments",
        "--optimizer sgd --momentum",
    ];
    let Some(best) = singles
        .iter()
        .filter(|a| a.peak_bytes.is_some() && parts.iter().any(|p| a.flags.starts_with(p)))
        .min_by_key(|a| a.peak_bytes)
    else {
        return Ok(None);
    };
    let best_bytes = best.peak_bytes.expect("filtered");
    // Worse by more than a thousandth: a few allocator blocks on a peak of terabytes
    // (the same figure printed three times) is no interaction to explain.
    if together <= best_bytes + best_bytes / 1000 {
        return Ok(None);
    }
    let mut without_amp = all.clone();
    without_amp.precision = template.precision;
    let mut without_ckpt = all.clone();
    without_ckpt.checkpoint_segments = template.checkpoint_segments;
    let mut without_sgd = all.clone();
    without_sgd.optimizer = template.optimizer.clone();
    let mut costly: Option<(String, u128)> = None;
    for (flags, c) in [
        ("--precision amp-bf16", without_amp),
        ("--checkpoint-segments", without_ckpt),
        ("--optimizer sgd --momentum 0.9", without_sgd),
    ] {
        if let Ok(p) = peak_at(g, &c, batch) {
            if p < together && costly.as_ref().is_none_or(|(_, q)| p < *q) {
                costly = Some((flags.to_string(), p));
            }
        }
    }
    Ok(costly.map(|(costly_flags, without)| CombinationNote {
        best_alone: best.change.clone(),
        best_alone_bytes: best_bytes,
        together_bytes: together,
        costly_flags,
        without_costly_bytes: without,
    }))
}

/// The largest micro-batch that divides the target and whose accumulation plan fits
/// (from the second micro-batch on, all gradients are alive too).
fn accumulate(
    g: &Shaped,
    template: &PlanConfig,
    target: u64,
    max_fit: u64,
    budget: u128,
) -> Result<Option<AccumulationPlan>, PlanError> {
    if !(1..=MAX_TARGET_BATCH).contains(&target) {
        return Err(PlanError::Config(format!(
            "--target-batch must be between 1 and {MAX_TARGET_BATCH}, got {target}"
        )));
    }
    // Trial division up to the square root: at most 2^20 steps for a target of 2^40.
    let mut divisors = Vec::new();
    let mut d = 1u64;
    while d.checked_mul(d).is_some_and(|sq| sq <= target) {
        if target.is_multiple_of(d) {
            divisors.push(d);
            divisors.push(target / d);
        }
        d += 1;
    }
    divisors.dedup();
    divisors.sort_unstable_by(|a, b| b.cmp(a));
    for micro in divisors.into_iter().filter(|&m| m <= max_fit) {
        let steps = target / micro;
        let Ok(steps32) = u32::try_from(steps) else {
            continue;
        };
        let mut c = template.clone();
        c.batch_size = target;
        c.accumulation_steps = steps32;
        let peak = plan(g, &c)?.peak_bytes;
        if peak <= budget {
            return Ok(Some(AccumulationPlan {
                target_batch: target,
                micro_batch: micro,
                accumulation_steps: steps,
                peak_bytes: peak,
            }));
        }
    }
    Ok(None)
}

/// Learning rates for a new batch size from one tuned at `base_batch`: the linear
/// scaling rule (Goyal et al. 2017, for SGD with warm-up) and the square-root scaling
/// rule (Krizhevsky 2014, Hoffer et al. 2017; common for Adam).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LrAdvice {
    pub base_batch: u64,
    pub base_lr: f64,
    pub batch: u64,
    pub linear_scaling_rule: f64,
    pub square_root_scaling_rule: f64,
}

/// The two rules' learning rates at `batch`; the base batch and learning rate must be
/// usable (at least 1; finite and more than 0).
pub fn lr_advice(base_batch: u64, base_lr: f64, batch: u64) -> Result<LrAdvice, PlanError> {
    if base_batch == 0 {
        return Err(PlanError::Config("--base-batch must be at least 1".into()));
    }
    if !(base_lr.is_finite() && base_lr > 0.0) {
        return Err(PlanError::Config(format!(
            "--base-lr must be a finite number more than 0, got {base_lr}"
        )));
    }
    if batch == 0 {
        return Err(PlanError::Config("the batch must be at least 1".into()));
    }
    let k = batch as f64 / base_batch as f64;
    if !(base_lr * k).is_finite() {
        return Err(PlanError::Config(format!(
            "--base-lr {base_lr:e} scaled to batch {batch} is not a finite number: give a learning rate a model trains with"
        )));
    }
    Ok(LrAdvice {
        base_batch,
        base_lr,
        batch,
        linear_scaling_rule: base_lr * k,
        square_root_scaling_rule: base_lr * k.sqrt(),
    })
}
