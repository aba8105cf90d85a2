"""The FP32 reference outputs of a study's test set: computed once, kept in the cache folder, and
each output's batch axis."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from autoquant.common import ProgressFn
from autoquant.data import Batch, DataReader
from autoquant.engine.graph import ModelGraph
from autoquant.evaluation._reference import StoredArray, read_reference, write_reference
from autoquant.evaluation._sessions import find_batch_axes, run_batch, session_or_error

logger = logging.getLogger(__name__)


def reference_folder(
    cache_dir: Path | None, graph: ModelGraph, data_fingerprint: str, samples: int | None, names: list[str]
) -> Path | None:
    """The cache folder of the FP32 outputs, keyed by the model, the test data, the sample count
    and the evaluated outputs; None without a cache folder."""
    key = hashlib.sha256(f"{graph.model_hash}|{data_fingerprint}|{samples}|{names}".encode()).hexdigest()[:24]
    return Path(cache_dir) / f"fp32-{key}" if cache_dir is not None else None


class ReferenceOutputs:
    """The FP32 model's outputs over the test set (one array per output, samples first) and each
    output's batch axis, each found once.

    Args:
        graph: The prepared model.
        reader: The test set.
        batches: The test set's batches, in the evaluation's batch size.
        output_names: The evaluated outputs.
        configured_axes: ``model.output_batch_axes``.
        folder: Where the outputs are stored (`reference_folder`), or None to keep them in memory.
    """

    def __init__(
        self,
        graph: ModelGraph,
        reader: DataReader,
        batches: Callable[[], Iterator[Batch]],
        output_names: list[str],
        configured_axes: dict[str, int],
        folder: Path | None,
    ) -> None:
        self.graph, self.reader, self.output_names = graph, reader, output_names
        self._batches, self._configured, self._folder = batches, configured_axes, folder
        self._arrays: Sequence[np.ndarray | StoredArray] | None = None
        self._axes: list[int] | None = None

    def arrays(
        self, progress: ProgressFn | None = None, threads: int = 0
    ) -> Sequence[np.ndarray | StoredArray]:
        """The outputs: with a folder, stored there a batch at a time and read back by slices
        (`StoredArray`), so they never sit in memory whole. ``threads``: onnxruntime's intra-op
        threads for computing them (0: its default)."""
        if self._arrays is not None:
            return self._arrays
        cached = self._read_cache()
        if cached is not None:
            self._arrays = cached
            logger.info("FP32 reference outputs reused from the cache (%s)", self._folder.name)
            return self._arrays
        session = session_or_error(self.graph.prepared_path, "FP32 model", threads)
        axes = self.batch_axes(session)

        def batches() -> Iterator[list[np.ndarray]]:
            for batch in self._batches():
                yield run_batch(session, self.output_names, batch, axes)
                if progress is not None:
                    progress(len(batch.sample_ids))

        if self._folder is None:
            parts = list(zip(*batches(), strict=True))
            self._arrays = [np.concatenate(p) for p in parts]
        else:
            self._arrays = write_reference(self._folder, batches(), axes)
        return self._arrays

    def batch_axes(self, session: ort.InferenceSession | None = None) -> list[int]:
        """The batch axis of each evaluated output (``model.output_batch_axes``, else found).

        Raises:
            ConfigError: An output's batch axis cannot be told (see `find_batch_axes`).
        """
        if self._axes is None:
            fixed = self.graph.batch_size(2) != 2
            probe = None if fixed else next(self.reader.batches(2))
            if probe is not None and len(probe.sample_ids) < 2:
                probe = None
            session = session or session_or_error(self.graph.prepared_path, "FP32 model")
            self._axes = find_batch_axes(session, self.output_names, probe, self._configured)
        return self._axes

    def _read_cache(self) -> list[StoredArray] | None:
        """The cached FP32 outputs, or None when absent, incomplete or made for other batch axes."""
        if self._folder is None:
            return None
        stored = read_reference(self._folder)
        if stored is None or len(stored[0]) != len(self.output_names):
            return None
        arrays, axes = stored
        if any(self._configured.get(n, a) != a for n, a in zip(self.output_names, axes, strict=True)):
            return None  # the config now names other batch axes: run again
        self._axes = axes
        return arrays
