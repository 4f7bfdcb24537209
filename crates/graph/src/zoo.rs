//! Built-in models, layer for layer as torchvision (and the lesson's SimpleCNN) define
//! them, with the same parameter names and counts.

use crate::op::{BatchNorm2d, Conv2d, Linear, Op, Pool2d};
use crate::{Graph, GraphBuilder, GraphError, ModelOptions, NodeId};

/// Zoo model names, as `vramlab models` lists them.
pub const NAMES: &[&str] = &[
    "simple_cnn",
    "lenet5",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
];

/// The zoo name closest to a mistyped one, ignoring case and `-` vs `_`
/// (`ResNet-18` -> `resnet18`), within a small edit distance.
pub fn suggest(name: &str) -> Option<&'static str> {
    // Compare without case and separators, so that only real typos cost an edit.
    let key = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| !matches!(c, '-' | '_' | ' ' | '.'))
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let typed = key(name);
    if typed.is_empty() || typed.len() > 64 {
        return None;
    }
    let allowed = if typed.len() <= 4 { 1 } else { 2 };
    NAMES
        .iter()
        .map(|&n| (edit_distance(&typed, &key(n)), n))
        .filter(|&(d, _)| d <= allowed)
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

/// Levenshtein distance (insertions, deletions, substitutions).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// One line on each zoo model and its default input.
pub fn describe(name: &str) -> Option<(&'static str, [usize; 3])> {
    Some(match name {
        "simple_cnn" => ("the lesson's SimpleCNN: 2 conv + 3 linear", [3, 32, 32]),
        "lenet5" => ("LeNet-5 for 28x28 grayscale (conv1 padded)", [1, 28, 28]),
        "alexnet" => ("torchvision AlexNet", [3, 224, 224]),
        "vgg11" => ("torchvision VGG-11", [3, 224, 224]),
        "vgg11_bn" => ("torchvision VGG-11 with BatchNorm", [3, 224, 224]),
        "vgg16" => ("torchvision VGG-16", [3, 224, 224]),
        "resnet18" => ("torchvision ResNet-18", [3, 224, 224]),
        "resnet34" => ("torchvision ResNet-34", [3, 224, 224]),
        "resnet50" => ("torchvision ResNet-50 (bottleneck v1.5)", [3, 224, 224]),
        "mobilenet_v2" => ("torchvision MobileNetV2", [3, 224, 224]),
        _ => return None,
    })
}

/// Builds a zoo model. The default number of classes is 10 for the small models and
/// 1000 (ImageNet) for the torchvision ones, as in their constructors.
pub fn build(name: &str, opts: &ModelOptions) -> Result<Graph, GraphError> {
    let (_, default_input) =
        describe(name).ok_or_else(|| GraphError::UnknownModel(name.to_string()))?;
    let input = opts
        .input_shape
        .clone()
        .unwrap_or_else(|| default_input.to_vec());
    if input.len() != 3 || input.contains(&0) {
        return Err(GraphError::Structure(format!(
            "a zoo model's input is CxHxW with positive sizes, got {}",
            crate::fmt_shape(&input)
        )));
    }
    let classes = |default: usize| opts.num_classes.unwrap_or(default);
    if opts.num_classes == Some(0) {
        return Err(GraphError::Structure(
            "--num-classes must be at least 1".into(),
        ));
    }
    Ok(match name {
        "simple_cnn" => lenet_like(name, input, 0, classes(10)),
        "lenet5" => lenet_like(name, input, 2, classes(10)),
        "alexnet" => alexnet(input, classes(1000)),
        "vgg11" => vgg(name, input, VGG11, false, classes(1000)),
        "vgg11_bn" => vgg(name, input, VGG11, true, classes(1000)),
        "vgg16" => vgg(name, input, VGG16, false, classes(1000)),
        "resnet18" => resnet(name, input, Block::Basic, [2, 2, 2, 2], classes(1000)),
        "resnet34" => resnet(name, input, Block::Basic, [3, 4, 6, 3], classes(1000)),
        "resnet50" => resnet(name, input, Block::Bottleneck, [3, 4, 6, 3], classes(1000)),
        "mobilenet_v2" => mobilenet_v2(input, classes(1000)),
        _ => unreachable!("describe() knows every name"),
    })
}

/// The lesson's SimpleCNN (conv padding 0, input 3x32x32) and LeNet-5 (padding 2,
/// 1x28x28). Functional `F.relu` and `F.max_pool2d`, so not in place.
fn lenet_like(name: &str, input: Vec<usize>, pad: usize, classes: usize) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    x = b.then(
        "conv1",
        Op::Conv2d(Conv2d::new(in_ch, 6, 5).padding(pad)),
        x,
    );
    x = b.then("relu1", Op::ReLU { inplace: false }, x);
    x = b.then("pool1", Op::MaxPool2d(Pool2d::new(2)), x);
    x = b.then("conv2", Op::Conv2d(Conv2d::new(6, 16, 5)), x);
    x = b.then("relu2", Op::ReLU { inplace: false }, x);
    x = b.then("pool2", Op::MaxPool2d(Pool2d::new(2)), x);
    x = b.then("flatten", Op::Flatten, x);
    x = b.then("fc1", Op::Linear(Linear::new(400, 120)), x);
    x = b.then("relu3", Op::ReLU { inplace: false }, x);
    x = b.then("fc2", Op::Linear(Linear::new(120, 84)), x);
    x = b.then("relu4", Op::ReLU { inplace: false }, x);
    b.then("fc3", Op::Linear(Linear::new(84, classes)), x);
    b.build()
}

const RELU: Op = Op::ReLU { inplace: true };

fn alexnet(input: Vec<usize>, classes: usize) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new("alexnet", input);
    let mut x = b.input();
    let f = |i: usize| format!("features.{i}");
    x = b.then(
        f(0),
        Op::Conv2d(Conv2d::new(in_ch, 64, 11).stride(4).padding(2)),
        x,
    );
    x = b.then(f(1), RELU, x);
    x = b.then(f(2), Op::MaxPool2d(Pool2d::new(3).stride(2)), x);
    x = b.then(f(3), Op::Conv2d(Conv2d::new(64, 192, 5).padding(2)), x);
    x = b.then(f(4), RELU, x);
    x = b.then(f(5), Op::MaxPool2d(Pool2d::new(3).stride(2)), x);
    x = b.then(f(6), Op::Conv2d(Conv2d::new(192, 384, 3).padding(1)), x);
    x = b.then(f(7), RELU, x);
    x = b.then(f(8), Op::Conv2d(Conv2d::new(384, 256, 3).padding(1)), x);
    x = b.then(f(9), RELU, x);
    x = b.then(f(10), Op::Conv2d(Conv2d::new(256, 256, 3).padding(1)), x);
    x = b.then(f(11), RELU, x);
    x = b.then(f(12), Op::MaxPool2d(Pool2d::new(3).stride(2)), x);
    x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (6, 6),
        },
        x,
    );
    x = b.then("flatten", Op::Flatten, x);
    let c = |i: usize| format!("classifier.{i}");
    x = b.then(c(0), dropout(0.5), x);
    x = b.then(c(1), Op::Linear(Linear::new(256 * 6 * 6, 4096)), x);
    x = b.then(c(2), RELU, x);
    x = b.then(c(3), dropout(0.5), x);
    x = b.then(c(4), Op::Linear(Linear::new(4096, 4096)), x);
    x = b.then(c(5), RELU, x);
    b.then(c(6), Op::Linear(Linear::new(4096, classes)), x);
    b.build()
}

fn dropout(p: f64) -> Op {
    Op::Dropout { p, inplace: false }
}

/// 0 stands for a max-pool ('M' in torchvision's cfgs).
const VGG11: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG16: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

fn vgg(name: &str, input: Vec<usize>, cfg: &[usize], bn: bool, classes: usize) -> Graph {
    let mut ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    let mut i = 0;
    for &v in cfg {
        if v == 0 {
            x = b.then(format!("features.{i}"), Op::MaxPool2d(Pool2d::new(2)), x);
            i += 1;
            continue;
        }
        x = b.then(
            format!("features.{i}"),
            Op::Conv2d(Conv2d::new(ch, v, 3).padding(1)),
            x,
        );
        i += 1;
        if bn {
            x = b.then(
                format!("features.{i}"),
                Op::BatchNorm2d(BatchNorm2d::new(v)),
                x,
            );
            i += 1;
        }
        x = b.then(format!("features.{i}"), RELU, x);
        i += 1;
        ch = v;
    }
    x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (7, 7),
        },
        x,
    );
    x = b.then("flatten", Op::Flatten, x);
    let c = |i: usize| format!("classifier.{i}");
    x = b.then(c(0), Op::Linear(Linear::new(512 * 7 * 7, 4096)), x);
    x = b.then(c(1), RELU, x);
    x = b.then(c(2), dropout(0.5), x);
    x = b.then(c(3), Op::Linear(Linear::new(4096, 4096)), x);
    x = b.then(c(4), RELU, x);
    x = b.then(c(5), dropout(0.5), x);
    b.then(c(6), Op::Linear(Linear::new(4096, classes)), x);
    b.build()
}

#[derive(Clone, Copy, PartialEq)]
enum Block {
    Basic,
    Bottleneck,
}

fn bn(b: &mut GraphBuilder, name: String, ch: usize, x: NodeId) -> NodeId {
    b.then(name, Op::BatchNorm2d(BatchNorm2d::new(ch)), x)
}

fn resnet(
    name: &str,
    input: Vec<usize>,
    block: Block,
    layers: [usize; 4],
    classes: usize,
) -> Graph {
    let expansion = if block == Block::Basic { 1 } else { 4 };
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    x = b.then(
        "conv1",
        Op::Conv2d(Conv2d::new(in_ch, 64, 7).stride(2).padding(3).no_bias()),
        x,
    );
    x = bn(&mut b, "bn1".into(), 64, x);
    x = b.then("relu", RELU, x);
    x = b.then(
        "maxpool",
        Op::MaxPool2d(Pool2d::new(3).stride(2).padding(1)),
        x,
    );
    let mut inplanes = 64;
    for (li, (&n, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        for bi in 0..n {
            let stride = if li > 0 && bi == 0 { 2 } else { 1 };
            let p = format!("layer{}.{bi}", li + 1);
            let identity = x;
            let out_ch = planes * expansion;
            let mut y;
            if block == Block::Basic {
                y = b.then(format!("{p}.conv1"), conv3x3(inplanes, planes, stride), x);
                y = bn(&mut b, format!("{p}.bn1"), planes, y);
                y = b.then(format!("{p}.relu"), RELU, y);
                y = b.then(format!("{p}.conv2"), conv3x3(planes, planes, 1), y);
                y = bn(&mut b, format!("{p}.bn2"), planes, y);
            } else {
                y = b.then(format!("{p}.conv1"), conv1x1(inplanes, planes, 1), x);
                y = bn(&mut b, format!("{p}.bn1"), planes, y);
                y = b.then(format!("{p}.relu"), RELU, y);
                y = b.then(format!("{p}.conv2"), conv3x3(planes, planes, stride), y);
                y = bn(&mut b, format!("{p}.bn2"), planes, y);
                y = b.then(format!("{p}.relu"), RELU, y);
                y = b.then(format!("{p}.conv3"), conv1x1(planes, out_ch, 1), y);
                y = bn(&mut b, format!("{p}.bn3"), out_ch, y);
            }
            let shortcut = if stride != 1 || inplanes != out_ch {
                let d = b.then(
                    format!("{p}.downsample.0"),
                    conv1x1(inplanes, out_ch, stride),
                    x,
                );
                bn(&mut b, format!("{p}.downsample.1"), out_ch, d)
            } else {
                identity
            };
            y = b.add(
                format!("{p}.add"),
                Op::Add { inplace: true },
                &[y, shortcut],
            );
            x = b.then(format!("{p}.relu"), RELU, y);
            inplanes = out_ch;
        }
    }
    x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    x = b.then("flatten", Op::Flatten, x);
    b.then("fc", Op::Linear(Linear::new(512 * expansion, classes)), x);
    b.build()
}

fn conv3x3(i: usize, o: usize, stride: usize) -> Op {
    Op::Conv2d(Conv2d::new(i, o, 3).stride(stride).padding(1).no_bias())
}

fn conv1x1(i: usize, o: usize, stride: usize) -> Op {
    Op::Conv2d(Conv2d::new(i, o, 1).stride(stride).no_bias())
}

/// torchvision's Conv2dNormActivation with ReLU6: conv (no bias, "same" padding), BN,
/// ReLU6(inplace).
fn conv_bn_relu6(b: &mut GraphBuilder, p: &str, conv: Conv2d, x: NodeId) -> NodeId {
    let k = conv.kernel_size.0;
    let out = conv.out_channels;
    let x = b.then(
        format!("{p}.0"),
        Op::Conv2d(conv.padding((k - 1) / 2).no_bias()),
        x,
    );
    let x = bn(b, format!("{p}.1"), out, x);
    b.then(format!("{p}.2"), Op::ReLU6 { inplace: true }, x)
}

fn mobilenet_v2(input: Vec<usize>, classes: usize) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new("mobilenet_v2", input);
    let mut x = b.input();
    x = conv_bn_relu6(&mut b, "features.0", Conv2d::new(in_ch, 32, 3).stride(2), x);
    let settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut inp = 32;
    let mut fi = 1;
    for (t, c, n, s) in settings {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = inp * t;
            let p = format!("features.{fi}.conv");
            let mut y = x;
            let mut li = 0;
            if t != 1 {
                y = conv_bn_relu6(&mut b, &format!("{p}.{li}"), Conv2d::new(inp, hidden, 1), y);
                li += 1;
            }
            y = conv_bn_relu6(
                &mut b,
                &format!("{p}.{li}"),
                Conv2d::new(hidden, hidden, 3).stride(stride).groups(hidden),
                y,
            );
            y = b.then(format!("{p}.{}", li + 1), conv1x1(hidden, c, 1), y);
            y = bn(&mut b, format!("{p}.{}", li + 2), c, y);
            x = if stride == 1 && inp == c {
                b.add(
                    format!("features.{fi}.add"),
                    Op::Add { inplace: false },
                    &[x, y],
                )
            } else {
                y
            };
            inp = c;
            fi += 1;
        }
    }
    x = conv_bn_relu6(
        &mut b,
        &format!("features.{fi}"),
        Conv2d::new(inp, 1280, 1),
        x,
    );
    x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    x = b.then("flatten", Op::Flatten, x);
    x = b.then("classifier.0", dropout(0.2), x);
    b.then("classifier.1", Op::Linear(Linear::new(1280, classes)), x);
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(name: &str, classes: Option<usize>) -> u128 {
        let opts = ModelOptions {
            num_classes: classes,
            input_shape: None,
        };
        build(name, &opts).unwrap().infer().unwrap().num_params()
    }

    #[test]
    fn parameter_counts_equal_torchvision() {
        assert_eq!(count("simple_cnn", None), 62_006);
        assert_eq!(count("lenet5", None), 61_706);
        assert_eq!(count("alexnet", None), 61_100_840);
        assert_eq!(count("vgg11", None), 132_863_336);
        assert_eq!(count("vgg11_bn", None), 132_868_840);
        assert_eq!(count("vgg16", None), 138_357_544);
        assert_eq!(count("resnet18", None), 11_689_512);
        assert_eq!(count("resnet34", None), 21_797_672);
        assert_eq!(count("resnet50", None), 25_557_032);
        assert_eq!(count("mobilenet_v2", None), 3_504_872);
    }

    #[test]
    fn num_classes_changes_the_head() {
        assert_eq!(count("vgg11", Some(10)), 128_807_306);
        assert_eq!(count("resnet18", Some(10)), 11_181_642);
    }

    #[test]
    fn vgg11_at_32x32_pools_a_1x1_map_up_to_7x7() {
        let opts = ModelOptions {
            num_classes: Some(10),
            input_shape: Some(vec![3, 32, 32]),
        };
        let s = build("vgg11", &opts).unwrap().infer().unwrap();
        let avg = s.nodes().iter().position(|n| n.name == "avgpool").unwrap();
        assert_eq!(s.shapes[avg - 1], vec![512, 1, 1]);
        assert_eq!(s.shapes[avg], vec![512, 7, 7]);
    }

    #[test]
    fn resnet18_has_torchvision_buffer_names_and_bytes() {
        let opts = ModelOptions {
            num_classes: Some(10),
            input_shape: Some(vec![3, 32, 32]),
        };
        let s = build("resnet18", &opts).unwrap().infer().unwrap();
        // From the reference measurement: 38,560 bytes of BN running stats.
        assert_eq!(s.buffer_bytes(), 38_560);
        let names: Vec<String> = s.buffers().into_iter().map(|b| b.name).collect();
        assert!(names.contains(&"layer2.0.downsample.1.running_var".to_string()));
        assert!(names.contains(&"bn1.num_batches_tracked".to_string()));
    }

    #[test]
    fn resnet50_macs_match_the_published_4_1_gmacs() {
        let s = build("resnet50", &ModelOptions::default())
            .unwrap()
            .infer()
            .unwrap();
        let gmacs = s.macs() as f64 / 1e9;
        assert!((gmacs - 4.09).abs() < 0.03, "{gmacs}");
    }

    #[test]
    fn simple_cnn_rejects_another_input_size_naming_fc1() {
        let opts = ModelOptions {
            num_classes: None,
            input_shape: Some(vec![3, 64, 64]),
        };
        let err = build("simple_cnn", &opts).unwrap().infer().unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer `fc1`: expected 400 input features (in_features), got 2704"
        );
    }

    #[test]
    fn an_input_that_is_not_chw_is_an_error_not_a_panic() {
        for shape in [vec![], vec![3, 32], vec![0, 32, 32], vec![1, 2, 3, 4]] {
            let opts = ModelOptions {
                num_classes: None,
                input_shape: Some(shape),
            };
            for name in NAMES {
                assert!(build(name, &opts).is_err(), "{name}");
            }
        }
        // Huge but well-formed: refused by shape inference, naming a layer.
        let opts = ModelOptions {
            num_classes: None,
            input_shape: Some(vec![usize::MAX, usize::MAX, usize::MAX]),
        };
        for name in NAMES {
            assert!(build(name, &opts).unwrap().infer().is_err(), "{name}");
        }
    }

    #[test]
    fn mistyped_names_suggest_the_zoo_model() {
        assert_eq!(suggest("resnet-18"), Some("resnet18"));
        assert_eq!(suggest("ResNet18"), Some("resnet18"));
        assert_eq!(suggest("mobilenet-v2"), Some("mobilenet_v2"));
        assert_eq!(suggest("VGG-16"), Some("vgg16"));
        assert_eq!(suggest("resnt50"), Some("resnet50"));
        assert_eq!(suggest("lenet"), Some("lenet5"));
        assert_eq!(suggest("transformer"), None);
        let e = build("resnet-18", &ModelOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown model `resnet-18`: did you mean resnet18?"
        );
    }
}
