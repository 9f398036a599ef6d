"""The ONNX Runtime user tower: provider choice, tuned session, tokenizer.

Provider choice is quiet on purpose: `onnxruntime-gpu` on a machine without a
usable GPU (or without the CUDA/cuDNN libraries) logs a loud library error when
the CUDA provider is requested blindly, then falls back. So the CUDA provider is
requested only when the installed build offers it AND the CUDA driver reports a
device, and the session is then asked which providers it really got.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 without a driver), asked without importing torch."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except (AttributeError, OSError):
            return 0
    return 0


def select_providers(device: Device, available: list[str] | None = None,
                     gpus: int | None = None) -> list[str]:
    """Execution providers to request, best first."""
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    if device == "cpu" or CUDA not in available:
        if device == "cuda":
            logger.warning("MEKB_SERVING_DEVICE=cuda but this onnxruntime build has no CUDA "
                           "provider (install the `gpu` extra); using CPU")
        return [CPU]
    gpus = cuda_device_count() if gpus is None else gpus
    if gpus == 0:
        if device == "cuda":
            logger.warning("MEKB_SERVING_DEVICE=cuda but no usable GPU was found; using CPU")
        return [CPU]
    return [CUDA, CPU]


def session_options(intra_op_threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Full graph optimisation (constant folding, attention/GELU/LayerNorm fusion).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One run at a time (the batcher serialises runs): parallelism goes inside each op.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if intra_op_threads > 0:
        opts.intra_op_num_threads = intra_op_threads
    opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    # Idle intra-op threads would otherwise spin for a while after every run, taking the
    # cores the event loop needs to answer cache hits; waking them costs microseconds
    # against runs of tens of milliseconds.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxEncoder:
    """Text -> user embedding with one InferenceSession and the bundle's tokenizer."""

    def __init__(
        self,
        model_dir: Path,
        max_tokens: int,
        *,
        device: Device = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
        requested = select_providers(device)
        # Quiet while creating: a CUDA provider that cannot start logs errors, then we
        # report the outcome once ourselves. (onnxruntime has a setter but no getter for
        # the default logger: afterwards it is left at "error", which drops only the
        # graph-optimiser warnings that are noise in a server log.)
        ort.set_default_logger_severity(4 if CUDA in requested else 3)
        try:
            self.session = ort.InferenceSession(
                str(model_dir / "user_tower.onnx"),
                sess_options=session_options(intra_op_threads),
                providers=requested,
            )
        finally:
            ort.set_default_logger_severity(3)
        self.providers = list(self.session.get_providers())
        if CUDA in requested and CUDA not in self.providers:
            logger.warning("CUDA provider could not start (libraries missing?); using CPU")
        self.provider = self.providers[0]
        self.output_name = self.session.get_outputs()[0].name
        last = self.session.get_outputs()[0].shape[-1]
        self.dim = int(last) if isinstance(last, int) else 0  # 0: symbolic in the graph

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_tokens, padding=True,
            return_tensors="np",
        )
        return (
            np.ascontiguousarray(enc["input_ids"], dtype=np.int64),
            np.ascontiguousarray(enc["attention_mask"], dtype=np.int64),
        )

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The raw ONNX Runtime call (what the benchmark compares the service against)."""
        out = self.session.run(
            [self.output_name], {"input_ids": input_ids, "attention_mask": attention_mask}
        )[0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, float]:
        """Embeddings of `texts` and the session.run seconds it took."""
        ids, mask = self.tokenize(texts)
        start = time.perf_counter()
        out = self.run(ids, mask)
        return out, time.perf_counter() - start

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 4)) -> float:
        """First runs allocate arenas and pick kernels: do them before taking traffic."""
        start = time.perf_counter()
        long_text = " ".join(["warm"] * self.max_tokens)
        for n in batch_sizes:
            self.encode([long_text] * n)
            self.encode(["warm"] * n)
        return time.perf_counter() - start


def default_threads() -> int:
    """Physical-ish core count for logging (ORT picks its own when 0 is configured)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
