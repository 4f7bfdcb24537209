//! TOML model files: a model outside the zoo, written the way `nn.Sequential` reads.
//! The format is documented in docs/MODEL_FILES.md.
//!
//! ```toml
//! name = "tiny"
//! input = [1, 28, 28]
//! [[layers]]
//! type = "Conv2d"
//! in_channels = 1
//! out_channels = 8
//! kernel_size = 3
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::op::{BatchNorm2d, Conv2d, Linear, Op, Pool2d};
use crate::{Graph, GraphBuilder, GraphError, NodeId};

/// `3` or `[3, 5]`, as PyTorch accepts for kernel sizes, strides and paddings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Pair {
    One(usize),
    Two([usize; 2]),
}

impl Pair {
    fn get(self) -> (usize, usize) {
        match self {
            Pair::One(v) => (v, v),
            Pair::Two([a, b]) => (a, b),
        }
    }
}

fn one() -> Pair {
    Pair::One(1)
}
fn zero() -> Pair {
    Pair::One(0)
}
fn yes() -> bool {
    true
}
fn one_usize() -> usize {
    1
}
fn half() -> f64 {
    0.5
}
fn bn_eps() -> f64 {
    1e-5
}
fn bn_momentum() -> f64 {
    0.1
}

/// One layer of a file; fields and defaults are PyTorch's constructor arguments.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum LayerSpec {
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel_size: Pair,
        #[serde(default = "one")]
        stride: Pair,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default = "one")]
        dilation: Pair,
        #[serde(default = "one_usize")]
        groups: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    BatchNorm2d {
        num_features: usize,
        #[serde(default = "bn_eps")]
        eps: f64,
        #[serde(default = "bn_momentum")]
        momentum: f64,
        #[serde(default = "yes")]
        affine: bool,
        #[serde(default = "yes")]
        track_running_stats: bool,
    },
    ReLU {
        #[serde(default)]
        inplace: bool,
    },
    ReLU6 {
        #[serde(default)]
        inplace: bool,
    },
    MaxPool2d {
        kernel_size: Pair,
        stride: Option<Pair>,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default = "one")]
        dilation: Pair,
        #[serde(default)]
        ceil_mode: bool,
    },
    AvgPool2d {
        kernel_size: Pair,
        stride: Option<Pair>,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default)]
        ceil_mode: bool,
        #[serde(default = "yes")]
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d {
        output_size: Pair,
    },
    Flatten {},
    Linear {
        in_features: usize,
        out_features: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    Dropout {
        #[serde(default = "half")]
        p: f64,
        #[serde(default)]
        inplace: bool,
    },
    /// `out = body(x) + shortcut(x)`; an empty shortcut is the identity.
    Residual {
        body: Vec<toml::Table>,
        #[serde(default)]
        shortcut: Vec<toml::Table>,
        /// `out += identity` as torchvision's blocks do (true) or `out = a + b`.
        #[serde(default = "yes")]
        inplace: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: Option<String>,
    input: Option<Vec<usize>>,
    layers: Vec<toml::Table>,
}

/// Reads a model file from disk.
pub fn load(path: &Path) -> Result<Graph, GraphError> {
    let text = std::fs::read_to_string(path).map_err(|e| GraphError::ModelFile {
        path: path.display().to_string(),
        message: format!("cannot read the model file: {e}"),
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses a model file's text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Graph, GraphError> {
    let err = |message: String| GraphError::ModelFile {
        path: origin.to_string(),
        message,
    };
    let spec: FileSpec = toml::from_str(text).map_err(|e| err(e.to_string().trim().to_string()))?;
    let input = spec.input.unwrap_or_else(|| vec![3, 32, 32]);
    if input.len() != 3 || input.contains(&0) {
        return Err(err(format!(
            "`input` must be [C, H, W] with positive sizes, got {input:?}"
        )));
    }
    if spec.layers.is_empty() {
        return Err(err("the model has no [[layers]]".into()));
    }
    let name = spec.name.unwrap_or_else(|| {
        Path::new(origin)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let mut b = GraphBuilder::new(&name, input);
    let x = b.input();
    sequence(&mut b, &spec.layers, "", x).map_err(err)?;
    Ok(b.build())
}

/// Adds a list of layers after `x`, naming unnamed ones by their index as
/// `nn.Sequential` does; returns the last node.
fn sequence(
    b: &mut GraphBuilder,
    layers: &[toml::Table],
    prefix: &str,
    mut x: NodeId,
) -> Result<NodeId, String> {
    for (i, table) in layers.iter().enumerate() {
        let mut table = table.clone();
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => format!("{prefix}{s}"),
            Some(other) => {
                return Err(format!(
                    "layer {prefix}{i}: `name` must be a string, got {other:?}"
                ))
            }
            None => format!("{prefix}{i}"),
        };
        let type_name = table
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("?")
            .to_string();
        let spec: LayerSpec =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    format!("layer `{name}` ({type_name}): {}", e.message().trim())
                })?;
        x = layer(b, spec, &name, x)?;
    }
    Ok(x)
}

fn layer(b: &mut GraphBuilder, spec: LayerSpec, name: &str, x: NodeId) -> Result<NodeId, String> {
    let op = match spec {
        LayerSpec::Conv2d {
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
        } => Op::Conv2d(Conv2d {
            in_channels,
            out_channels,
            kernel_size: kernel_size.get(),
            stride: stride.get(),
            padding: padding.get(),
            dilation: dilation.get(),
            groups,
            bias,
        }),
        LayerSpec::BatchNorm2d {
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
        } => Op::BatchNorm2d(BatchNorm2d {
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
        }),
        LayerSpec::ReLU { inplace } => Op::ReLU { inplace },
        LayerSpec::ReLU6 { inplace } => Op::ReLU6 { inplace },
        LayerSpec::MaxPool2d {
            kernel_size,
            stride,
            padding,
            dilation,
            ceil_mode,
        } => Op::MaxPool2d(Pool2d {
            kernel_size: kernel_size.get(),
            stride: stride.unwrap_or(kernel_size).get(),
            padding: padding.get(),
            dilation: dilation.get(),
            ceil_mode,
            count_include_pad: true,
        }),
        LayerSpec::AvgPool2d {
            kernel_size,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
        } => Op::AvgPool2d(Pool2d {
            kernel_size: kernel_size.get(),
            stride: stride.unwrap_or(kernel_size).get(),
            padding: padding.get(),
            dilation: (1, 1),
            ceil_mode,
            count_include_pad,
        }),
        LayerSpec::AdaptiveAvgPool2d { output_size } => Op::AdaptiveAvgPool2d {
            output_size: output_size.get(),
        },
        LayerSpec::Flatten {} => Op::Flatten,
        LayerSpec::Linear {
            in_features,
            out_features,
            bias,
        } => Op::Linear(Linear {
            in_features,
            out_features,
            bias,
        }),
        LayerSpec::Dropout { p, inplace } => {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "layer `{name}` (Dropout): p must be between 0 and 1, got {p}"
                ));
            }
            Op::Dropout { p, inplace }
        }
        LayerSpec::Residual {
            body,
            shortcut,
            inplace,
        } => {
            if body.is_empty() {
                return Err(format!("layer `{name}` (Residual): `body` has no layers"));
            }
            let y = sequence(b, &body, &format!("{name}.body."), x)?;
            let s = if shortcut.is_empty() {
                x
            } else {
                sequence(b, &shortcut, &format!("{name}.shortcut."), x)?
            };
            return Ok(b.add(name, Op::Add { inplace }, &[y, s]));
        }
    };
    Ok(b.then(name, op, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE_CNN: &str = include_str!("../../../models/simple_cnn.toml");

    #[test]
    fn the_documented_simple_cnn_file_equals_the_zoo_model() {
        let file = parse(SIMPLE_CNN, "simple_cnn.toml")
            .unwrap()
            .infer()
            .unwrap();
        let zoo = crate::zoo::build("simple_cnn", &Default::default())
            .unwrap()
            .infer()
            .unwrap();
        assert_eq!(file.num_params(), 62_006);
        assert_eq!(file.shapes, zoo.shapes);
        let names = |s: &crate::Shaped| s.params().into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names(&file), names(&zoo));
    }

    #[test]
    fn residual_blocks_name_their_children_and_add() {
        let text = r#"
            input = [8, 16, 16]
            [[layers]]
            type = "Residual"
            name = "block"
            [[layers.body]]
            type = "Conv2d"
            in_channels = 8
            out_channels = 8
            kernel_size = 3
            padding = 1
            [[layers.body]]
            type = "BatchNorm2d"
            num_features = 8
        "#;
        let g = parse(text, "r.toml").unwrap().infer().unwrap();
        let names: Vec<&str> = g.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["input", "block.body.0", "block.body.1", "block"]);
        assert_eq!(g.nodes()[3].inputs, vec![2, 0]);
    }

    #[test]
    fn a_misspelt_field_names_the_layer_and_the_field() {
        let text =
            "[[layers]]\ntype = \"Conv2d\"\nin_channels = 3\nout_chanels = 6\nkernel_size = 5\n";
        let e = parse(text, "bad.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("bad.toml: layer `0` (Conv2d): unknown field `out_chanels`"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_layer_type_is_an_error() {
        let text = "[[layers]]\ntype = \"Conv3d\"\n";
        let e = parse(text, "bad.toml").unwrap_err().to_string();
        assert!(e.contains("unknown variant `Conv3d`"), "{e}");
    }

    #[test]
    fn broken_toml_is_an_error_with_the_file_name() {
        let e = parse("layers = [", "broken.toml").unwrap_err().to_string();
        assert!(e.starts_with("broken.toml: "), "{e}");
    }
}
