"""Per-layer sensitivity analysis on a few samples (``search.data_limit``, 5 to 10 is enough).

* **isolated**: quantize one node at a time, everything else FP32, and measure the error of the
  model outputs against FP32: SNR in dB, mean cosine similarity and mean squared L2 distance (the
  older tools' "square distance");
* **cumulative**: in the fully quantized model, the error of each node's own output tensor against
  the same tensor of the FP32 model (the older tools' feature difference), from one run of each.

Nodes are ranked by isolated SNR, lowest first: the first names of the ranking are the ones to keep
in FP32.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from autoquant.common import ProgressFn
from autoquant.config import QuantizationConfig
from autoquant.engine._quantize import quantize_model
from autoquant.engine._thresholds import TensorRange
from autoquant.engine.graph import ModelGraph, session_for


@dataclass(frozen=True)
class Difference:
    """How far outputs are from the FP32 reference."""

    snr_db: float
    cosine: float
    l2: float


def difference(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Difference:
    """SNR (dB, over everything), mean per-sample cosine and mean per-sample squared L2 distance.

    Every array has the samples on its first axis; a sample's outputs are flattened and joined.
    """
    ref = np.concatenate([np.asarray(r, np.float64).reshape(len(r), -1) for r in reference], axis=1)
    out = np.concatenate([np.asarray(o, np.float64).reshape(len(o), -1) for o in outputs], axis=1)
    error = ((ref - out) ** 2).sum(axis=1)
    signal = (ref**2).sum()
    noise = error.sum()
    snr = float("inf") if noise == 0 else (float("-inf") if signal == 0 else 10 * np.log10(signal / noise))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    dots = (ref * out).sum(axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), np.where(error == 0, 1.0, 0.0))
    return Difference(snr_db=float(snr), cosine=float(cosine.mean()), l2=float(error.mean()))


@dataclass(frozen=True)
class LayerSensitivity:
    """Sensitivity of one node."""

    node: str
    op_type: str
    isolated: Difference
    cumulative: Difference | None


@dataclass(frozen=True)
class Sensitivity:
    """Every quantizable node, most sensitive first."""

    layers: tuple[LayerSensitivity, ...]
    samples: int

    def ranking(self) -> list[str]:
        """Node names, most sensitive first (the FP32 blacklist takes a prefix of it)."""
        return [layer.node for layer in self.layers]

    def to_json(self) -> str:
        """The ranking as JSON: ``{"samples": n, "layers": [{node, op_type, isolated, cumulative}, ...]}``."""
        return json.dumps({"samples": self.samples, "layers": [asdict(x) for x in self.layers]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        """Read what `to_json` wrote."""
        data = json.loads(text)
        layers = tuple(
            LayerSensitivity(
                node=x["node"],
                op_type=x["op_type"],
                isolated=Difference(**x["isolated"]),
                cumulative=Difference(**x["cumulative"]) if x["cumulative"] else None,
            )
            for x in data["layers"]
        )
        return cls(layers=layers, samples=int(data["samples"]))


def run_outputs(
    model: onnx.ModelProto | str, feeds: Sequence[dict[str, np.ndarray]], names: list[str]
) -> list[np.ndarray]:
    """Run ``model`` over ``feeds`` and join the ``names`` outputs along the sample axis."""
    session = session_for(model)
    parts = [session.run(names, feed) for feed in feeds]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]


def _with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in present)
    return model


def layer_outputs(graph: ModelGraph) -> dict[str, str]:
    """Node name -> its first float output tensor (nodes without one are left out)."""
    return {n.name: n.outputs[0] for n in graph.nodes if n.outputs}


def cumulative_differences(
    graph: ModelGraph, quantized: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, Difference]:
    """Per node, the difference between its output tensor in ``quantized`` and in the FP32 model.

    Nodes whose output the quantizer removed (a Relu folded into uint8 activations) are left out;
    a Conv whose Relu was folded into it is compared after the Relu.
    """
    produced = {t for node in quantized.graph.node for t in node.output}
    # Where uint8 activations fold a Relu or Clip into its producer, the producer's feature is the
    # activation's output, the tensor both models compute.
    folded = {n.inputs[0]: n.outputs[0] for n in graph.nodes if n.op_type in ("Relu", "Clip") and n.outputs}
    tensors = {}
    for node, tensor in layer_outputs(graph).items():
        tensor = tensor if tensor in produced else folded.get(tensor, "")
        if tensor in produced:
            tensors[node] = tensor
    names = list(dict.fromkeys(tensors.values()))
    fp32 = dict(zip(names, run_outputs(_with_outputs(graph.load(), names), feeds, names), strict=True))
    int8 = dict(zip(names, run_outputs(_with_outputs(quantized, names), feeds, names), strict=True))
    return {node: difference([fp32[t]], [int8[t]]) for node, t in tensors.items()}


def analyze(
    graph: ModelGraph,
    ranges: dict[str, TensorRange],
    config: QuantizationConfig,
    feeds: Sequence[dict[str, np.ndarray]],
    output_names: Sequence[str],
    progress: ProgressFn | None = None,
) -> Sensitivity:
    """Rank the quantizable nodes of ``graph`` by how much quantizing each alone hurts the outputs.

    Args:
        graph: The prepared model.
        ranges: Activation ranges for ``config``.
        config: The quantization choices to analyse.
        feeds: The samples (``search.data_limit`` of them), as model feeds.
        output_names: Model outputs to compare.
        progress: Called with 1 after each node.
    """
    names = list(output_names)
    reference = run_outputs(str(graph.prepared_path), feeds, names)
    full = quantize_model(graph, ranges, config)
    cumulative = cumulative_differences(graph, full.model, feeds)
    layers = []
    for node in graph.nodes:
        isolated = quantize_model(graph, ranges, config, only=[node.name])
        layers.append(
            LayerSensitivity(
                node=node.name,
                op_type=node.op_type,
                isolated=difference(reference, run_outputs(isolated.model, feeds, names)),
                cumulative=cumulative.get(node.name),
            )
        )
        if progress is not None:
            progress(1)
    # Lowest isolated SNR first; equal SNRs (e.g. exact nodes) by the cumulative error.
    layers.sort(key=lambda x: (x.isolated.snr_db, -(x.cumulative.l2 if x.cumulative else 0.0)))
    return Sensitivity(layers=tuple(layers), samples=sum(len(next(iter(f.values()))) for f in feeds))
