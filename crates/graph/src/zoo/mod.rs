//! Built-in models, layer for layer as torchvision (and the lesson's SimpleCNN) define
//! them, with the same parameter names and counts.

use crate::op::{BatchNorm2d, Conv2d, Linear, Op, Pool2d};
use crate::Activation;
use crate::{Graph, GraphBuilder, GraphError, ModelOptions, NodeId};

pub mod convnext;
mod dense;
mod inception;
mod init;
pub mod maxvit;
mod mobile;
mod regnet;
pub mod swin;
pub mod vit;

/// One zoo model: its name, a line about it, its default input and number of classes.
struct Entry {
    name: &'static str,
    about: &'static str,
    input: [usize; 3],
    classes: usize,
}

const fn e(name: &'static str, about: &'static str, side: usize) -> Entry {
    Entry {
        name,
        about,
        input: [3, side, side],
        classes: 1000,
    }
}

/// Every zoo model; the torchvision ones under torchvision's builder names, with the
/// input size of their published weights' transforms.
const ENTRIES: &[Entry] = &[
    Entry {
        name: "simple_cnn",
        about: "the lesson's SimpleCNN: 2 conv + 3 linear",
        input: [3, 32, 32],
        classes: 10,
    },
    Entry {
        name: "lenet5",
        about: "LeNet-5 for 28x28 grayscale (conv1 padded)",
        input: [1, 28, 28],
        classes: 10,
    },
    Entry {
        name: "vit_tiny",
        about: "a small ViT for 28x28 grayscale: patch 4, width 64, depth 4, 4 heads",
        input: [1, 28, 28],
        classes: 10,
    },
    e("alexnet", "torchvision AlexNet", 224),
    e("vgg11", "torchvision VGG-11", 224),
    e("vgg11_bn", "torchvision VGG-11 with BatchNorm", 224),
    e("vgg13", "torchvision VGG-13", 224),
    e("vgg13_bn", "torchvision VGG-13 with BatchNorm", 224),
    e("vgg16", "torchvision VGG-16", 224),
    e("vgg16_bn", "torchvision VGG-16 with BatchNorm", 224),
    e("vgg19", "torchvision VGG-19", 224),
    e("vgg19_bn", "torchvision VGG-19 with BatchNorm", 224),
    e("resnet18", "torchvision ResNet-18", 224),
    e("resnet34", "torchvision ResNet-34", 224),
    e("resnet50", "torchvision ResNet-50 (bottleneck v1.5)", 224),
    e("resnet101", "torchvision ResNet-101", 224),
    e("resnet152", "torchvision ResNet-152", 224),
    e("resnext50_32x4d", "torchvision ResNeXt-50 32x4d", 224),
    e("resnext101_32x8d", "torchvision ResNeXt-101 32x8d", 224),
    e("resnext101_64x4d", "torchvision ResNeXt-101 64x4d", 224),
    e("wide_resnet50_2", "torchvision Wide ResNet-50-2", 224),
    e("wide_resnet101_2", "torchvision Wide ResNet-101-2", 224),
    e("mobilenet_v2", "torchvision MobileNetV2", 224),
    e(
        "mobilenet_v3_large",
        "torchvision MobileNetV3-Large (Hardswish, SE)",
        224,
    ),
    e(
        "mobilenet_v3_small",
        "torchvision MobileNetV3-Small (Hardswish, SE)",
        224,
    ),
    e("mnasnet0_5", "torchvision MNASNet 0.5", 224),
    e("mnasnet0_75", "torchvision MNASNet 0.75", 224),
    e("mnasnet1_0", "torchvision MNASNet 1.0", 224),
    e("mnasnet1_3", "torchvision MNASNet 1.3", 224),
    e(
        "efficientnet_b0",
        "torchvision EfficientNet-B0 (SiLU, SE, stochastic depth)",
        224,
    ),
    e("efficientnet_b1", "torchvision EfficientNet-B1", 240),
    e("efficientnet_b2", "torchvision EfficientNet-B2", 288),
    e("efficientnet_b3", "torchvision EfficientNet-B3", 300),
    e("efficientnet_b4", "torchvision EfficientNet-B4", 380),
    e("efficientnet_b5", "torchvision EfficientNet-B5", 456),
    e("efficientnet_b6", "torchvision EfficientNet-B6", 528),
    e("efficientnet_b7", "torchvision EfficientNet-B7", 600),
    e(
        "efficientnet_v2_s",
        "torchvision EfficientNetV2-S (fused MBConv)",
        384,
    ),
    e("efficientnet_v2_m", "torchvision EfficientNetV2-M", 480),
    e("efficientnet_v2_l", "torchvision EfficientNetV2-L", 480),
    e(
        "densenet121",
        "torchvision DenseNet-121 (concatenation)",
        224,
    ),
    e("densenet161", "torchvision DenseNet-161", 224),
    e("densenet169", "torchvision DenseNet-169", 224),
    e("densenet201", "torchvision DenseNet-201", 224),
    e(
        "squeezenet1_0",
        "torchvision SqueezeNet 1.0 (Fire modules)",
        224,
    ),
    e("squeezenet1_1", "torchvision SqueezeNet 1.1", 224),
    e(
        "shufflenet_v2_x0_5",
        "torchvision ShuffleNetV2 x0.5 (chunk, channel shuffle)",
        224,
    ),
    e("shufflenet_v2_x1_0", "torchvision ShuffleNetV2 x1.0", 224),
    e("shufflenet_v2_x1_5", "torchvision ShuffleNetV2 x1.5", 224),
    e("shufflenet_v2_x2_0", "torchvision ShuffleNetV2 x2.0", 224),
    e("regnet_x_400mf", "torchvision RegNetX-400MF", 224),
    e("regnet_x_800mf", "torchvision RegNetX-800MF", 224),
    e("regnet_x_1_6gf", "torchvision RegNetX-1.6GF", 224),
    e("regnet_x_3_2gf", "torchvision RegNetX-3.2GF", 224),
    e("regnet_x_8gf", "torchvision RegNetX-8GF", 224),
    e("regnet_x_16gf", "torchvision RegNetX-16GF", 224),
    e("regnet_x_32gf", "torchvision RegNetX-32GF", 224),
    e("regnet_y_400mf", "torchvision RegNetY-400MF (SE)", 224),
    e("regnet_y_800mf", "torchvision RegNetY-800MF", 224),
    e("regnet_y_1_6gf", "torchvision RegNetY-1.6GF", 224),
    e("regnet_y_3_2gf", "torchvision RegNetY-3.2GF", 224),
    e("regnet_y_8gf", "torchvision RegNetY-8GF", 224),
    e("regnet_y_16gf", "torchvision RegNetY-16GF", 224),
    e("regnet_y_32gf", "torchvision RegNetY-32GF", 224),
    e("regnet_y_128gf", "torchvision RegNetY-128GF", 224),
    e(
        "googlenet",
        "torchvision GoogLeNet (Inception v1, two auxiliary heads)",
        224,
    ),
    e(
        "inception_v3",
        "torchvision Inception v3 (auxiliary head)",
        299,
    ),
    e(
        "convnext_tiny",
        "torchvision ConvNeXt-T (LayerNorm, layer scale)",
        224,
    ),
    e("convnext_small", "torchvision ConvNeXt-S", 224),
    e("convnext_base", "torchvision ConvNeXt-B", 224),
    e("convnext_large", "torchvision ConvNeXt-L", 224),
    e(
        "vit_b_16",
        "torchvision ViT-B/16 (multi-head attention)",
        224,
    ),
    e("vit_b_32", "torchvision ViT-B/32", 224),
    e("vit_l_16", "torchvision ViT-L/16", 224),
    e("vit_l_32", "torchvision ViT-L/32", 224),
    e("vit_h_14", "torchvision ViT-H/14", 224),
    e(
        "swin_t",
        "torchvision Swin-T (shifted-window attention)",
        224,
    ),
    e("swin_s", "torchvision Swin-S", 224),
    e("swin_b", "torchvision Swin-B", 224),
    e(
        "swin_v2_t",
        "torchvision Swin V2-T (cosine window attention)",
        256,
    ),
    e("swin_v2_s", "torchvision Swin V2-S", 256),
    e("swin_v2_b", "torchvision Swin V2-B", 256),
    e(
        "maxvit_t",
        "torchvision MaxViT-T (MBConv, window and grid attention)",
        224,
    ),
];

/// Zoo model names, as `vramlab models` lists them.
pub const NAMES: &[&str] = &{
    let mut names = [""; ENTRIES.len()];
    let mut i = 0;
    while i < ENTRIES.len() {
        names[i] = ENTRIES[i].name;
        i += 1;
    }
    names
};

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
    ENTRIES
        .iter()
        .find(|e| e.name == name)
        .map(|e| (e.about, e.input))
}

/// Builds a zoo model. The default number of classes is 10 for the small models and
/// 1000 (ImageNet) for the torchvision ones, as in their constructors.
pub fn build(name: &str, opts: &ModelOptions) -> Result<Graph, GraphError> {
    let entry = ENTRIES
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| GraphError::UnknownModel(name.to_string()))?;
    let input = opts
        .input_shape
        .clone()
        .unwrap_or_else(|| entry.input.to_vec());
    if input.len() != 3 || input.contains(&0) {
        return Err(GraphError::Structure(format!(
            "a zoo model's input is CxHxW with positive sizes, got {}",
            crate::fmt_shape(&input)
        )));
    }
    if opts.num_classes == Some(0) {
        return Err(GraphError::Structure(
            "--num-classes must be at least 1".into(),
        ));
    }
    let classes = opts.num_classes.unwrap_or(entry.classes);
    let family = |prefix: &str| name.strip_prefix(prefix);
    let mut g = match name {
        "simple_cnn" => lenet_like(name, input, 0, classes),
        "lenet5" => lenet_like(name, input, 2, classes),
        "alexnet" => alexnet(input, classes),
        "mobilenet_v2" => mobilenet_v2(input, classes),
        _ if name.starts_with("vgg") => {
            let cfg = match name.trim_end_matches("_bn") {
                "vgg11" => VGG11,
                "vgg13" => VGG13,
                "vgg16" => VGG16,
                "vgg19" => VGG19,
                other => unreachable!("zoo ENTRIES lists no {other}"),
            };
            vgg(name, input, cfg, name.ends_with("_bn"), classes)
        }
        _ if name.starts_with("res") || name.starts_with("wide") => {
            let (block, layers, groups, width) = match name {
                "resnet18" => (Block::Basic, [2, 2, 2, 2], 1, 64),
                "resnet34" => (Block::Basic, [3, 4, 6, 3], 1, 64),
                "resnet50" => (Block::Bottleneck, [3, 4, 6, 3], 1, 64),
                "resnet101" => (Block::Bottleneck, [3, 4, 23, 3], 1, 64),
                "resnet152" => (Block::Bottleneck, [3, 8, 36, 3], 1, 64),
                "resnext50_32x4d" => (Block::Bottleneck, [3, 4, 6, 3], 32, 4),
                "resnext101_32x8d" => (Block::Bottleneck, [3, 4, 23, 3], 32, 8),
                "resnext101_64x4d" => (Block::Bottleneck, [3, 4, 23, 3], 64, 4),
                "wide_resnet50_2" => (Block::Bottleneck, [3, 4, 6, 3], 1, 128),
                "wide_resnet101_2" => (Block::Bottleneck, [3, 4, 23, 3], 1, 128),
                other => unreachable!("zoo ENTRIES lists no {other}"),
            };
            resnet(name, input, block, layers, groups, width, classes)
        }
        _ if family("mobilenet_v3_").is_some() => {
            mobile::mobilenet_v3(name, input, name.ends_with("small"), classes)
        }
        _ if family("mnasnet").is_some() => mobile::mnasnet(name, input, classes),
        _ if family("efficientnet_v2_").is_some() => mobile::efficientnet_v2(name, input, classes),
        _ if family("efficientnet_b").is_some() => mobile::efficientnet(name, input, classes),
        _ if family("densenet").is_some() => dense::densenet(name, input, classes),
        _ if family("squeezenet").is_some() => dense::squeezenet(name, input, classes),
        _ if family("shufflenet_v2_").is_some() => dense::shufflenet_v2(name, input, classes),
        _ if family("regnet_").is_some() => regnet::regnet(name, input, classes),
        "vit_tiny" => vit::tiny(input, classes),
        _ if family("vit_").is_some() => vit::vit(name, input, classes)?,
        _ if family("convnext_").is_some() => convnext::convnext(name, input, classes),
        "googlenet" => inception::googlenet(name, input, classes),
        "inception_v3" => inception::inception_v3(name, input, classes),
        _ if family("swin_").is_some() => swin::swin(name, input, classes),
        "maxvit_t" => maxvit::maxvit_t(input, classes),
        _ => unreachable!("every entry has a builder"),
    };
    init::apply(&mut g, name);
    Ok(g)
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
    x = b.then("relu1", Op::relu(false), x);
    x = b.then("pool1", Op::MaxPool2d(Pool2d::new(2)), x);
    x = b.then("conv2", Op::Conv2d(Conv2d::new(6, 16, 5)), x);
    x = b.then("relu2", Op::relu(false), x);
    x = b.then("pool2", Op::MaxPool2d(Pool2d::new(2)), x);
    x = b.then("flatten", Op::Flatten, x);
    x = b.then("fc1", Op::Linear(Linear::new(400, 120)), x);
    x = b.then("relu3", Op::relu(false), x);
    x = b.then("fc2", Op::Linear(Linear::new(120, 84)), x);
    x = b.then("relu4", Op::relu(false), x);
    b.then("fc3", Op::Linear(Linear::new(84, classes)), x);
    b.build()
}

const RELU: Op = Op::relu(true);

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

pub(crate) fn dropout(p: f64) -> Op {
    Op::Dropout { p, inplace: false }
}

/// 0 stands for a max-pool ('M' in torchvision's cfgs).
const VGG11: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG13: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
];
const VGG16: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];
const VGG19: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0,
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

pub(crate) fn bn(b: &mut GraphBuilder, name: String, ch: usize, x: NodeId) -> NodeId {
    b.then(name, Op::BatchNorm2d(BatchNorm2d::new(ch)), x)
}

/// torchvision's ResNet, ResNeXt (`groups` x `width` per group) and Wide ResNet
/// (`width` 128): the bottleneck's middle width is `planes * width / 64 * groups`.
fn resnet(
    name: &str,
    input: Vec<usize>,
    block: Block,
    layers: [usize; 4],
    groups: usize,
    width: usize,
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
                let mid = planes * width / 64 * groups;
                y = b.then(format!("{p}.conv1"), conv1x1(inplanes, mid, 1), x);
                y = bn(&mut b, format!("{p}.bn1"), mid, y);
                y = b.then(format!("{p}.relu"), RELU, y);
                let conv2 = Conv2d::new(mid, mid, 3)
                    .stride(stride)
                    .padding(1)
                    .groups(groups)
                    .no_bias();
                y = b.then(format!("{p}.conv2"), Op::Conv2d(conv2), y);
                y = bn(&mut b, format!("{p}.bn2"), mid, y);
                y = b.then(format!("{p}.relu"), RELU, y);
                y = b.then(format!("{p}.conv3"), conv1x1(mid, out_ch, 1), y);
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

pub(crate) fn conv1x1(i: usize, o: usize, stride: usize) -> Op {
    Op::Conv2d(Conv2d::new(i, o, 1).stride(stride).no_bias())
}

/// BatchNorm2d's `eps` and `momentum` as a model family sets them.
#[derive(Clone, Copy)]
pub(crate) struct Norm {
    pub eps: f64,
    pub momentum: f64,
}

/// PyTorch's BatchNorm2d defaults.
pub(crate) const BN: Norm = Norm {
    eps: 1e-5,
    momentum: 0.1,
};

/// torchvision's Conv2dNormActivation: the convolution ("same" padding, no bias) as
/// `{p}.0`, BatchNorm2d as `{p}.1`, the activation in place as `{p}.2` (none for a
/// projection).
pub(crate) fn conv_norm_act(
    b: &mut GraphBuilder,
    p: &str,
    conv: Conv2d,
    norm: Norm,
    act: Option<Activation>,
    x: NodeId,
) -> NodeId {
    let k = conv.kernel_size.0;
    let out = conv.out_channels;
    let x = b.then(
        format!("{p}.0"),
        Op::Conv2d(conv.padding((k - 1) / 2).no_bias()),
        x,
    );
    let mut bnl = BatchNorm2d::new(out);
    bnl.eps = norm.eps;
    bnl.momentum = norm.momentum;
    let x = b.then(format!("{p}.1"), Op::BatchNorm2d(bnl), x);
    match act {
        Some(kind) => b.then(format!("{p}.2"), Op::act(kind, true), x),
        None => x,
    }
}

/// torchvision's SqueezeExcitation `{p}`: average pool, `fc1` (1x1 conv with bias),
/// `activation`, `fc2`, `scale_activation`, then `scale * input`.
pub(crate) fn squeeze_excitation(
    b: &mut GraphBuilder,
    p: &str,
    channels: usize,
    squeeze: usize,
    activation: Op,
    scale_activation: Op,
    x: NodeId,
) -> NodeId {
    let mut s = b.then(
        format!("{p}.avgpool"),
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    s = b.then(
        format!("{p}.fc1"),
        Op::Conv2d(Conv2d::new(channels, squeeze, 1)),
        s,
    );
    s = b.then(format!("{p}.activation"), activation, s);
    s = b.then(
        format!("{p}.fc2"),
        Op::Conv2d(Conv2d::new(squeeze, channels, 1)),
        s,
    );
    s = b.then(format!("{p}.scale_activation"), scale_activation, s);
    b.add(format!("{p}.mul"), Op::Mul, &[s, x])
}

/// torchvision's `_make_divisible(v, divisor)`: the nearest multiple of `divisor`, at
/// least `divisor`, never more than 10 % below `v`.
pub(crate) fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (new as f64) < 0.9 * v {
        new += divisor;
    }
    new
}

/// `AdaptiveAvgPool2d(1)` (or `x.mean([2, 3])`) then `flatten`.
pub(crate) fn pool_flatten(b: &mut GraphBuilder, x: NodeId) -> NodeId {
    let x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    b.then("flatten", Op::Flatten, x)
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
    b.then(format!("{p}.2"), Op::relu6(true), x)
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
        let names: Vec<String> = s.buffers().iter().map(|b| b.name.clone()).collect();
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
            // Refused when built (a ViT's fixed image size) or when shapes are inferred.
            let r = build(name, &opts).and_then(|g| g.infer().map(|_| ()));
            assert!(r.is_err(), "{name}");
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
