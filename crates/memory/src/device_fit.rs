//! `fit` by what fails: the largest batch whose every malloc the simulated caching
//! allocator serves within the card's usable memory, less the CUDA context (and under
//! `set_per_process_memory_fraction` if asked). cuDNN's workspaces are requests like
//! any other, estimated per convolution (`crate::cudnn`); one the allocator cannot
//! serve makes PyTorch pick another plan, not fail.
//!
//! The planner's affine estimate (two plans at large batches) gives a first batch: under
//! a limit the allocator frees its cache and retries before it fails, so the answer sits
//! just under it. Runs under the limit then bracket and bisect to the exact answer, so
//! that about four allocator runs decide it.

use serde::Serialize;
use vramlab_graph::Shaped;

use crate::fit::batch_limit;
use crate::{plan, DeviceOom, PlanConfig, PlanError};

/// The card as the allocator meets it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceBudget {
    /// The total a process sees (nvidia-smi), or the nominal size.
    pub card_total_bytes: u128,
    /// What that figure rests on.
    pub card_total_source: String,
    /// `torch.cuda.set_per_process_memory_fraction`; 1: not set.
    pub fraction: f64,
}

/// The answer, with what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceFit {
    pub card_total_bytes: u128,
    pub card_total_source: String,
    /// Estimated, outside PyTorch's counters.
    pub cuda_context_bytes: u128,
    /// NCCL's buffers with more than one rank: estimated, outside them too.
    pub nccl_bytes: u128,
    /// What the allocator may take from the device: total - context - NCCL.
    pub allocator_limit_bytes: u128,
    /// `set_per_process_memory_fraction`'s maximum, when a fraction under 1 is asked.
    pub allowed_memory_bytes: Option<u128>,
    pub alloc_conf: String,
    /// Largest batch whose steps 1 to 3 run without "CUDA out of memory".
    pub max_batch_size: Option<u64>,
    /// At that batch: `max_memory_allocated`, `max_memory_reserved`, nvidia-smi.
    pub allocated_peak_bytes: Option<u128>,
    pub reserved_peak_bytes: Option<u128>,
    pub device_total_bytes: Option<u128>,
    /// The first failing request one batch above.
    pub out_of_memory_above: Option<DeviceOom>,
    /// Allocator simulations the search ran.
    pub simulations: u32,
}

/// What the caching allocator may take on a card of `card_total_bytes` (what PyTorch
/// sees): the total less the CUDA context (an estimate where not measured) and, with
/// more than one rank, NCCL's buffers.
pub fn allocator_limit(cfg: &PlanConfig, card_total_bytes: u128) -> u128 {
    card_total_bytes.saturating_sub(cfg.outside_allocator_bytes())
}

/// The largest batch the simulated allocator serves on `budget`'s card.
pub fn device_fit(
    g: &Shaped,
    template: &PlanConfig,
    budget: &DeviceBudget,
) -> Result<DeviceFit, PlanError> {
    if !(budget.fraction > 0.0 && budget.fraction <= 1.0) {
        return Err(PlanError::Config(format!(
            "--fraction must be in (0, 1], got {}",
            budget.fraction
        )));
    }
    let context = template.outside_allocator_bytes();
    let limit = allocator_limit(template, budget.card_total_bytes);
    // set_per_process_memory_fraction: fraction x the device's total.
    let allowed = (budget.fraction < 1.0)
        .then(|| (budget.card_total_bytes as f64 * budget.fraction).floor() as u128);
    let mut answer = DeviceFit {
        card_total_bytes: budget.card_total_bytes,
        card_total_source: budget.card_total_source.clone(),
        cuda_context_bytes: template.context_bytes(),
        nccl_bytes: template.nccl_bytes(),
        allocator_limit_bytes: limit,
        allowed_memory_bytes: allowed,
        alloc_conf: template.alloc_conf.describe(),
        max_batch_size: None,
        allocated_peak_bytes: None,
        reserved_peak_bytes: None,
        device_total_bytes: None,
        out_of_memory_above: None,
        simulations: 0,
    };
    // The planner's bound: its peak (context included) within limit + context, and
    // within the fraction's maximum + context.
    let mut fast = template.clone();
    fast.simulate_allocator = false;
    let cap = allowed.map_or(limit, |a| a.min(limit));
    let max_batch = batch_limit(g);
    let planner = |b: u64| crate::fit::peak_at(g, &fast, b);
    // Batch 1 is impossible where BatchNorm would see one value per channel; asked only
    // when the search comes down to 1.
    let smallest_batch = || match planner(1) {
        Err(PlanError::Framework { .. }) => Ok(2),
        Err(e) => Err(e),
        Ok(_) => Ok(1),
    };
    // The planner's peak is affine in the batch past the smallest ones: two large
    // batches give its slope, as in `max_batch`.
    let (b_lo, b_hi) = (1u64 << 20, 1u64 << 21);
    let (q_lo, q_hi) = (planner(b_lo)?, planner(b_hi)?);
    let slope = q_hi.saturating_sub(q_lo) / (b_hi - b_lo) as u128;
    // Bytes the allocator must hold at batch b, by the planner (context excluded).
    let base = q_lo
        .saturating_sub(slope.saturating_mul(b_lo as u128))
        .saturating_sub(context);
    let batch_for = |bytes: u128| -> u64 {
        bytes
            .saturating_sub(base)
            .checked_div(slope)
            .map_or(max_batch, |b| b.clamp(1, max_batch as u128) as u64)
    };
    let mut sims = 0u32;
    // Every run is under the limit (and the fraction's maximum).
    let mut run = |b: u64| -> Result<crate::DeviceReport, PlanError> {
        sims += 1;
        let mut c = template.clone();
        c.batch_size = b;
        c.record_timeline = false;
        c.simulate_allocator = true;
        c.device_limit_bytes = Some(limit);
        c.allowed_memory_bytes = allowed;
        Ok(plan(g, &c)?
            .device
            .expect("pytorch-cuda simulates the allocator"))
    };
    // Under a limit the allocator frees its cache and retries before failing, so the
    // answer sits just under the planner's: start half a percent below it.
    let first = batch_for(cap);
    let mut b = first.saturating_sub((first / 200).max(1)).max(1);
    let smallest = if b <= 2 { smallest_batch()? } else { 1 };
    b = b.max(smallest);
    // Then exact: runs under the limit, galloping to a bracket [fits, fails], then
    // bisecting (the answer assumes that a batch that runs, runs with fewer images).
    let fits = |d: &crate::DeviceReport| d.out_of_memory.is_none();
    let mut lo: Option<(u64, crate::DeviceReport)> = None;
    let mut hi: Option<(u64, crate::DeviceReport)> = None;
    let d = run(b)?;
    let mut step: u64;
    let first_fits = fits(&d);
    if first_fits {
        // The first step: as many images as the allocator's headroom at `b` holds at
        // the planner's bytes per image (at least one), since reserved memory grows
        // with the batch about as the planner's peak does; then one and doubling.
        let headroom = cap.saturating_sub(d.reserved_peak_bytes);
        step = headroom
            .checked_div(slope)
            .map_or(1, |k| k.clamp(1, max_batch as u128) as u64);
        lo = Some((b, d));
        let mut jumped = false;
        loop {
            let (lb, _) = lo.as_ref().expect("set");
            let next = lb.saturating_add(step).min(max_batch);
            if next == *lb {
                break;
            }
            let d = run(next)?;
            if fits(&d) {
                lo = Some((next, d));
                step = if jumped { step.saturating_mul(2) } else { 1 };
                jumped = true;
            } else {
                hi = Some((next, d));
                break;
            }
        }
    } else {
        // The first step down: the images the failing request was short of, at the
        // planner's bytes per image (at least one).
        let short = d.out_of_memory.as_ref().map_or(0, |o| {
            (o.reserved_bytes + o.tried_to_allocate_bytes).saturating_sub(cap)
        });
        step = match slope {
            0 => 1,
            s => (short.div_ceil(s) + 1).min(max_batch as u128) as u64,
        };
        hi = Some((b, d));
        let mut floor = smallest;
        loop {
            let (hb, _) = hi.as_ref().expect("set");
            if *hb <= 2 && floor == 1 {
                floor = smallest_batch()?;
            }
            if *hb <= floor {
                break;
            }
            let next = hb.saturating_sub(step).max(floor);
            let next = if next <= 2 && floor == 1 {
                floor = smallest_batch()?;
                next.max(floor)
            } else {
                next
            };
            let d = run(next)?;
            if fits(&d) {
                lo = Some((next, d));
                break;
            }
            hi = Some((next, d));
            step = step.saturating_mul(2);
        }
    }
    // Stepped down by the estimate of what was short, the batch that runs is most
    // likely the answer: its neighbour first.
    let mut neighbour_first = !first_fits;
    if lo.is_some() && hi.is_some() {
        let (mut lb, mut ld) = lo.take().expect("checked");
        let (mut hb, mut hd) = hi.take().expect("checked");
        while hb - lb > 1 {
            let mid = if std::mem::take(&mut neighbour_first) {
                lb + 1
            } else {
                lb + (hb - lb) / 2
            };
            let d = run(mid)?;
            if fits(&d) {
                (lb, ld) = (mid, d);
            } else {
                (hb, hd) = (mid, d);
            }
        }
        lo = Some((lb, ld));
        hi = Some((hb, hd));
    }
    if let Some((lb, ld)) = &lo {
        answer.max_batch_size = Some(*lb);
        answer.allocated_peak_bytes = Some(ld.allocated_peak_bytes);
        answer.reserved_peak_bytes = Some(ld.reserved_peak_bytes);
        answer.device_total_bytes = Some(ld.device_total_bytes);
    }
    // The failing request one batch above the answer (or at the smallest batch).
    answer.out_of_memory_above = hi.and_then(|(_, d)| d.out_of_memory);
    answer.simulations = sims;
    Ok(answer)
}
