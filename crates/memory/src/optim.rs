//! `optimizer.step()` as torch.optim runs it: state created lazily at the first step
//! (Adagrad's at construction), and the temporaries of each implementation. The
//! for-loop versions keep the previous parameter's temporary alive while the next one is
//! made (a Python variable is only rebound after the new value exists); foreach
//! versions make one temporary per parameter at once.

use crate::sim::{Sid, Sim};
use crate::train::Rules;
use crate::{Category, Optimizer, OptimizerImpl, OptimizerKind};

/// A parameter's size and its gradient (None until backward makes one).
#[derive(Debug, Clone)]
pub(crate) struct ParamSlot {
    pub bytes: u128,
    pub grad: Option<Sid>,
}

pub(crate) struct State {
    opt: Optimizer,
    rules: Rules,
    initialized: bool,
    /// SGD's momentum buffers are cloned from the gradients at the first step.
    sgd_buffers_exist: bool,
}

impl State {
    pub fn new(opt: &Optimizer, rules: Rules) -> Self {
        State {
            opt: opt.clone(),
            rules,
            initialized: false,
            sgd_buffers_exist: false,
        }
    }

    /// The `step` counter tensor lives on the device only on the CPU, or when the
    /// implementation is fused (or capturable); on CUDA it otherwise stays on the host.
    fn step_tensor_bytes(&self) -> u128 {
        if !self.rules.cuda || self.rules.implementation == OptimizerImpl::Fused {
            4
        } else {
            0
        }
    }

    /// Number of per-parameter state tensors the size of the parameter.
    fn moments(&self) -> usize {
        let o = &self.opt;
        match o.kind {
            OptimizerKind::Sgd => usize::from(o.momentum != 0.0),
            OptimizerKind::Adam | OptimizerKind::AdamW => 2 + usize::from(o.amsgrad),
            OptimizerKind::RmsProp => 1 + usize::from(o.momentum > 0.0) + usize::from(o.centered),
            OptimizerKind::Adagrad => 1,
        }
    }

    /// Allocations made when the optimizer is constructed (Adagrad's eager state).
    pub fn construct(&mut self, sim: &mut Sim, slots: &[ParamSlot]) {
        if self.opt.kind == OptimizerKind::Adagrad {
            self.init(sim, slots);
        }
    }

    fn init(&mut self, sim: &mut Sim, slots: &[ParamSlot]) {
        if self.initialized {
            return;
        }
        self.initialized = true;
        // SGD's momentum buffer is a clone of the gradient made inside the loop.
        if self.opt.kind == OptimizerKind::Sgd {
            return;
        }
        let step = self.step_tensor_bytes();
        // A slot of 0 bytes is no tensor of the optimizer's (FSDP1's flat parameter is
        // held by its unit's first slot).
        for slot in slots.iter().filter(|s| s.bytes > 0) {
            if self.opt.kind != OptimizerKind::Adagrad && slot.grad.is_none() {
                continue;
            }
            if step > 0 {
                sim.alloc(step, Some(Category::OptimizerState));
                sim.boundary("aten.scalar_tensor.default");
            }
            for _ in 0..self.moments() {
                sim.alloc(slot.bytes, Some(Category::OptimizerState));
                sim.boundary("aten.zeros_like.default");
            }
        }
    }

    pub fn step(&mut self, sim: &mut Sim, slots: &[ParamSlot]) {
        self.init(sim, slots);
        let active: Vec<&ParamSlot> = slots
            .iter()
            .filter(|s| s.grad.is_some() && s.bytes > 0)
            .collect();
        let wd = self.opt.effective_weight_decay() != 0.0;
        match self.rules.implementation {
            OptimizerImpl::Fused => self.fused(sim, &active),
            OptimizerImpl::ForLoop => self.for_loop(sim, &active, wd),
            OptimizerImpl::Foreach => self.foreach(sim, &active, wd),
        }
    }

    /// Fused kernels update in place and keep no temporaries; SGD's first step still
    /// clones the momentum buffers.
    fn fused(&mut self, sim: &mut Sim, active: &[&ParamSlot]) {
        if self.opt.kind == OptimizerKind::Sgd
            && self.opt.momentum != 0.0
            && !self.sgd_buffers_exist
        {
            for s in active {
                sim.alloc(s.bytes, Some(Category::OptimizerState));
                sim.boundary("aten.clone.default");
            }
            self.sgd_buffers_exist = true;
        }
        sim.boundary("aten._fused_step");
    }

    fn for_loop(&mut self, sim: &mut Sim, active: &[&ParamSlot], wd: bool) {
        let o = self.opt.clone();
        // `grad` and the per-parameter result (`denom`, `avg`, `std`) are Python
        // variables: the previous value dies when the next one is bound.
        let mut grad_tmp: Option<Sid> = None;
        let mut prev: Option<Sid> = None;
        let decoupled = o.kind == OptimizerKind::AdamW;
        for s in active {
            if let Some(t) = grad_tmp.take() {
                sim.decref(t);
            }
            if wd && !decoupled {
                grad_tmp = Some(tmp(sim, s.bytes, "aten.add.Tensor"));
            }
            match o.kind {
                OptimizerKind::Sgd => {
                    if o.momentum != 0.0 {
                        if !self.sgd_buffers_exist {
                            sim.alloc(s.bytes, Some(Category::OptimizerState));
                            sim.boundary("aten.clone.default");
                        }
                        if o.nesterov {
                            let g = tmp(sim, s.bytes, "aten.add.Tensor");
                            if let Some(t) = grad_tmp.replace(g) {
                                sim.decref(t);
                            }
                        }
                    }
                }
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    let sqrt = tmp(sim, s.bytes, "aten.sqrt.default");
                    let denom = tmp(sim, s.bytes, "aten.div.Tensor");
                    sim.decref(sqrt);
                    if let Some(d) = prev.replace(denom) {
                        sim.decref(d);
                    }
                }
                OptimizerKind::RmsProp => {
                    let label = if o.centered {
                        "aten.addcmul.default"
                    } else {
                        "aten.sqrt.default"
                    };
                    let avg = tmp(sim, s.bytes, label);
                    if let Some(d) = prev.replace(avg) {
                        sim.decref(d);
                    }
                }
                OptimizerKind::Adagrad => {
                    let std = tmp(sim, s.bytes, "aten.sqrt.default");
                    if let Some(d) = prev.replace(std) {
                        sim.decref(d);
                    }
                }
            }
        }
        if o.kind == OptimizerKind::Sgd && o.momentum != 0.0 {
            self.sgd_buffers_exist = true;
        }
        for t in [grad_tmp, prev].into_iter().flatten() {
            sim.decref(t);
        }
    }

    fn foreach(&mut self, sim: &mut Sim, active: &[&ParamSlot], wd: bool) {
        let o = self.opt.clone();
        let mut temps = Vec::new();
        let has_step = o.kind != OptimizerKind::Sgd;
        if has_step && !self.rules.cuda {
            // `_foreach_add_(steps, torch.tensor(1.0))` on CPU step tensors.
            let one = tmp(sim, 4, "aten.lift_fresh.default");
            sim.boundary("aten._foreach_add_.Tensor");
            sim.decref(one);
        }
        let decoupled = o.kind == OptimizerKind::AdamW;
        let mut wd_copies = Vec::new();
        if wd && !decoupled {
            wd_copies = all(sim, active, None, "aten._foreach_add.List");
        }
        match o.kind {
            OptimizerKind::Sgd => {
                if o.momentum != 0.0 && !self.sgd_buffers_exist {
                    for s in active {
                        sim.alloc(s.bytes, Some(Category::OptimizerState));
                        sim.boundary("aten.clone.default");
                    }
                    self.sgd_buffers_exist = true;
                }
            }
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                // `del device_grads` comes before the square root.
                for t in wd_copies.drain(..) {
                    sim.decref(t);
                }
                temps = all(sim, active, None, "aten._foreach_sqrt.default");
            }
            OptimizerKind::RmsProp => {
                let label = if o.centered {
                    "aten._foreach_addcmul.Scalar"
                } else {
                    "aten._foreach_sqrt.default"
                };
                temps = all(sim, active, None, label);
            }
            OptimizerKind::Adagrad => {
                temps = all(sim, active, None, "aten._foreach_sqrt.default");
            }
        }
        for t in temps.into_iter().chain(wd_copies) {
            sim.decref(t);
        }
    }
}

fn tmp(sim: &mut Sim, bytes: u128, label: &'static str) -> Sid {
    let s = sim.alloc(bytes, None);
    sim.boundary(label);
    s
}

/// One foreach op making a tensor per parameter.
fn all(
    sim: &mut Sim,
    active: &[&ParamSlot],
    cat: Option<Category>,
    label: &'static str,
) -> Vec<Sid> {
    let v = active.iter().map(|s| sim.alloc(s.bytes, cat)).collect();
    sim.boundary(label);
    v
}
