#!/usr/bin/env python3
"""Train the tiny vision transformer behind the export-style test fixtures and write it to ONNX.

The model (``tests/fixtures/tiny_vit.onnx``) reads the digits example's input, [N, 1, 32, 32], and
is written node by node with onnx.helper in the style that torch's TorchScript exporter writes at
opset 13 without fused ops: LayerNorm decomposed into ReduceMean/Sub/Pow/Add/Sqrt/Div/Mul/Add,
HardSwish decomposed into Add/Clip/Mul/Div, self-attention as MatMul/Transpose/Div/Softmax,
flattening and head splitting through Shape -> Gather/Slice -> Unsqueeze -> Concat -> Reshape, and
Linear layers on 3-D inputs as MatMul with a transposed weight initializer plus Add.
``tests/fixtures/export_styles.py`` derives the other styles from it at test time.

torch is needed only here, in its own environment, e.g.:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch onnx onnxruntime scikit-learn numpy opencv-python-headless
    /tmp/torchvenv/bin/python examples/export_styles/train.py

The data splits are the digits example's (examples/digits/train.py), so the committed
examples/digits/data/test.npy is this model's held-out test set too.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
SEED = 0
DIM, HEADS, PATCH, IMG = 32, 2, 4, 32
TOKENS = (IMG // PATCH) ** 2
OPSET = 13
EPS = 1e-5


def _digits_train_module():
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples" / "digits" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyViT(nn.Module):
    """Patch embedding, one pre-norm transformer block (2-head attention, HardSwish MLP), mean pool."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(1, DIM, PATCH, stride=PATCH)
        self.pos = nn.Parameter(torch.randn(1, TOKENS, DIM) * 0.02)
        self.ln1 = nn.LayerNorm(DIM, eps=EPS)
        self.q, self.k, self.v, self.proj = (nn.Linear(DIM, DIM) for _ in range(4))
        self.ln2 = nn.LayerNorm(DIM, eps=EPS)
        self.fc1 = nn.Linear(DIM, 2 * DIM)
        self.fc2 = nn.Linear(2 * DIM, DIM)
        self.ln3 = nn.LayerNorm(DIM, eps=EPS)
        self.head = nn.Linear(DIM, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        n, t, d = x.shape
        h = self.ln1(x)

        def heads(y):
            return y.reshape(n, t, HEADS, d // HEADS).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // HEADS), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(n, t, d))
        x = x + self.fc2(F.hardswish(self.fc1(self.ln2(x))))
        return self.head(self.ln3(x).mean(1))


def train(model, xtr, ytr, xte, yte, augment, epochs: int, lr: float) -> None:
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        for s in range(0, len(yt), 32):
            bi = perm[s : s + 32]
            loss = F.cross_entropy(model(augment(xt[bi], gen)), yt[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if ep % 10 == 9 or ep == epochs - 1:
            model.eval()
            with torch.no_grad():
                acc = (model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
            print(f"epoch {ep + 1:3d}  loss {loss.item():.4f}  test acc (torch) {acc:.4f}")


# --------------------------------------------------------------------------- ONNX, node by node


class Builder:
    def __init__(self):
        self.nodes, self.inits = [], []

    def init(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs, prefix: str, outputs: int = 1, **attrs):
        """A node named ``/<prefix>`` with outputs ``/<prefix>_output_<i>``."""
        name = f"/{prefix}"
        outs = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def layer_norm(self, x: str, prefix: str, gamma, beta) -> str:
        mean = self.op("ReduceMean", [x], f"{prefix}/mean", axes=[-1])
        centred = self.op("Sub", [x, mean], f"{prefix}/sub")
        square = self.op(
            "Pow", [centred, self.init(f"{prefix}.two", np.array(2.0, np.float32))], f"{prefix}/pow"
        )
        var = self.op("ReduceMean", [square], f"{prefix}/var", axes=[-1])
        var_eps = self.op(
            "Add", [var, self.init(f"{prefix}.eps", np.array(EPS, np.float32))], f"{prefix}/add_eps"
        )
        std = self.op("Sqrt", [var_eps], f"{prefix}/sqrt")
        normed = self.op("Div", [centred, std], f"{prefix}/div")
        scaled = self.op("Mul", [normed, self.init(f"{prefix}.weight", gamma)], f"{prefix}/mul")
        return self.op("Add", [scaled, self.init(f"{prefix}.bias", beta)], f"{prefix}/add")

    def linear3d(self, x: str, prefix: str, weight, bias) -> str:
        w = self.init(f"onnx::MatMul_{prefix}", np.ascontiguousarray(weight.T))
        y = self.op("MatMul", [x, w], f"{prefix}/MatMul")
        return self.op("Add", [self.init(f"{prefix}.bias", bias), y], f"{prefix}/Add")

    def hardswish(self, x: str, prefix: str) -> str:
        three = self.init(f"{prefix}.three", np.array(3.0, np.float32))
        shifted = self.op("Add", [x, three], f"{prefix}/add")
        zero = self.init(f"{prefix}.zero", np.array(0.0, np.float32))
        six = self.init(f"{prefix}.six", np.array(6.0, np.float32))
        clipped = self.op("Clip", [shifted, zero, six], f"{prefix}/clip")
        product = self.op("Mul", [x, clipped], f"{prefix}/mul")
        return self.op("Div", [product, six], f"{prefix}/div")

    def dynamic_shape(self, x: str, prefix: str, tail) -> str:
        """Shape(x) -> Gather(0) -> Unsqueeze -> Concat(batch, tail): a Reshape target with a dynamic batch."""
        shape = self.op("Shape", [x], f"{prefix}/Shape")
        batch = self.op(
            "Gather",
            [shape, self.init(f"{prefix}.index0", np.array(0, np.int64))],
            f"{prefix}/Gather",
            axis=0,
        )
        batch1 = self.op(
            "Unsqueeze", [batch, self.init(f"{prefix}.axes0", np.array([0], np.int64))], f"{prefix}/Unsqueeze"
        )
        return self.op(
            "Concat",
            [batch1, self.init(f"{prefix}.tail", np.array(tail, np.int64))],
            f"{prefix}/Concat",
            axis=0,
        )


def to_onnx(model: TinyViT) -> onnx.ModelProto:
    p = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    b = Builder()
    x = b.op(
        "Conv",
        ["input", b.init("patch.weight", p["patch.weight"]), b.init("patch.bias", p["patch.bias"])],
        "patch/Conv",
        kernel_shape=[PATCH, PATCH],
        strides=[PATCH, PATCH],
    )
    shape = b.op("Shape", [x], "flatten/Shape")
    nc = b.op(
        "Slice",
        [
            shape,
            b.init("flatten.starts", np.array([0], np.int64)),
            b.init("flatten.ends", np.array([2], np.int64)),
        ],
        "flatten/Slice",
    )
    target = b.op(
        "Concat", [nc, b.init("flatten.minus1", np.array([-1], np.int64))], "flatten/Concat", axis=0
    )
    x = b.op("Reshape", [x, target], "flatten/Reshape")
    x = b.op("Transpose", [x], "flatten/Transpose", perm=[0, 2, 1])
    x = b.op("Add", [x, b.init("pos", p["pos"])], "pos/Add")

    h = b.layer_norm(x, "ln1", p["ln1.weight"], p["ln1.bias"])
    split = b.dynamic_shape(h, "attn/split", [-1, HEADS, DIM // HEADS])
    q = b.op(
        "Transpose",
        [b.op("Reshape", [b.linear3d(h, "attn/q", p["q.weight"], p["q.bias"]), split], "attn/q/Reshape")],
        "attn/q/Transpose",
        perm=[0, 2, 1, 3],
    )
    k = b.op(
        "Transpose",
        [b.op("Reshape", [b.linear3d(h, "attn/k", p["k.weight"], p["k.bias"]), split], "attn/k/Reshape")],
        "attn/k/Transpose",
        perm=[0, 2, 3, 1],
    )
    v = b.op(
        "Transpose",
        [b.op("Reshape", [b.linear3d(h, "attn/v", p["v.weight"], p["v.bias"]), split], "attn/v/Reshape")],
        "attn/v/Transpose",
        perm=[0, 2, 1, 3],
    )
    scores = b.op("MatMul", [q, k], "attn/scores/MatMul")
    scale = b.init("attn.scale", np.array(math.sqrt(DIM // HEADS), np.float32))
    scores = b.op("Div", [scores, scale], "attn/scores/Div")
    att = b.op("Softmax", [scores], "attn/Softmax", axis=-1)
    o = b.op(
        "Transpose",
        [b.op("MatMul", [att, v], "attn/context/MatMul")],
        "attn/context/Transpose",
        perm=[0, 2, 1, 3],
    )
    o = b.op("Reshape", [o, b.dynamic_shape(o, "attn/merge", [-1, DIM])], "attn/merge/Reshape")
    x = b.op("Add", [x, b.linear3d(o, "attn/proj", p["proj.weight"], p["proj.bias"])], "attn/residual")

    h = b.layer_norm(x, "ln2", p["ln2.weight"], p["ln2.bias"])
    h = b.hardswish(b.linear3d(h, "mlp/fc1", p["fc1.weight"], p["fc1.bias"]), "mlp/hardswish")
    x = b.op("Add", [x, b.linear3d(h, "mlp/fc2", p["fc2.weight"], p["fc2.bias"])], "mlp/residual")

    x = b.op(
        "ReduceMean", [b.layer_norm(x, "ln3", p["ln3.weight"], p["ln3.bias"])], "pool", axes=[1], keepdims=0
    )
    gemm = helper.make_node(
        "Gemm",
        [x, b.init("head.weight", p["head.weight"]), b.init("head.bias", p["head.bias"])],
        ["logits"],
        name="/head/Gemm",
        transB=1,
    )
    graph = helper.make_graph(
        [*b.nodes, gemm],
        "tiny_vit",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, IMG, IMG])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        b.inits,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pytorch"
    )
    onnx_model.ir_version = 7
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=ROOT / "tests" / "fixtures" / "tiny_vit.onnx")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)

    digits = _digits_train_module()
    digits.set_determinism()
    (xtr, ytr), _, (xte, yte) = digits.make_splits()
    model = TinyViT()
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")
    train(model, xtr, ytr, xte, yte, digits.augment, args.epochs, args.lr)
    model.eval()

    onnx_model = to_onnx(model)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": xte})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(xte)).numpy()
    diff = float(np.abs(logits - ref).max())
    assert diff < 1e-3, f"ONNX and torch logits differ by {diff}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, args.output)
    top1 = float((logits.argmax(1) == yte).mean())
    print(
        f"wrote {args.output} ({args.output.stat().st_size} bytes); FP32 top-1 (onnxruntime) {top1:.4f}; "
        f"max |onnx - torch| {diff:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
