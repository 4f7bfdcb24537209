//! torchvision's initialisation of each family, where its model's `__init__` overrides
//! the layers' defaults after building them (measured on torchvision 0.29:
//! `tools/measure_init.py`, `crates/graph/tests/fixtures/torchvision_init.json`). The
//! rules land in [`Graph::init`] by parameter name; the engine draws from them.
//!
//! torchvision's `trunc_normal_` cuts at -2 and 2 (absolute): for the standard
//! deviations used here (at most 0.14) that is 14 or more of them away, so it is drawn
//! as the normal it is within 1e-40.

use crate::op::{Init, Op, TensorSpec};
use crate::{param_name, Graph, Node};

/// The families whose `__init__` re-initialises layers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    /// AlexNet, ShuffleNetV2, the lesson's CNNs: the layers' defaults.
    Defaults,
    Vgg,
    ResNet,
    DenseNet,
    GoogLeNet,
    Inception,
    MobileNet,
    EfficientNet,
    MnasNet,
    RegNet,
    SqueezeNet,
    ConvNeXt,
    Vit,
    Swin,
    MaxVit,
}

impl Family {
    fn of(model: &str) -> Family {
        let starts = |p: &str| model.starts_with(p);
        if starts("vgg") {
            Family::Vgg
        } else if starts("resnet") || starts("resnext") || starts("wide_resnet") {
            Family::ResNet
        } else if starts("densenet") {
            Family::DenseNet
        } else if model == "googlenet" {
            Family::GoogLeNet
        } else if model == "inception_v3" {
            Family::Inception
        } else if starts("mobilenet") {
            Family::MobileNet
        } else if starts("efficientnet") {
            Family::EfficientNet
        } else if starts("mnasnet") {
            Family::MnasNet
        } else if starts("regnet") {
            Family::RegNet
        } else if starts("squeezenet") {
            Family::SqueezeNet
        } else if starts("convnext") {
            Family::ConvNeXt
        } else if starts("vit") {
            Family::Vit
        } else if starts("swin") {
            Family::Swin
        } else if starts("maxvit") {
            Family::MaxVit
        } else {
            Family::Defaults
        }
    }
}

/// What a parameter is, for the families' rules.
enum Kind {
    /// A convolution's weight, with its fans (PyTorch's: `cin/groups * k*k` in,
    /// `cout * k*k` out).
    ConvWeight {
        fan_in: usize,
        fan_out: usize,
    },
    ConvBias,
    /// An `nn.Linear`'s weight, also inside a larger module (Swin's `qkv`, `proj` and
    /// `cpb_mlp`; MaxViT's `to_qkv` and `merge`).
    LinearWeight {
        fan_in: usize,
        fan_out: usize,
    },
    LinearBias,
    /// Anything else: normalisations, tables, tokens, scales.
    Other,
}

fn kind(node: &Node, spec: &TensorSpec) -> Kind {
    let is_bias = spec.name == "bias" || spec.name.ends_with(".bias");
    let is_weight = spec.name == "weight" || spec.name.ends_with(".weight");
    let linear_inside = matches!(node.op, Op::WindowAttention(_) | Op::RelPosAttention { .. });
    if let Op::Conv2d(c) = &node.op {
        if is_bias {
            return Kind::ConvBias;
        }
        // Saturating: a model built for an absurd input is refused by shape inference.
        let k = c.kernel_size.0.saturating_mul(c.kernel_size.1);
        return Kind::ConvWeight {
            fan_in: (c.in_channels / c.groups.max(1)).saturating_mul(k),
            fan_out: c.out_channels.saturating_mul(k),
        };
    }
    if matches!(node.op, Op::Linear(_)) || (linear_inside && (is_weight || is_bias)) {
        if is_bias {
            return Kind::LinearBias;
        }
        return Kind::LinearWeight {
            fan_in: spec.shape.get(1).copied().unwrap_or(1),
            fan_out: spec.shape.first().copied().unwrap_or(1),
        };
    }
    Kind::Other
}

/// `kaiming_normal_` (ReLU gain) over `fan`.
fn kaiming(fan: usize) -> Init {
    Init::Normal {
        std: (2.0 / fan.max(1) as f64).sqrt(),
    }
}

fn normal(std: f64) -> Init {
    Init::Normal { std }
}

/// The rule of `family` for parameter `spec` of `node`, if it overrides the default.
fn rule(family: Family, node: &Node, spec: &TensorSpec) -> Option<Init> {
    let kind = kind(node, spec);
    let name = &node.name;
    match (family, kind) {
        (Family::Defaults, _) => None,
        (Family::Vgg, Kind::ConvWeight { fan_out, .. }) => Some(kaiming(fan_out)),
        (Family::Vgg, Kind::LinearWeight { .. }) => Some(normal(0.01)),
        (Family::Vgg, Kind::ConvBias | Kind::LinearBias) => Some(Init::Zeros),
        (Family::ResNet, Kind::ConvWeight { fan_out, .. }) => Some(kaiming(fan_out)),
        (Family::DenseNet, Kind::ConvWeight { fan_in, .. }) => Some(kaiming(fan_in)),
        (Family::DenseNet, Kind::LinearBias) => Some(Init::Zeros),
        (Family::GoogLeNet, Kind::ConvWeight { .. } | Kind::LinearWeight { .. }) => {
            Some(normal(0.01))
        }
        // `stddev` is an attribute of the aux head's `fc` (an nn.Linear) only: its
        // `conv1.stddev` sits on the BasicConv2d, not on the Conv2d the loop visits.
        (Family::Inception, Kind::LinearWeight { .. }) if name == "AuxLogits.fc" => {
            Some(normal(0.001))
        }
        (Family::Inception, Kind::ConvWeight { .. } | Kind::LinearWeight { .. }) => {
            Some(normal(0.1))
        }
        (
            Family::MobileNet | Family::EfficientNet | Family::MnasNet,
            Kind::ConvWeight { fan_out, .. },
        ) => Some(kaiming(fan_out)),
        (Family::MobileNet, Kind::LinearWeight { .. }) => Some(normal(0.01)),
        (Family::EfficientNet, Kind::LinearWeight { fan_out, .. }) => Some(Init::Uniform {
            bound: 1.0 / (fan_out.max(1) as f64).sqrt(),
        }),
        // kaiming_uniform_(mode="fan_out", nonlinearity="sigmoid").
        (Family::MnasNet, Kind::LinearWeight { fan_out, .. }) => Some(Init::Uniform {
            bound: (3.0 / fan_out.max(1) as f64).sqrt(),
        }),
        (
            Family::MobileNet | Family::EfficientNet | Family::MnasNet,
            Kind::ConvBias | Kind::LinearBias,
        ) => Some(Init::Zeros),
        (Family::RegNet, Kind::ConvWeight { fan_out, .. }) => Some(kaiming(fan_out)),
        (Family::RegNet, Kind::LinearWeight { .. }) => Some(normal(0.01)),
        (Family::RegNet, Kind::LinearBias) => Some(Init::Zeros),
        (Family::SqueezeNet, Kind::ConvWeight { .. }) if name == "classifier.1" => {
            Some(normal(0.01))
        }
        // kaiming_uniform_ with its default a = 0: U(-sqrt(6 / fan_in), ...).
        (Family::SqueezeNet, Kind::ConvWeight { fan_in, .. }) => Some(Init::Uniform {
            bound: (6.0 / fan_in.max(1) as f64).sqrt(),
        }),
        (Family::SqueezeNet, Kind::ConvBias) => Some(Init::Zeros),
        (
            Family::ConvNeXt | Family::MaxVit,
            Kind::ConvWeight { .. } | Kind::LinearWeight { .. },
        ) => Some(normal(0.02)),
        (Family::ConvNeXt | Family::MaxVit, Kind::ConvBias | Kind::LinearBias) => Some(Init::Zeros),
        // The patchify stem: trunc_normal_(std = sqrt(1 / fan_in)), zero bias.
        (Family::Vit, Kind::ConvWeight { fan_in, .. }) if name == "conv_proj" => {
            Some(normal((1.0 / fan_in.max(1) as f64).sqrt()))
        }
        (Family::Vit, Kind::ConvBias) if name == "conv_proj" => Some(Init::Zeros),
        (Family::Vit, Kind::LinearWeight { .. } | Kind::LinearBias) if name == "heads.head" => {
            Some(Init::Zeros)
        }
        // MLPBlock: xavier_uniform_ weights, N(0, 1e-6) biases.
        (Family::Vit, Kind::LinearWeight { fan_in, fan_out }) if is_mlp(name) => {
            Some(Init::Xavier { fan_in, fan_out })
        }
        (Family::Vit, Kind::LinearBias) if is_mlp(name) => Some(normal(1e-6)),
        // Every nn.Linear (qkv, proj, the MLPs, the bias MLP, the reduction, the head).
        (Family::Swin, Kind::LinearWeight { .. }) => Some(normal(0.02)),
        (Family::Swin, Kind::LinearBias) => Some(Init::Zeros),
        (
            Family::Vgg
            | Family::ResNet
            | Family::DenseNet
            | Family::GoogLeNet
            | Family::Inception
            | Family::MobileNet
            | Family::EfficientNet
            | Family::MnasNet
            | Family::RegNet
            | Family::SqueezeNet
            | Family::ConvNeXt
            | Family::Vit
            | Family::Swin
            | Family::MaxVit,
            Kind::ConvWeight { .. }
            | Kind::ConvBias
            | Kind::LinearWeight { .. }
            | Kind::LinearBias
            | Kind::Other,
        ) => None,
    }
}

/// A ViT encoder block's MLP Linears (`...mlp.0`, `...mlp.3`).
fn is_mlp(name: &str) -> bool {
    name.ends_with(".mlp.0") || name.ends_with(".mlp.3")
}

/// Records `model`'s rules in `g.init`.
pub(crate) fn apply(g: &mut Graph, model: &str) {
    let family = Family::of(model);
    let mut rules = std::collections::BTreeMap::new();
    for node in &g.nodes {
        for spec in node.op.params() {
            if let Some(init) = rule(family, node, &spec) {
                rules.insert(param_name(node, &spec), init);
            }
        }
    }
    g.init = rules;
}
