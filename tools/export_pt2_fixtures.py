"""Writes the torch.export archives (.pt2) that crates/pt2's tests read.

    /work/torch-venv/bin/python tools/export_pt2_fixtures.py

Each model is exported with torch.export.export (batch 2) and saved with torch.export.save,
in train() mode and, where the mode changes the graph (BatchNorm, Dropout), in eval() mode;
SmallResNet also with a symbolic batch after run_decompositions() (the core aten opset,
functional) in train() mode.
Next to the fixtures, pt2_fixtures.json records what PyTorch says of each model: its input
shape, parameter count, and parameter names and shapes in named_parameters() order.

torchvision's mobilenet_v3_small(num_classes=10) is far over 1 MB with its weights, so a
scaled-down MobileNet-style net (squeeze-and-excitation, Hardswish, Hardsigmoid, an inverted
residual) stands in for it.

    /work/torch-venv/bin/python tools/export_pt2_fixtures.py --measure

adds, without exporting again, what real PyTorch measures for each model trained on the CPU
(../shared/oracle/torch_memory_oracle.py's tracker: fp32, Adam, batches 8 and 64, steps 1
and 2) as "pytorch_cpu_adam_peaks" in pt2_fixtures.json; the tests hold the plans of the
.pt2 files to them.
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "pt2", "tests", "fixtures")


class SimpleCNN(nn.Module):
    """The PyTorch CIFAR-10 tutorial net, as ../shared/oracle/torch_memory_oracle.py has it."""

    def __init__(self, in_ch=3, flat=400):
        super().__init__()
        self.flat = flat
        self.conv1 = nn.Conv2d(in_ch, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.flat)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Block(nn.Module):
    """torchvision's BasicBlock."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Block(16, 16, 1))
        self.layer2 = nn.Sequential(Block(16, 32, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class SE(nn.Module):
    """torchvision's SqueezeExcitation with Hardsigmoid, as MobileNetV3 uses it."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


def cbn(cin, cout, k, stride, groups, act):
    layers = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, exp, cout, stride, se, act):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers = []
        if exp != cin:
            layers.append(cbn(cin, exp, 1, 1, 1, act))
        layers.append(cbn(exp, exp, 3, stride, exp, act))
        if se:
            layers.append(SE(exp, max(8, exp // 4)))
        layers.append(cbn(exp, cout, 1, 1, 1, None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        if self.use_res:
            out = out + x
        return out


class TinyMobileNet(nn.Module):
    """A scaled-down mobilenet_v3_small: stem, three inverted residuals, last conv, head."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            cbn(3, 8, 3, 2, 1, nn.Hardswish),
            InvertedResidual(8, 8, 8, 2, True, nn.ReLU),
            InvertedResidual(8, 24, 16, 2, False, nn.ReLU),
            InvertedResidual(16, 48, 16, 1, True, nn.Hardswish),
            cbn(16, 48, 1, 1, 1, nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(48, 64),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


CONSTRUCTORS = {
    "simple_cnn": SimpleCNN,
    "small_resnet": SmallResNet,
    "tiny_mobilenet": TinyMobileNet,
    "tiny_effnet": None,  # set below, after TinyEffNet
}


def measure():
    oracle_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "oracle")
    sys.path.insert(0, oracle_dir)
    import torch_memory_oracle as oracle

    torch.set_num_threads(2)
    path = os.path.join(OUT, "pt2_fixtures.json")
    with open(path) as f:
        record = json.load(f)
    peaks = {}
    for name, ctor in CONSTRUCTORS.items():
        chw = next(v["input_shape"] for v in record["fixtures"].values() if v["model"] == name)
        oracle.MODELS[name] = (ctor, tuple(chw), 10, [8, 64])
        peaks[name] = {}
        for bs in [8, 64]:
            r = oracle.run_case(name, bs, "adam", use_memtracker=False)
            peaks[name][str(bs)] = [r["step1"]["tracker_peak"], r["step2"]["tracker_peak"]]
            print(name, bs, peaks[name][str(bs)])
    record["pytorch_cpu_adam_peaks"] = peaks
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


class MBConv(nn.Module):
    """EfficientNet's MBConv: expand, depthwise, squeeze-and-excitation (SiLU, Sigmoid),
    project, and stochastic depth on the residual."""

    def __init__(self, c, exp, p):
        super().__init__()
        from torchvision.ops import SqueezeExcitation, StochasticDepth

        self.block = nn.Sequential(
            cbn(c, exp, 1, 1, 1, nn.SiLU),
            cbn(exp, exp, 3, 1, exp, nn.SiLU),
            SqueezeExcitation(exp, max(1, c // 4), activation=lambda: nn.SiLU(inplace=True)),
            cbn(exp, c, 1, 1, 1, None),
        )
        self.stochastic_depth = StochasticDepth(p, "row")

    def forward(self, x):
        return self.stochastic_depth(self.block(x)) + x


class TinyEffNet(nn.Module):
    """A scaled-down EfficientNet: SiLU, squeeze-and-excitation, stochastic depth."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            cbn(3, 16, 3, 2, 1, nn.SiLU),
            MBConv(16, 32, 0.2),
            cbn(16, 32, 1, 1, 1, nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(32, num_classes))

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


CONSTRUCTORS["tiny_effnet"] = TinyEffNet


def main():
    if "--measure" in sys.argv[1:]:
        measure()
        return
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    models = [
        ("simple_cnn", SimpleCNN(), (3, 32, 32), ["train"]),
        ("small_resnet", SmallResNet(), (3, 32, 32), ["train", "eval", "train_decomposed"]),
        ("tiny_mobilenet", TinyMobileNet(), (3, 32, 32), ["train", "eval"]),
        ("tiny_effnet", TinyEffNet(), (3, 16, 16), ["train"]),
    ]
    record = {"torch_version": torch.__version__, "fixtures": {}}
    for name, model, chw, modes in models:
        for mode in modes:
            model.train(mode != "eval")
            x = torch.randn(2, *chw)
            if mode.endswith("_decomposed"):
                # A symbolic batch (sym_size, views of [s0, 32]) and the core aten opset:
                # convolution, _native_batch_norm_legit_functional, max_pool2d_with_indices,
                # mean.dim, view, permute + addmm, all functional.
                batch = {0: torch.export.Dim("batch")}
                ep = torch.export.export(model, (x,), dynamic_shapes=(batch,))
                ep = ep.run_decompositions()
            else:
                ep = torch.export.export(model, (x,))
            fname = f"{name}_{mode}.pt2"
            path = os.path.join(OUT, fname)
            torch.export.save(ep, path)
            params = [(n, list(p.shape)) for n, p in model.named_parameters()]
            record["fixtures"][fname] = {
                "model": name,
                "mode": mode,
                "input_shape": list(chw),
                "num_params": sum(p.numel() for p in model.parameters()),
                "param_names": [n for n, _ in params],
                "param_shapes": [s for _, s in params],
                "bytes": os.path.getsize(path),
                "targets": sorted({str(n.target) for n in ep.graph.nodes if n.op == "call_function"}),
            }
    with open(os.path.join(OUT, "pt2_fixtures.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    total = sum(v["bytes"] for v in record["fixtures"].values())
    for k, v in record["fixtures"].items():
        print(k, v["bytes"], v["num_params"], v["targets"])
    print("total bytes", total)


if __name__ == "__main__":
    main()
