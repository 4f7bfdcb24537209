"""Writes the transformer-era torch.export fixtures that crates/pt2/tests/transformers.rs reads.

    /work/torch-venv/bin/python tools/export_pt2_transformers.py

Small torchvision models built from the same classes as vit_b_16, swin_t, swin_v2_t,
convnext_tiny, maxvit_t and shufflenet_v2_x0_5 (scaled down; the tests build the zoo graph of the same
sizes), and AttnNet, an attention model of our own (nn.MultiheadAttention, batch_first,
need_weights=False), each exported with torch.export.export in train() mode on a batch of
2 and saved with torch.export.save. The archives are rewritten without their weights and
constants (data/weights, data/constants): vramlab never reads them, and the fixtures stay
small. transformer_fixtures.json records each model's input shape and parameter count, and
what real PyTorch measured training AttnNet on the CPU (../shared/oracle's tracker: fp32,
Adam, batches 8 and 64, steps 1 and 2).
"""

import json
import os
import sys
import zipfile

import torch
import torch.nn as nn
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "pt2", "tests", "fixtures")


class AttnNet(nn.Module):
    """An attention model of our own: patches as tokens, a class token, a position
    embedding, one pre-norm block with nn.MultiheadAttention, the class token's head."""

    def __init__(self, num_classes=10, dim=32, heads=4, patch=4, image=16):
        super().__init__()
        tokens = (image // patch) ** 2 + 1
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x)[:, 0])


def tiny_vit():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def tiny_swin(v2=False):
    extra = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        stochastic_depth_prob=0.2, num_classes=10, **extra,
    )


def tiny_convnext():
    return ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], stochastic_depth_prob=0.1, num_classes=10)


def tiny_maxvit():
    return MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1],
        head_dim=8, stochastic_depth_prob=0.2, num_classes=10,
    )


MODELS = {
    "tiny_vit": (tiny_vit, (3, 32, 32)),
    "tiny_swin": (tiny_swin, (3, 32, 32)),
    "tiny_swin_v2": (lambda: tiny_swin(v2=True), (3, 32, 32)),
    "tiny_convnext": (tiny_convnext, (3, 32, 32)),
    "tiny_maxvit": (tiny_maxvit, (3, 32, 32)),
    "shufflenet_v2_x0_5": (lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10), (3, 32, 32)),
    "attn_net": (AttnNet, (3, 16, 16)),
}


def strip(path):
    """Rewrites the archive without data/weights and data/constants, entries stored."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if "/data/weights/" in info.filename or "/data/constants/" in info.filename:
                continue
            dst.writestr(info.filename, src.read(info.filename))
    os.replace(tmp, path)


def measure(record):
    sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "oracle"))
    import torch_memory_oracle as oracle

    torch.set_num_threads(2)
    ctor, chw = MODELS["attn_net"]
    oracle.MODELS["attn_net"] = (ctor, chw, 10, [8, 64])
    peaks = {}
    for bs in [8, 64]:
        r = oracle.run_case("attn_net", bs, "adam", use_memtracker=False)
        peaks[str(bs)] = [r["step1"]["tracker_peak"], r["step2"]["tracker_peak"]]
        print("attn_net", bs, peaks[str(bs)], flush=True)
    record["pytorch_cpu_adam_peaks"] = {"attn_net": peaks}


def main():
    record = {"torch_version": torch.__version__, "torchvision_version": torchvision.__version__, "fixtures": {}}
    for name, (ctor, chw) in MODELS.items():
        torch.manual_seed(0)
        m = ctor().train()
        ep = torch.export.export(m, (torch.randn(2, *chw),))
        path = os.path.join(OUT, name + "_train.pt2")
        torch.export.save(ep, path)
        strip(path)
        record["fixtures"][name + "_train.pt2"] = {
            "model": name,
            "input_shape": list(chw),
            "num_params": sum(p.numel() for p in m.parameters()),
            "bytes": os.path.getsize(path),
        }
        print(name, record["fixtures"][name + "_train.pt2"], flush=True)
    measure(record)
    with open(os.path.join(OUT, "transformer_fixtures.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
