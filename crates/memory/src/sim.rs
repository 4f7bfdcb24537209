//! The allocation simulator: storages with reference counts, a running total by
//! category, and the peak sampled at op boundaries, as PyTorch's own trackers sample it.
//!
//! The training-step model (`train.rs`) and the optimizers (`optim.rs`) drive it: they
//! allocate, add and drop references, mark tensors saved for backward, and call
//! [`Sim::boundary`] after each aten-level op.

use crate::{Category, CategoryBytes, Phase};

/// Index of a storage in the simulator.
pub type Sid = usize;

#[derive(Debug, Clone)]
struct Storage {
    bytes: u128,
    /// Bytes the allocator really hands out (rounded up on CUDA).
    padded: u128,
    /// `None`: an activation while some backward node keeps it, else a temporary.
    fixed: Option<Category>,
    refs: u32,
    saved: u32,
    alive: bool,
}

/// One point of the timeline: the live total after an op.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TimelinePoint {
    pub phase: Phase,
    pub op: &'static str,
    pub layer: String,
    #[serde(skip)]
    pub layer_index: usize,
    pub bytes: u128,
}

/// Where the highest point of a step was.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakPoint {
    pub bytes: u128,
    pub phase: Phase,
    pub op: &'static str,
    /// Index into the caller's layer names.
    pub layer: usize,
    pub at: CategoryBytes,
}

pub struct Sim {
    storages: Vec<Storage>,
    fixed: [u128; 8],
    saved_other: u128,
    unsaved_other: u128,
    padding: u128,
    round_to: u128,
    /// Memory outside the framework's counters (CUDA context), always counted.
    pub context_bytes: u128,
    pub phase: Phase,
    /// The layer running now, as an index into the caller's names.
    pub layer: usize,
    peak: Option<PeakPoint>,
    timeline: Option<Vec<TimelinePoint>>,
}

impl Sim {
    pub fn new(round_to: u128, context_bytes: u128, record_timeline: bool) -> Self {
        Sim {
            storages: Vec::new(),
            fixed: [0; 8],
            saved_other: 0,
            unsaved_other: 0,
            padding: 0,
            round_to: round_to.max(1),
            context_bytes,
            phase: Phase::Forward,
            layer: 0,
            peak: None,
            timeline: record_timeline.then(Vec::new),
        }
    }

    /// Allocates a storage with one reference. `None` as category: an activation or a
    /// temporary, decided by whether backward keeps it.
    pub fn alloc(&mut self, bytes: u128, category: Option<Category>) -> Sid {
        let padded = if bytes == 0 {
            0
        } else {
            bytes.div_ceil(self.round_to) * self.round_to
        };
        self.storages.push(Storage {
            bytes,
            padded,
            fixed: category,
            refs: 1,
            saved: 0,
            alive: true,
        });
        self.add_live(self.storages.len() - 1, true);
        self.storages.len() - 1
    }

    fn add_live(&mut self, sid: Sid, add: bool) {
        let s = &self.storages[sid];
        let (bytes, pad) = (s.bytes, s.padded - s.bytes);
        let slot = match s.fixed {
            Some(c) => &mut self.fixed[c as usize],
            None if s.saved > 0 => &mut self.saved_other,
            None => &mut self.unsaved_other,
        };
        if add {
            *slot += bytes;
            self.padding += pad;
        } else {
            *slot -= bytes;
            self.padding -= pad;
        }
    }

    pub fn bytes(&self, sid: Sid) -> u128 {
        self.storages[sid].bytes
    }

    pub fn incref(&mut self, sid: Sid) {
        debug_assert!(self.storages[sid].alive, "incref of a freed storage");
        self.storages[sid].refs += 1;
    }

    pub fn decref(&mut self, sid: Sid) {
        let s = &mut self.storages[sid];
        debug_assert!(s.refs > 0 && s.alive, "decref of a dead storage");
        s.refs -= 1;
        if s.refs == 0 && s.saved == 0 {
            self.add_live(sid, false);
            self.storages[sid].alive = false;
        }
    }

    /// A backward node keeps `sid`.
    pub fn save(&mut self, sid: Sid) {
        self.add_live(sid, false);
        self.storages[sid].saved += 1;
        self.add_live(sid, true);
    }

    /// A backward node releases `sid`.
    pub fn unsave(&mut self, sid: Sid) {
        self.add_live(sid, false);
        let s = &mut self.storages[sid];
        s.saved -= 1;
        if s.refs == 0 && s.saved == 0 {
            s.alive = false;
        } else {
            self.add_live(sid, true);
        }
    }

    /// The storage's fixed category (params, batch, ...), or None for activations and
    /// temporaries.
    pub fn fixed_category(&self, sid: Sid) -> Option<Category> {
        self.storages[sid].fixed
    }

    pub fn refs(&self, sid: Sid) -> u32 {
        self.storages[sid].refs + self.storages[sid].saved
    }

    /// Moves a live storage into another category (a gradient stolen into `.grad`).
    pub fn recategorize(&mut self, sid: Sid, category: Category) {
        self.add_live(sid, false);
        self.storages[sid].fixed = Some(category);
        self.add_live(sid, true);
    }

    /// Live bytes by category now (overhead: allocator rounding plus context).
    pub fn live(&self) -> CategoryBytes {
        let f = &self.fixed;
        CategoryBytes {
            params: f[Category::Params as usize],
            buffers: f[Category::Buffers as usize],
            grads: f[Category::Grads as usize],
            optimizer_state: f[Category::OptimizerState as usize],
            data_batch: f[Category::DataBatch as usize],
            activations: f[Category::Activations as usize] + self.saved_other,
            temporaries: f[Category::Temporaries as usize] + self.unsaved_other,
            overhead: f[Category::Overhead as usize] + self.padding + self.context_bytes,
        }
    }

    fn total(&self) -> u128 {
        self.fixed.iter().sum::<u128>()
            + self.saved_other
            + self.unsaved_other
            + self.padding
            + self.context_bytes
    }

    /// An op finished: sample the live total.
    pub fn boundary(&mut self, op: &'static str) {
        let total = self.total();
        if let Some(t) = &mut self.timeline {
            t.push(TimelinePoint {
                phase: self.phase,
                op,
                layer: String::new(),
                layer_index: self.layer,
                bytes: total,
            });
        }
        if self.peak.as_ref().is_none_or(|p| total > p.bytes) {
            self.peak = Some(PeakPoint {
                bytes: total,
                phase: self.phase,
                op,
                layer: self.layer,
                at: self.live(),
            });
        }
    }

    /// Starts a new step's peak.
    pub fn reset_peak(&mut self) {
        self.peak = None;
    }

    pub fn peak(&self) -> Option<&PeakPoint> {
        self.peak.as_ref()
    }

    /// The timeline with each point's layer named from `names`.
    pub fn take_timeline(&mut self, names: &[String]) -> Option<Vec<TimelinePoint>> {
        self.timeline.take().map(|mut t| {
            for p in &mut t {
                p.layer = names[p.layer_index].clone();
            }
            t
        })
    }

    /// The step's report from its peak, with layers named from `names`.
    pub fn step_report(
        &self,
        step: u32,
        names: &[String],
        before: CategoryBytes,
        after: CategoryBytes,
    ) -> crate::StepReport {
        let peak = self.peak.as_ref().expect("every step has at least one op");
        crate::StepReport {
            step,
            peak_bytes: peak.bytes,
            peak_phase: peak.phase,
            peak_at: format!(
                "{} ({})",
                names[peak.layer],
                peak.op.trim_end_matches(".default")
            ),
            peak_layer: names[peak.layer].clone(),
            peak_op: peak.op.to_string(),
            before_step: before,
            at_peak: peak.at,
            after_step: after,
        }
    }
}
