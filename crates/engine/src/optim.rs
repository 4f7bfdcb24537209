//! torch.optim's update formulas and defaults, applied in place (the engine keeps no
//! per-parameter temporaries). State is created lazily at the first step, Adagrad's at
//! construction.

use serde::{Deserialize, Serialize};

/// An optimizer with PyTorch's arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OptimizerConfig {
    Sgd {
        lr: f32,
        momentum: f32,
        dampening: f32,
        nesterov: bool,
        weight_decay: f32,
    },
    Adam {
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
        amsgrad: bool,
        decoupled: bool,
    },
    RmsProp {
        lr: f32,
        alpha: f32,
        eps: f32,
        weight_decay: f32,
        momentum: f32,
        centered: bool,
    },
    Adagrad {
        lr: f32,
        lr_decay: f32,
        weight_decay: f32,
        initial_accumulator_value: f32,
        eps: f32,
    },
}

impl OptimizerConfig {
    /// PyTorch's defaults for a name, with this learning rate (None: PyTorch's default).
    pub fn named(name: &str, lr: Option<f32>) -> Result<Self, String> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sgd" => OptimizerConfig::Sgd {
                lr: lr.unwrap_or(1e-3),
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            "adam" => OptimizerConfig::Adam {
                lr: lr.unwrap_or(1e-3),
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.0,
                amsgrad: false,
                decoupled: false,
            },
            "adamw" => OptimizerConfig::Adam {
                lr: lr.unwrap_or(1e-3),
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 1e-2,
                amsgrad: false,
                decoupled: true,
            },
            "rmsprop" => OptimizerConfig::RmsProp {
                lr: lr.unwrap_or(1e-2),
                alpha: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
                momentum: 0.0,
                centered: false,
            },
            "adagrad" => OptimizerConfig::Adagrad {
                lr: lr.unwrap_or(1e-2),
                lr_decay: 0.0,
                weight_decay: 0.0,
                initial_accumulator_value: 0.0,
                eps: 1e-10,
            },
            _ => {
                return Err(format!(
                    "unknown optimizer `{name}`: expected sgd, adam, adamw, rmsprop or adagrad"
                ))
            }
        })
    }

    pub fn lr(&self) -> f32 {
        match self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::RmsProp { lr, .. }
            | OptimizerConfig::Adagrad { lr, .. } => *lr,
        }
    }

    pub fn set_lr(&mut self, v: f32) {
        match self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::RmsProp { lr, .. }
            | OptimizerConfig::Adagrad { lr, .. } => *lr = v,
        }
    }

    /// State tensors per parameter, each the parameter's size.
    pub fn moments(&self) -> usize {
        match self {
            OptimizerConfig::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            OptimizerConfig::Adam { amsgrad, .. } => 2 + usize::from(*amsgrad),
            OptimizerConfig::RmsProp {
                momentum, centered, ..
            } => 1 + usize::from(*momentum > 0.0) + usize::from(*centered),
            OptimizerConfig::Adagrad { .. } => 1,
        }
    }

    /// The name `--optimizer` takes for it.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd { .. } => "sgd",
            OptimizerConfig::Adam {
                decoupled: false, ..
            } => "adam",
            OptimizerConfig::Adam { .. } => "adamw",
            OptimizerConfig::RmsProp { .. } => "rmsprop",
            OptimizerConfig::Adagrad { .. } => "adagrad",
        }
    }

    /// Checks every hyper-parameter as torch.optim's constructors do (finite, in range);
    /// the message names the hyper-parameter.
    pub fn validate(&self) -> Result<(), String> {
        fn at_least_zero(what: &str, v: f32) -> Result<(), String> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{what} must be a finite number >= 0, got {v}"))
            }
        }
        fn positive(what: &str, v: f32) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{what} must be a finite number > 0, got {v}"))
            }
        }
        fn below_one(what: &str, v: f32) -> Result<(), String> {
            if v.is_finite() && (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what} must be in [0, 1), got {v}"))
            }
        }
        positive("lr", self.lr())?;
        match *self {
            OptimizerConfig::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
                ..
            } => {
                at_least_zero("momentum", momentum)?;
                at_least_zero("weight_decay", weight_decay)?;
                at_least_zero("dampening", dampening)?;
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err("Nesterov momentum requires a momentum and zero dampening".into());
                }
            }
            OptimizerConfig::Adam {
                betas: (b1, b2),
                eps,
                weight_decay,
                ..
            } => {
                below_one("betas[0]", b1)?;
                below_one("betas[1]", b2)?;
                positive("eps", eps)?;
                at_least_zero("weight_decay", weight_decay)?;
            }
            OptimizerConfig::RmsProp {
                alpha,
                eps,
                weight_decay,
                momentum,
                ..
            } => {
                below_one("alpha", alpha)?;
                positive("eps", eps)?;
                at_least_zero("weight_decay", weight_decay)?;
                at_least_zero("momentum", momentum)?;
            }
            OptimizerConfig::Adagrad {
                lr_decay,
                weight_decay,
                initial_accumulator_value,
                eps,
                ..
            } => {
                at_least_zero("lr_decay", lr_decay)?;
                at_least_zero("weight_decay", weight_decay)?;
                at_least_zero("initial_accumulator_value", initial_accumulator_value)?;
                positive("eps", eps)?;
            }
        }
        Ok(())
    }

    pub fn eager_state(&self) -> bool {
        matches!(self, OptimizerConfig::Adagrad { .. })
    }

    pub fn initial_state_value(&self) -> f32 {
        match self {
            OptimizerConfig::Adagrad {
                initial_accumulator_value,
                ..
            } => *initial_accumulator_value,
            _ => 0.0,
        }
    }
}

/// One parameter's update. `step` counts from 1. SGD's momentum buffer is initialised
/// from the gradient at the first step, as PyTorch clones it.
pub fn update(cfg: &OptimizerConfig, step: u64, p: &mut [f32], g: &[f32], state: &mut [Vec<f32>]) {
    let mut st: Vec<&mut [f32]> = state.iter_mut().map(|s| &mut s[..]).collect();
    update_slices(cfg, step, p, g, &mut st);
}

/// [`update`] on slices: every update is element by element, so a parameter split
/// into ranges (with the same ranges of its states) updates range by range, on any
/// thread, to the same values.
pub fn update_slices(
    cfg: &OptimizerConfig,
    step: u64,
    p: &mut [f32],
    g: &[f32],
    state: &mut [&mut [f32]],
) {
    match *cfg {
        OptimizerConfig::Sgd {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
        } => {
            for i in 0..p.len() {
                let mut d = g[i] + weight_decay * p[i];
                if momentum != 0.0 {
                    let buf = &mut state[0][i];
                    *buf = if step == 1 {
                        d
                    } else {
                        momentum * *buf + (1.0 - dampening) * d
                    };
                    d = if nesterov { d + momentum * *buf } else { *buf };
                }
                p[i] -= lr * d;
            }
        }
        OptimizerConfig::Adam {
            lr,
            betas: (b1, b2),
            eps,
            weight_decay,
            amsgrad,
            decoupled,
        } => {
            // Past 2^31 steps beta^step is 0 in f64 anyway; the cast must not wrap.
            let t = i32::try_from(step).unwrap_or(i32::MAX);
            let bc1 = 1.0 - (b1 as f64).powi(t);
            let bc2 = 1.0 - (b2 as f64).powi(t);
            let step_size = (lr as f64 / bc1) as f32;
            let bc2_sqrt = bc2.sqrt() as f32;
            let (m, rest) = state.split_at_mut(1);
            let (v, rest) = rest.split_at_mut(1);
            let (m, v) = (&mut m[0], &mut v[0]);
            for i in 0..p.len() {
                let mut gi = g[i];
                if decoupled {
                    p[i] *= 1.0 - lr * weight_decay;
                } else {
                    gi += weight_decay * p[i];
                }
                m[i] += (gi - m[i]) * (1.0 - b1);
                v[i] = v[i] * b2 + (1.0 - b2) * gi * gi;
                let vv = if amsgrad {
                    let mx = &mut rest[0][i];
                    *mx = mx.max(v[i]);
                    *mx
                } else {
                    v[i]
                };
                let denom = vv.sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
        OptimizerConfig::RmsProp {
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
        } => {
            for i in 0..p.len() {
                let gi = g[i] + weight_decay * p[i];
                let sq = &mut state[0][i];
                *sq = alpha * *sq + (1.0 - alpha) * gi * gi;
                let sqv = *sq;
                let mut k = 1;
                if momentum > 0.0 {
                    k += 1;
                }
                let avg = if centered {
                    let ga = &mut state[k][i];
                    *ga += (gi - *ga) * (1.0 - alpha);
                    (sqv - *ga * *ga).sqrt() + eps
                } else {
                    sqv.sqrt() + eps
                };
                if momentum > 0.0 {
                    let buf = &mut state[1][i];
                    *buf = momentum * *buf + gi / avg;
                    p[i] -= lr * *buf;
                } else {
                    p[i] -= lr * gi / avg;
                }
            }
        }
        OptimizerConfig::Adagrad {
            lr,
            lr_decay,
            weight_decay,
            eps,
            ..
        } => {
            let clr = lr / (1.0 + step.saturating_sub(1) as f32 * lr_decay);
            for i in 0..p.len() {
                let gi = g[i] + weight_decay * p[i];
                let s = &mut state[0][i];
                *s += gi * gi;
                p[i] -= clr * gi / (s.sqrt() + eps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed against PyTorch's formulas.
    #[test]
    fn adam_first_step_moves_each_weight_by_lr() {
        let cfg = OptimizerConfig::named("adam", Some(0.1)).unwrap();
        let mut p = vec![1.0f32, -2.0];
        let mut st = vec![vec![0.0; 2], vec![0.0; 2]];
        update(&cfg, 1, &mut p, &[0.5, -3.0], &mut st);
        // m_hat = g, v_hat = g^2: the step is lr * g / (|g| + eps).
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6,
            "{p:?}"
        );
        assert!((st[0][0] - 0.05).abs() < 1e-7);
        assert!((st[1][1] - 0.009).abs() < 1e-6);
    }

    #[test]
    fn sgd_momentum_clones_then_accumulates_and_nesterov_looks_ahead() {
        let mut cfg = OptimizerConfig::named("sgd", Some(0.1)).unwrap();
        if let OptimizerConfig::Sgd { momentum, .. } = &mut cfg {
            *momentum = 0.9;
        }
        let mut p = vec![1.0f32];
        let mut st = vec![vec![0.0]];
        update(&cfg, 1, &mut p, &[1.0], &mut st);
        assert!((p[0] - 0.9).abs() < 1e-6 && st[0][0] == 1.0);
        update(&cfg, 2, &mut p, &[1.0], &mut st);
        // buf = 0.9 * 1 + 1 = 1.9; p = 0.9 - 0.19
        assert!((st[0][0] - 1.9).abs() < 1e-6 && (p[0] - 0.71).abs() < 1e-6);
        if let OptimizerConfig::Sgd { nesterov, .. } = &mut cfg {
            *nesterov = true;
        }
        let mut p = vec![1.0f32];
        let mut st = vec![vec![0.0]];
        update(&cfg, 1, &mut p, &[1.0], &mut st);
        // buf = 1; d = 1 + 0.9 * 1 = 1.9; p = 1 - 0.19
        assert!((p[0] - 0.81).abs() < 1e-6);
    }

    #[test]
    fn adamw_decays_the_weight_apart_from_the_gradient() {
        let cfg = OptimizerConfig::named("adamw", Some(0.1)).unwrap();
        let mut p = vec![2.0f32];
        let mut st = vec![vec![0.0], vec![0.0]];
        update(&cfg, 1, &mut p, &[0.0], &mut st);
        // p *= 1 - 0.1 * 0.01; the zero gradient adds nothing.
        assert!((p[0] - 1.998).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn rmsprop_and_adagrad_match_hand_computation() {
        let cfg = OptimizerConfig::named("rmsprop", Some(0.01)).unwrap();
        let mut p = vec![1.0f32];
        let mut st = vec![vec![0.0]];
        update(&cfg, 1, &mut p, &[2.0], &mut st);
        // sq = 0.01 * 4 = 0.04; p = 1 - 0.01 * 2 / (0.2 + 1e-8)
        assert!(
            (st[0][0] - 0.04).abs() < 1e-7 && (p[0] - 0.9).abs() < 1e-5,
            "{p:?}"
        );
        let cfg = OptimizerConfig::named("adagrad", Some(0.1)).unwrap();
        let mut p = vec![1.0f32];
        let mut st = vec![vec![0.0]];
        update(&cfg, 1, &mut p, &[2.0], &mut st);
        // sum = 4; p = 1 - 0.1 * 2 / 2
        assert!((p[0] - 0.9).abs() < 1e-6);
    }
}
