//! Elementwise activations, one definition each: the PyTorch module, whether it takes
//! `inplace`, and its autograd record (the aten ops forward and backward, and what the
//! backward keeps, from PyTorch's `derivatives.yaml`, measured on PyTorch 2.15). The
//! pytorch profiles read the record; the engine's kernels live in
//! `engine/src/ops/activation.rs`.

use serde::{Deserialize, Serialize};

/// One elementwise activation module of `torch.nn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Activation {
    /// `nn.ReLU`: `max(x, 0)`.
    Relu,
    /// `nn.ReLU6`: `hardtanh(x, 0, 6)`.
    Relu6,
    /// `nn.SiLU` (swish): `x * sigmoid(x)`.
    Silu,
    /// `nn.Sigmoid`.
    Sigmoid,
    /// `nn.Hardswish`: `x * relu6(x + 3) / 6`.
    Hardswish,
    /// `nn.Hardsigmoid`: `relu6(x + 3) / 6`.
    Hardsigmoid,
    /// `nn.GELU()` (approximate='none'): `x * Phi(x)`.
    Gelu,
    /// `nn.GELU(approximate='tanh')`.
    GeluTanh,
    /// `nn.Tanh`.
    Tanh,
}

/// The tensor an activation's backward reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saves {
    /// Its input (`self` in derivatives.yaml). In place, autograd first clones the input
    /// (`original_self`) and keeps the clone: measured for hardtanh_, silu_, hardswish_,
    /// hardsigmoid_ on PyTorch 2.15.
    Input,
    /// Its output (`result`); in place, that is the input's storage.
    Result,
}

/// What autograd records for one activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub forward: &'static str,
    /// The in-place forward op, for modules that take `inplace`.
    pub forward_inplace: Option<&'static str>,
    pub backward: &'static str,
    pub saves: Saves,
}

impl Activation {
    /// Every activation, for tables and tests.
    pub const ALL: [Activation; 9] = [
        Activation::Relu,
        Activation::Relu6,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Hardswish,
        Activation::Hardsigmoid,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Tanh,
    ];

    /// The `torch.nn` class name (also the model-file `type`).
    pub fn class_name(self) -> &'static str {
        match self {
            Activation::Relu => "ReLU",
            Activation::Relu6 => "ReLU6",
            Activation::Silu => "SiLU",
            Activation::Sigmoid => "Sigmoid",
            Activation::Hardswish => "Hardswish",
            Activation::Hardsigmoid => "Hardsigmoid",
            Activation::Gelu | Activation::GeluTanh => "GELU",
            Activation::Tanh => "Tanh",
        }
    }

    /// The autograd record (derivatives.yaml: relu and sigmoid and tanh keep `result`;
    /// hardtanh, silu, hardswish, hardsigmoid and gelu keep `self`).
    pub fn record(self) -> Record {
        let r = |forward, forward_inplace, backward, saves| Record {
            forward,
            forward_inplace,
            backward,
            saves,
        };
        match self {
            Activation::Relu => r(
                "aten.relu.default",
                Some("aten.relu_.default"),
                "aten.threshold_backward.default",
                Saves::Result,
            ),
            Activation::Relu6 => r(
                "aten.hardtanh.default",
                Some("aten.hardtanh_.default"),
                "aten.hardtanh_backward.default",
                Saves::Input,
            ),
            Activation::Silu => r(
                "aten.silu.default",
                Some("aten.silu_.default"),
                "aten.silu_backward.default",
                Saves::Input,
            ),
            Activation::Sigmoid => r(
                "aten.sigmoid.default",
                None,
                "aten.sigmoid_backward.default",
                Saves::Result,
            ),
            Activation::Hardswish => r(
                "aten.hardswish.default",
                Some("aten.hardswish_.default"),
                "aten.hardswish_backward.default",
                Saves::Input,
            ),
            Activation::Hardsigmoid => r(
                "aten.hardsigmoid.default",
                Some("aten.hardsigmoid_.default"),
                "aten.hardsigmoid_backward.default",
                Saves::Input,
            ),
            Activation::Gelu | Activation::GeluTanh => r(
                "aten.gelu.default",
                None,
                "aten.gelu_backward.default",
                Saves::Input,
            ),
            Activation::Tanh => r(
                "aten.tanh.default",
                None,
                "aten.tanh_backward.default",
                Saves::Result,
            ),
        }
    }

    /// Whether the gradient can be computed from the result alone: the engine then
    /// keeps the result (ReLU6's mask is the same on its result as on its input), where
    /// PyTorch keeps what the record says.
    pub fn grad_from_result(self) -> bool {
        matches!(self, Activation::Relu6) || self.record().saves == Saves::Result
    }

    /// Whether the module takes `inplace` (Sigmoid, Tanh and GELU do not).
    pub fn has_inplace(self) -> bool {
        self.record().forward_inplace.is_some()
    }

    /// The value, for the engine and gradient checks. NaN stays NaN, as in PyTorch.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Gelu => 0.5 * x * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2) as f32),
            Activation::GeluTanh => {
                let k = (2.0 / std::f32::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::Tanh => x.tanh(),
        }
    }

    /// The gradient given the incoming gradient `g` and the saved tensor's value `v`
    /// (the input or the result, per [`Record::saves`]), as PyTorch's backward kernels
    /// compute it (their choices at the kinks included).
    #[inline]
    pub fn grad(self, g: f32, v: f32) -> f32 {
        match self {
            // threshold_backward: zero where result <= 0 (a NaN result passes).
            Activation::Relu => {
                if v <= 0.0 {
                    0.0
                } else {
                    g
                }
            }
            // hardtanh_backward: zero where x <= min or x >= max.
            Activation::Relu6 => {
                if v <= 0.0 || v >= 6.0 {
                    0.0
                } else {
                    g
                }
            }
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-v).exp());
                g * s * (1.0 + v * (1.0 - s))
            }
            Activation::Sigmoid => g * v * (1.0 - v),
            // hardswish_backward: 0 below -3, g above 3, g * (x/3 + 0.5) between
            // (the ends of the middle interval included).
            Activation::Hardswish => {
                if v < -3.0 {
                    0.0
                } else if v <= 3.0 {
                    g * (v / 3.0 + 0.5)
                } else {
                    g
                }
            }
            // hardsigmoid_backward: g/6 strictly inside (-3, 3), else 0.
            Activation::Hardsigmoid => {
                if v > -3.0 && v < 3.0 {
                    g / 6.0
                } else {
                    0.0
                }
            }
            Activation::Gelu => {
                let x = v as f64;
                let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                g * (cdf + x * pdf) as f32
            }
            Activation::GeluTanh => {
                let x = v as f64;
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let inner = k * (x + 0.044715 * x * x * x);
                let t = inner.tanh();
                let d_inner = k * (1.0 + 3.0 * 0.044715 * x * x);
                g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner) as f32
            }
            Activation::Tanh => g * (1.0 - v * v),
        }
    }
}

/// The error function, from the C math library that the standard library already links
/// (glibc's is within one ulp). GELU evaluates it once per element forward and backward:
/// a Rust series or continued fraction was most of a small ViT's training step.
pub fn erf(x: f64) -> f64 {
    extern "C" {
        #[link_name = "erf"]
        fn c_erf(x: f64) -> f64;
    }
    // SAFETY: `erf` is a pure function of one double in the C math library (C99), which
    // std links on every target vramlab builds for; it reads and writes no memory.
    unsafe { c_erf(x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn every_gradient_matches_a_finite_difference() {
        for act in Activation::ALL {
            for &x in &[-4.0f32, -2.5, -0.7, -0.1, 0.3, 1.1, 2.2, 4.5, 7.0] {
                let h = 1e-3f32;
                let fd =
                    ((act.apply(x + h) as f64 - act.apply(x - h) as f64) / (2.0 * h as f64)) as f32;
                let saved = match act.record().saves {
                    Saves::Input => x,
                    Saves::Result => act.apply(x),
                };
                let g = act.grad(1.0, saved);
                assert!(
                    (g - fd).abs() < 2e-2,
                    "{act:?} at {x}: analytic {g}, finite difference {fd}"
                );
            }
        }
    }

    #[test]
    fn nan_stays_nan() {
        for act in Activation::ALL {
            assert!(act.apply(f32::NAN).is_nan(), "{act:?}");
        }
    }
}
