//! The allocation simulator: storages with reference counts, a running total by
//! category, and the peak sampled at op boundaries, as PyTorch's own trackers sample it.
//!
//! The training-step model (`train.rs`) and the optimizers (`optim.rs`) drive it: they
//! allocate, add and drop references, mark tensors saved for backward, and call
//! [`Sim::boundary`] after each aten-level op.

use crate::cuda_alloc::{AllocStats, BlockId, CachingAllocator, OutOfMemory};
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
    /// pytorch-cuda: the simulated caching allocator's `memory_allocated()` and
    /// `memory_reserved()` after the op (the context is in neither).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u128>,
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
    fixed: [u128; Category::COUNT],
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
    /// While false, boundaries are not added to the timeline (the allocator's third step).
    pub timeline_on: bool,
    /// The CUDA caching allocator, fed every malloc and free (pytorch-cuda).
    device: Option<Device>,
}

/// The caching allocator and which block serves each storage.
struct Device {
    alloc: CachingAllocator,
    block_of: Vec<Option<BlockId>>,
    /// cuBLAS workspaces taken: the main thread's (forward, optimizer) and the autograd
    /// engine's device thread's (backward), and the cuBLASLt workspace.
    cublas_workspace: [bool; 2],
    cublaslt_workspace: bool,
    /// Bytes of all workspaces taken so far.
    workspace_bytes: u128,
    /// The largest cuDNN workspace asked for.
    cudnn_largest: u128,
    oom: Option<OomAt>,
    /// Every malloc and free in order, when asked (`memory --device-trace`).
    trace: Option<Vec<DeviceEvent>>,
}

/// The cuBLASLt workspace PyTorch takes from the caching allocator (1 MiB).
pub const CUBLASLT_WORKSPACE_BYTES: u128 = 1 << 20;

/// One request to the caching allocator, as `torch.cuda.memory._snapshot()`'s
/// `device_traces` lists them (`alloc`, `free_completed`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceEvent {
    pub action: &'static str,
    /// The requested bytes (the allocator rounds them up to its blocks).
    pub bytes: u128,
    /// The allocator's block: a free names the block its allocation got (as the
    /// address does in PyTorch's trace); `None` for a request that failed.
    pub block: Option<BlockId>,
    pub phase: Phase,
    /// Index into the caller's layer names.
    #[serde(skip)]
    pub layer: usize,
    /// The layer's name, filled in by the caller.
    pub layer_name: String,
}

/// The first request the caching allocator could not serve, and where it came.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OomAt {
    pub error: OutOfMemory,
    pub phase: Phase,
    /// Index into the caller's layer names.
    #[serde(skip)]
    pub layer: usize,
}

impl Sim {
    pub fn new(round_to: u128, context_bytes: u128, record_timeline: bool) -> Self {
        Sim {
            // A resnet50 step makes about 6,000 storages: growing from empty would copy
            // the vector a dozen times per plan.
            storages: Vec::with_capacity(8192),
            fixed: [0; Category::COUNT],
            saved_other: 0,
            unsaved_other: 0,
            padding: 0,
            round_to: round_to.max(1),
            context_bytes,
            phase: Phase::Forward,
            layer: 0,
            peak: None,
            timeline: record_timeline.then(Vec::new),
            timeline_on: true,
            device: None,
        }
    }

    /// Feeds every allocation and free from now on to `alloc`.
    pub fn attach_allocator(&mut self, alloc: CachingAllocator) {
        self.device = Some(Device {
            alloc,
            block_of: {
                let mut b = Vec::with_capacity(self.storages.capacity());
                b.resize(self.storages.len(), None);
                b
            },
            cublas_workspace: [false; 2],
            cublaslt_workspace: false,
            workspace_bytes: 0,
            cudnn_largest: 0,
            oom: None,
            trace: None,
        });
    }

    /// Records every malloc and free the allocator sees from now on.
    pub fn record_device_trace(&mut self) {
        if let Some(d) = &mut self.device {
            d.trace = Some(Vec::new());
        }
    }

    /// The recorded requests, each with its layer named from `names`.
    pub fn take_device_trace(&mut self, names: &[String]) -> Option<Vec<DeviceEvent>> {
        let mut t = self.device.as_mut()?.trace.take()?;
        for e in &mut t {
            e.layer_name = names.get(e.layer).cloned().unwrap_or_default();
        }
        Some(t)
    }

    fn trace_event(&mut self, action: &'static str, bytes: u128, block: Option<BlockId>) {
        let (phase, layer) = (self.phase, self.layer);
        let d = self.device.as_mut().filter(|d| d.oom.is_none());
        if let Some(t) = d.and_then(|d| d.trace.as_mut()) {
            t.push(DeviceEvent {
                action,
                bytes,
                block,
                phase,
                layer,
                layer_name: String::new(),
            });
        }
    }

    fn device_malloc(&mut self, bytes: u128) -> Option<BlockId> {
        let (phase, layer) = (self.phase, self.layer);
        let d = self.device.as_mut()?;
        // A zero-byte storage has no block (`allocate` skips malloc for size 0). After
        // "CUDA out of memory" the step is over in PyTorch: the planner goes on for its
        // own figures, but the allocator is not asked again.
        if bytes == 0 || d.oom.is_some() {
            return None;
        }
        let result = d.alloc.malloc(bytes);
        // PyTorch's history records a failed request as `oom`, and nothing after it.
        let (action, block) = match result {
            Ok(b) => ("alloc", Some(b)),
            Err(_) => ("oom", None),
        };
        self.trace_event(action, bytes, block);
        let d = self.device.as_mut()?;
        match result {
            Ok(b) => Some(b),
            Err(error) => {
                d.oom.get_or_insert(OomAt {
                    error,
                    phase,
                    layer,
                });
                None
            }
        }
    }

    fn device_free(&mut self, sid: Sid) {
        let bytes = self.storages[sid].bytes;
        if let Some(d) = &mut self.device {
            if let Some(b) = d.block_of[sid].take() {
                d.alloc.free(b);
                self.trace_event("free", bytes, Some(b));
            }
        }
    }

    /// The cuBLAS workspace, which a thread's first matmul takes from the caching
    /// allocator and keeps: counted by PyTorch's allocator, not by any tensor category.
    /// ATen keys workspaces by (cuBLAS handle, stream) (`getCurrentCUDABlasHandle` and
    /// `getNewWorkspace` in CublasHandlePool.cpp) and hands each thread its own handle,
    /// so the forward (main thread) and backward (the autograd engine's device thread)
    /// take one each: two blocks of 32 MiB on an H200 with PyTorch 2.11, measured
    /// (crates/memory/tests/fixtures/gpu/).
    pub fn cublas_workspace(&mut self, bytes: u128) {
        let thread = usize::from(self.phase == Phase::Backward);
        if self
            .device
            .as_ref()
            .is_some_and(|d| !d.cublas_workspace[thread])
        {
            self.device_malloc(bytes);
            if let Some(d) = &mut self.device {
                d.cublas_workspace[thread] = true;
                d.workspace_bytes += bytes;
            }
        }
    }

    /// The cuBLASLt workspace, which the first `addmm` with a bias (a Linear layer,
    /// through `gemm_and_bias`) takes on top of the cuBLAS one and keeps: 1 MiB
    /// (`TORCH_CUBLASLT_WORKSPACE_SIZE`'s default), measured on PyTorch 2.11.
    pub fn cublaslt_workspace(&mut self) {
        if self.device.as_ref().is_some_and(|d| !d.cublaslt_workspace) {
            self.device_malloc(CUBLASLT_WORKSPACE_BYTES);
            if let Some(d) = &mut self.device {
                d.cublaslt_workspace = true;
                d.workspace_bytes += CUBLASLT_WORKSPACE_BYTES;
            }
        }
    }

    /// A cuDNN convolution's workspace ([`crate::cudnn`]): asked of the caching
    /// allocator before the kernel and freed after it. A request the allocator cannot
    /// serve is no error: PyTorch's `try_plans` (aten/src/ATen/native/cudnn/Conv_v8.cpp)
    /// catches the `OutOfMemoryError` and runs the next plan, modelled as one that needs
    /// no workspace. The failed request has the allocator's side effects all the same
    /// (it frees its cached blocks and retries first). A served one is a point of the
    /// timeline (`op`'s), where the allocator's counts include it.
    pub fn cudnn_workspace(&mut self, bytes: u128, op: &'static str) {
        let Some(d) = self.device.as_mut().filter(|d| d.oom.is_none()) else {
            return;
        };
        if bytes == 0 {
            return;
        }
        d.cudnn_largest = d.cudnn_largest.max(bytes);
        if let Ok(block) = d.alloc.malloc(bytes) {
            self.trace_event("alloc", bytes, Some(block));
            self.boundary(op);
            if let Some(d) = &mut self.device {
                d.alloc.free(block);
            }
            self.trace_event("free", bytes, Some(block));
        }
    }

    /// The largest cuDNN workspace asked for so far.
    pub fn cudnn_largest(&self) -> u128 {
        self.device.as_ref().map_or(0, |d| d.cudnn_largest)
    }

    /// Bytes of the cuBLAS and cuBLASLt workspaces taken so far.
    pub fn workspace_bytes(&self) -> u128 {
        self.device.as_ref().map_or(0, |d| d.workspace_bytes)
    }

    /// The allocator's statistics, if one is attached.
    pub fn device_stats(&self) -> Option<AllocStats> {
        self.device.as_ref().map(|d| d.alloc.stats())
    }

    /// The first failed request, if any.
    pub fn device_oom(&self) -> Option<&OomAt> {
        self.device.as_ref().and_then(|d| d.oom.as_ref())
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
        if self.device.is_some() {
            let block = self.device_malloc(bytes);
            if let Some(d) = &mut self.device {
                d.block_of.push(block);
            }
        }
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
            self.device_free(sid);
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
            self.device_free(sid);
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
            communication: f[Category::Communication as usize],
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
        let on = self.timeline_on;
        if let Some(t) = self.timeline.as_mut().filter(|_| on) {
            let device = self.device.as_ref().map(|d| d.alloc.stats());
            t.push(TimelinePoint {
                phase: self.phase,
                op,
                layer: String::new(),
                layer_index: self.layer,
                bytes: total,
                allocated: device.map(|s| s.allocated_bytes.current),
                reserved: device.map(|s| s.reserved_bytes.current),
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
        if let Some(d) = &mut self.device {
            d.alloc.reset_peak_stats();
        }
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
        &mut self,
        step: u32,
        names: &[String],
        before: CategoryBytes,
        after: CategoryBytes,
    ) -> crate::StepReport {
        // A step that ran no op (an inference whose forward is only views, a lone
        // Flatten): its peak is what is live, the batch.
        if self.peak.is_none() {
            self.boundary("none");
        }
        let Some(peak) = self.peak.as_ref() else {
            unreachable!("boundary() sets the peak")
        };
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
