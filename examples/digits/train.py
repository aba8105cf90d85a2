#!/usr/bin/env python3
"""Train a small MobileNet-style CNN on scikit-learn's digits and export it to ONNX.

This is the only file in the repository that uses torch. It needs its own
environment, e.g.:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch onnx onnxruntime scikit-learn numpy opencv-python-headless
    /tmp/torchvenv/bin/python examples/digits/train.py

Outputs (in --output-dir, default: this script's folder):

    model.onnx                  FP32 model, input "input" [N,1,32,32], output "logits" [N,10]
    fp32_top1.txt               FP32 top-1 on the test set (onnxruntime), a fraction in [0,1]
    data/calib.npy              (200,1,32,32) float32 calibration images
    data/calib_labels.txt       200 labels, one per line
    data/test.npy               (500,1,32,32) float32 test images
    data/test_labels.txt        500 labels, one per line
    data/images/test_000.png .. test_015.png   first 16 test images, 32x32 grayscale uint8
    data/images/ImageList.txt   their file names, one per line
    data/images/images_labels.txt   their labels, one per line
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
N_TEST = 500
N_CALIB = 200
N_PNG = 16
IMG = 32
OPSET = 17


# --------------------------------------------------------------------------- data


def preprocess(images8x8: np.ndarray) -> np.ndarray:
    """(N,8,8) values 0..16 -> (N,1,32,32) float32 in [0,1], bilinear upsampling."""
    x = images8x8.astype(np.float32) / 16.0
    up = np.stack([cv2.resize(im, (IMG, IMG), interpolation=cv2.INTER_LINEAR) for im in x]).astype(np.float32)
    return up[:, None, :, :]


def make_splits():
    digits = load_digits()
    x = preprocess(digits.images)
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    # held-out test set
    trainval_idx, test_idx = train_test_split(idx, test_size=N_TEST, random_state=SEED, stratify=y)
    # calibration set taken out of the training portion (disjoint from train and test)
    train_idx, calib_idx = train_test_split(
        trainval_idx, test_size=N_CALIB, random_state=SEED, stratify=y[trainval_idx]
    )
    return (
        (x[train_idx], y[train_idx]),
        (x[calib_idx], y[calib_idx]),
        (x[test_idx], y[test_idx]),
    )


# --------------------------------------------------------------------------- model


class DSBlock(nn.Module):
    """Depthwise-separable block: dw3x3+BN+ReLU, pw1x1+BN+ReLU, optional residual Add."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.dw_bn = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(cout)
        self.residual = residual
        if residual:
            assert stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu(self.dw_bn(self.dw(x)))
        y = F.relu(self.pw_bn(self.pw(y)))
        if self.residual:
            y = y + x
        return y


class DigitsNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=1, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(
            DSBlock(16, 16, stride=1, residual=True),  # 32x32
            DSBlock(16, 32, stride=2, residual=False),  # 16x16
            DSBlock(32, 32, stride=1, residual=True),  # 16x16
            DSBlock(32, 64, stride=2, residual=False),  # 8x8
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.fc(x)


# --------------------------------------------------------------------------- training


def set_determinism() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # fixed reduction order regardless of core count
    try:
        torch.use_deterministic_algorithms(True)
    except RuntimeError as e:  # pragma: no cover - depends on torch build
        print(f"warning: use_deterministic_algorithms failed: {e}", file=sys.stderr)


def augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random translations (up to +-2 px), deterministic via gen."""
    n = xb.shape[0]
    pad = F.pad(xb, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    out = torch.empty_like(xb)
    for i in range(n):
        out[i] = pad[i, :, dy[i] : dy[i] + IMG, dx[i] : dx[i] + IMG]
    return out


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def train(model, xtr, ytr, xte, yte, epochs: int, batch: int, lr: float):
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt = torch.from_numpy(xtr)
    yt = torch.from_numpy(ytr)
    n = len(yt)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot, correct, loss_sum = 0, 0, 0.0
        for s in range(0, n, batch):
            bi = perm[s : s + batch]
            if len(bi) < 2:  # BatchNorm needs >1 sample
                continue
            xb = augment(xt[bi], gen)
            yb = yt[bi]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(bi)
            correct += (out.argmax(1) == yb).sum().item()
            tot += len(bi)
        sched.step()
        if ep % 5 == 4 or ep == epochs - 1:
            acc = (torch_logits(model, xte).argmax(1) == yte).mean()
            print(
                f"epoch {ep + 1:3d}  loss {loss_sum / tot:.4f}  train acc {correct / tot:.4f}"
                f"  test acc (torch) {acc:.4f}"
            )


# --------------------------------------------------------------------------- export / outputs


def export_onnx(model: nn.Module, path: Path) -> None:
    model.eval()
    dummy = torch.zeros(1, 1, IMG, IMG)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)


def write_labels(path: Path, labels: np.ndarray) -> None:
    path.write_text("".join(f"{int(v)}\n" for v in labels))


def write_data(out: Path, calib, test) -> None:
    data = out / "data"
    images = data / "images"
    images.mkdir(parents=True, exist_ok=True)
    (xc, yc), (xte, yte) = calib, test
    np.save(data / "calib.npy", np.ascontiguousarray(xc, dtype=np.float32))
    np.save(data / "test.npy", np.ascontiguousarray(xte, dtype=np.float32))
    write_labels(data / "calib_labels.txt", yc)
    write_labels(data / "test_labels.txt", yte)
    # remove stale PNGs from earlier runs so the folder matches ImageList.txt
    for p in images.glob("test_*.png"):
        p.unlink()
    names = []
    for i in range(N_PNG):
        name = f"test_{i:03d}.png"
        u8 = np.round(np.clip(xte[i, 0] * 255.0, 0, 255)).astype(np.uint8)
        if not cv2.imwrite(str(images / name), u8):
            raise RuntimeError(f"cv2.imwrite failed for {name}")
        names.append(name)
    (images / "ImageList.txt").write_text("".join(n + "\n" for n in names))
    write_labels(images / "images_labels.txt", yte[:N_PNG])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)

    set_determinism()
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)

    (xtr, ytr), calib, (xte, yte) = make_splits()
    print(f"train {len(ytr)}  calib {len(calib[1])}  test {len(yte)}")

    model = DigitsNet()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}")
    train(model, xtr, ytr, xte, yte, args.epochs, args.batch_size, args.lr)

    model.eval()
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path)

    ref = torch_logits(model, xte)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": xte})[0]
    diff = float(np.abs(got - ref).max())
    print(f"max |onnxruntime - torch| on test set: {diff:.3g}")
    if diff > 1e-4:
        raise SystemExit(f"ONNX output mismatch: {diff} > 1e-4")

    top1 = float((got.argmax(1) == yte).mean())
    print(f"FP32 top-1 (onnxruntime, {len(yte)} test samples): {top1:.4f}")
    (out / "fp32_top1.txt").write_text(f"{top1:.4f}\n")

    write_data(out, calib, (xte, yte))
    ops = sorted({n.op_type for n in onnx.load(str(onnx_path)).graph.node})
    print(f"ONNX ops: {ops}")
    print(f"wrote outputs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
