//! `fit` by what fails: the largest batch whose every malloc the simulated caching
//! allocator serves within the card's usable memory, less the CUDA context and the
//! cuDNN workspace bound (and under `set_per_process_memory_fraction` if asked).
//!
//! The planner's peak bounds the search from above (an allocation past the limit fails
//! whatever the cache holds, and the allocator counts at least the planner's bytes), so
//! only the last few candidates run the allocator.

use serde::Serialize;
use vramlab_graph::Shaped;

use crate::fit::max_batch;
use crate::{
    plan, DeviceOom, PlanConfig, PlanError, DEFAULT_CUDA_CONTEXT_BYTES,
    DEFAULT_CUDNN_WORKSPACE_BYTES,
};

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
    /// Estimated bound, added on top of reserved.
    pub cudnn_workspace_bytes: u128,
    /// What the allocator may take from the device: total - context - cuDNN bound.
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
    let context = template
        .cuda_context_bytes
        .unwrap_or(DEFAULT_CUDA_CONTEXT_BYTES);
    let has_conv = g
        .nodes()
        .iter()
        .any(|n| matches!(n.op, vramlab_graph::Op::Conv2d(_)));
    let cudnn = if has_conv {
        template
            .cudnn_workspace_bytes
            .unwrap_or(DEFAULT_CUDNN_WORKSPACE_BYTES)
    } else {
        0
    };
    let limit = budget.card_total_bytes.saturating_sub(context + cudnn);
    // set_per_process_memory_fraction: fraction x the device's total.
    let allowed = (budget.fraction < 1.0)
        .then(|| (budget.card_total_bytes as f64 * budget.fraction).floor() as u128);
    let mut answer = DeviceFit {
        card_total_bytes: budget.card_total_bytes,
        card_total_source: budget.card_total_source.clone(),
        cuda_context_bytes: context,
        cudnn_workspace_bytes: cudnn,
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
    let Some((upper, _)) = max_batch(g, &fast, cap.saturating_add(context))? else {
        return Ok(answer);
    };
    let mut sims = 0u32;
    let mut run = |b: u64| -> Result<Option<crate::DeviceReport>, PlanError> {
        sims += 1;
        let mut c = template.clone();
        c.batch_size = b;
        c.record_timeline = false;
        c.simulate_allocator = true;
        c.device_limit_bytes = Some(limit);
        c.allowed_memory_bytes = allowed;
        Ok(plan(g, &c)?.device)
    };
    let fits = |d: &crate::DeviceReport| d.out_of_memory.is_none();
    // Galloping down from the bound to a batch that runs, then bisecting.
    let smallest = if matches!(
        crate::fit::peak_at(g, &fast, 1),
        Err(PlanError::Framework { .. })
    ) {
        2
    } else {
        1
    };
    let (mut lo, mut hi) = (None::<(u64, crate::DeviceReport)>, upper.saturating_add(1));
    let mut step = 1u64;
    let mut b = upper;
    loop {
        let d = run(b)?.expect("pytorch-cuda simulates the allocator");
        if fits(&d) {
            lo = Some((b, d));
            break;
        }
        hi = b;
        if b <= smallest {
            break;
        }
        b = b.saturating_sub(step).max(smallest);
        step = step.saturating_mul(2);
    }
    if let Some((mut lo_b, mut lo_d)) = lo {
        while hi - lo_b > 1 {
            let mid = lo_b + (hi - lo_b) / 2;
            let d = run(mid)?.expect("pytorch-cuda simulates the allocator");
            if fits(&d) {
                lo_b = mid;
                lo_d = d;
            } else {
                hi = mid;
            }
        }
        answer.max_batch_size = Some(lo_b);
        answer.allocated_peak_bytes = Some(lo_d.allocated_peak_bytes);
        answer.reserved_peak_bytes = Some(lo_d.reserved_peak_bytes);
        answer.device_total_bytes = Some(lo_d.device_total_bytes);
    }
    // What fails one batch above (the planner's bound + 1 fails by construction when
    // the allocator reached it; it is simulated to name the failing request).
    let above = answer.max_batch_size.map_or(smallest, |b| b + 1);
    answer.out_of_memory_above = run(above)?.and_then(|d| d.out_of_memory);
    answer.simulations = sims;
    Ok(answer)
}
