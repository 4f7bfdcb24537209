"""Regenerates the ONNX fixtures of crates/onnx/tests/fixtures/ (run with torch, torchvision,
onnx and onnxscript installed; the tests themselves need none of them):

    python tools/export_onnx_fixtures.py crates/onnx/tests/fixtures

Each model is exported by both PyTorch exporters (TorchScript, `dynamo=False`; dynamo,
`dynamo=True`), in training mode and in eval mode, with a symbolic batch dimension. The
weights are then stripped: every initializer of more than 16 elements keeps its name, dims
and dtype but points at an external file `weights.data` that is not written, as a model
saved with external data whose .data file was left behind. `params.json` records
PyTorch's own parameter and buffer counts of each model.
"""

import json
import os
import sys

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class SimpleCNN(nn.Module):
    """The lesson's SimpleCNN (../shared/reference/README.md)."""

    def __init__(self, in_ch=3, pad=0, flatten=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.flatten = flatten

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1) if self.flatten else x.view(-1, 400)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class TinyRes(nn.Module):
    """Not in the zoo: BatchNorm, a residual block, Dropout; torchvision's conventions
    (in-place ReLU, `out += identity`). Its twin is tests/fixtures/tinyres.toml."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        x = self.pool(x)
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        x = torch.flatten(self.avgpool(out), 1)
        return self.fc(self.drop(x))


class TinyResMean(TinyRes):
    """TinyRes with `x.mean((2, 3))` for its pooling (ReduceMean in ONNX): the same layers
    to vramlab, the same twin."""

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        x = self.pool(x)
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        return self.fc(self.drop(out.mean((2, 3))))


class LeakyNet(nn.Module):
    """A model with an op vramlab does not map (LeakyRelu), for the error test."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


def models():
    tv = torchvision.models
    return {
        "simple_cnn": (SimpleCNN(), (3, 32, 32)),
        "lenet5": (SimpleCNN(in_ch=1, pad=2, flatten=True), (1, 28, 28)),
        "resnet18": (tv.resnet18(weights=None, num_classes=10), (3, 32, 32)),
        "mobilenet_v2": (tv.mobilenet_v2(weights=None), (3, 224, 224)),
        "vgg11_bn": (tv.vgg11_bn(weights=None), (3, 224, 224)),
        "tinyres": (TinyRes(), (3, 32, 32)),
    }


def rest_of_the_zoo():
    """The zoo's other torchvision classifiers: training exports only (both exporters)."""
    tv = torchvision.models
    return {
        "alexnet": (tv.alexnet(weights=None), (3, 224, 224)),
        "vgg11": (tv.vgg11(weights=None), (3, 224, 224)),
        "vgg16": (tv.vgg16(weights=None), (3, 224, 224)),
        "resnet34": (tv.resnet34(weights=None), (3, 224, 224)),
        "resnet50": (tv.resnet50(weights=None), (3, 224, 224)),
    }


def strip_weights(path, keep_scopes=False):
    """Initializers of more than 16 elements lose their bytes, keep dims and dtype. With
    `keep_scopes`, the dynamo exporter's module scopes and classes stay in each node's
    metadata (`pkg.torch.onnx.name_scopes`, `pkg.torch.onnx.class_hierarchy`)."""
    m = onnx.load(path, load_external_data=False)
    offset = 0
    for t in m.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n <= 16:
            continue
        size = n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.ClearField("int64_data")
        t.ClearField("external_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "weights.data"), ("offset", str(offset)), ("length", str(size))):
            e = t.external_data.add()
            e.key = k
            e.value = v
        offset += size
    # Stack traces and per-node metadata are most of a dynamo export's bytes.
    keep = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy") if keep_scopes else ()
    for n in m.graph.node:
        n.ClearField("doc_string")
        kept = [(p.key, p.value) for p in n.metadata_props if p.key in keep]
        n.ClearField("metadata_props")
        for k, v in kept:
            e = n.metadata_props.add()
            e.key = k
            e.value = v
    m.ClearField("metadata_props")
    onnx.save(m, path)
    for f in os.listdir(os.path.dirname(path) or "."):
        if f.endswith(".data"):
            os.remove(os.path.join(os.path.dirname(path) or ".", f))


def export(model, shape, path, dynamo, train, optimize=True, opset=None, keep_scopes=False):
    x = torch.randn(2, *shape)
    model.train(train)
    if dynamo:
        batch = torch.export.Dim("batch", min=2, max=4096)
        prog = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset or (20 if train else 18),
            input_names=["input"], dynamic_shapes=({0: batch},), optimize=optimize,
        )
        prog.save(path, external_data=True)
    else:
        torch.onnx.export(
            model, (x,), path, dynamo=False, opset_version=opset or (17 if train else 13),
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=not train,
        )
    strip_weights(path, keep_scopes)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "crates/onnx/tests/fixtures"
    os.makedirs(out, exist_ok=True)
    counts = {}
    for name, (model, shape) in models().items():
        counts[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "buffers": sum(b.numel() for b in model.buffers()),
            "input": list(shape),
        }
        # The dynamo exporter's default optimisation folds BatchNorm into the convolutions
        # even in training mode; `optimize=False` keeps it.
        for dynamo, train, optimize in (
            (False, True, True), (False, False, True),
            (True, True, True), (True, False, True), (True, True, False),
        ):
            tag = ("dynamo" if dynamo else "torchscript") + ("_train" if train else "_eval")
            if not optimize:
                tag += "_noopt"
            path = os.path.join(out, f"{name}_{tag}.onnx")
            try:
                export(model, shape, path, dynamo, train, optimize)
                print("wrote", path, os.path.getsize(path))
            except Exception as e:  # report and go on: the tests list what exists
                print("FAILED", path, type(e).__name__, str(e)[:300])
    for name, (model, shape) in rest_of_the_zoo().items():
        counts[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "buffers": sum(b.numel() for b in model.buffers()),
            "input": list(shape),
        }
        for dynamo, tag in ((False, "torchscript_train"), (True, "dynamo_train_noopt")):
            path = os.path.join(out, f"{name}_{tag}.onnx")
            export(model, shape, path, dynamo, True, optimize=False)
            print("wrote", path, os.path.getsize(path))
    # Every opset of both exporters, in training mode (TorchScript 13 to 20, dynamo 18 to
    # 20 with optimize=False), on a model whose pooling is a ReduceMean.
    for opset in range(13, 21):
        export(TinyResMean(), (3, 32, 32), os.path.join(out, f"tinyres_mean_torchscript_opset{opset}.onnx"),
               False, True, opset=opset)
    for opset in range(18, 21):
        export(TinyResMean(), (3, 32, 32), os.path.join(out, f"tinyres_mean_dynamo_opset{opset}.onnx"),
               True, True, optimize=False, opset=opset)
    export(LeakyNet(), (3, 8, 8), os.path.join(out, "unsupported_leakyrelu.onnx"), False, True)
    # The README's example, exactly: an untrained ResNet-18 exported in eval mode with the
    # dynamo exporter's defaults (its optimiser folds each BatchNorm into the convolution
    # and drops the all-zero folded bias).
    fresh = os.path.join(out, "resnet18_dynamo_eval_fresh.onnx")
    m = torchvision.models.resnet18(num_classes=10).eval()
    torch.onnx.export(m, (torch.randn(2, 3, 32, 32),), fresh, dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    strip_weights(fresh)
    with open(os.path.join(out, "params.json"), "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
