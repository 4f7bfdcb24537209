"""The small ViT of issue 8 on real Fashion-MNIST in PyTorch, with vramlab's defaults.

torchvision.models.VisionTransformer(image_size=28, patch_size=4, num_layers=4,
num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10) with a 1-channel patch embedding, trained as
`vramlab train vit_tiny --data fashion-mnist --epochs 2 --batch-size 64 --optimizer adam
--lr 1e-3 --seed 0` trains it: images normalised with the training split's own mean and
std (vramlab's `--normalize auto`), shuffled every epoch, the last smaller batch kept,
Adam with PyTorch's defaults, cross-entropy, no augmentation. Prints one JSON line.

Usage: python tools/vit_fmnist_pytorch.py [--root /usr/share/datasets/fashion-mnist]
       [--epochs 2] [--batch-size 64] [--lr 1e-3] [--seed 0] [--threads 2]
"""

import argparse
import gzip
import json
import platform
import sys
import time

import numpy as np
import torch
import torchvision


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr = idx(f"{a.root}/train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    ytr = idx(f"{a.root}/train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = idx(f"{a.root}/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = idx(f"{a.root}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    mean, std = float(xtr.mean()), float(xtr.std())
    xtr = torch.from_numpy((xtr - mean) / std).unsqueeze(1)
    xte = torch.from_numpy((xte - mean) / std).unsqueeze(1)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    model = torchvision.models.VisionTransformer(
        image_size=28, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64,
        mlp_dim=128, num_classes=10,
    )
    # torchvision's ViT takes 3 channels; a grayscale image needs a 1-channel patch
    # embedding, initialised as torchvision initialises conv_proj.
    model.conv_proj = torch.nn.Conv2d(1, 64, kernel_size=4, stride=4)
    fan_in = model.conv_proj.in_channels * 4 * 4
    torch.nn.init.trunc_normal_(model.conv_proj.weight, std=(1.0 / fan_in) ** 0.5)
    torch.nn.init.zeros_(model.conv_proj.bias)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    epochs = []
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(0, len(xtr), a.batch_size):
            i = perm[s : s + a.batch_size]
            x, y = xtr[i], ytr[i]
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
            if (s // a.batch_size) % 100 == 0:
                print(f"epoch {epoch + 1} step {s // a.batch_size}: loss {loss.item():.4f}, "
                      f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        model.eval()
        with torch.no_grad():
            test_correct = sum(
                (model(xte[s : s + 1000]).argmax(1) == yte[s : s + 1000]).sum().item()
                for s in range(0, len(xte), 1000)
            )
        epochs.append({
            "epoch": epoch + 1,
            "train_loss": loss_sum / total,
            "train_accuracy": correct / total,
            "test_accuracy": test_correct / len(xte),
            "seconds": time.time() - t0,
        })
        print(json.dumps(epochs[-1]), flush=True)
    print(json.dumps({
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": a.threads,
        "normalize": [mean, std],
        "params": sum(p.numel() for p in model.parameters()),
        "test_accuracy": epochs[-1]["test_accuracy"],
        "wall_seconds": time.time() - t0,
        "machine": platform.processor() or platform.machine(),
        "epochs": epochs,
    }))


if __name__ == "__main__":
    main()
