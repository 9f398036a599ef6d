"""The ONNX Runtime user towers, one per model kind: provider choice, tuned session.

Every kind's encoder has one interface (`UserEncoder`): `input_of(record)` turns a
replica record into that kind's per-user input on the event loop (cheap),
`encode(inputs)` runs one batch on the batcher's thread. `open_encoder` picks the
class registered for the manifest's `model_kind` (mekb/registry.py MODEL_KINDS):
  embedme      OnnxEncoder: titles -> `[SEP]` text -> tokenizer -> transformer tower
  entitygraph  EntityGraphEncoder: entity ids -> rows of the bundle's entities.npy ->
               attention tower (no tokenizer, no transformer: ~µs per user)

Provider choice is quiet on purpose: `onnxruntime-gpu` on a machine without a
usable GPU (or without the CUDA/cuDNN libraries) logs a loud library error when
the CUDA provider is requested blindly, then falls back. So the CUDA provider is
requested only when the installed build offers it AND the CUDA driver reports a
device, and the session is then asked which providers it really got.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from mekb.scoring import sequence_text
from serving.replica import Entity

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


class UserEncoder(Protocol):
    provider: str
    dim: int  # 0: symbolic in the graph
    batch_max: int  # the largest batch this kind wants per run (0: the service's)

    def input_of(self, record: Any) -> Any:
        """The per-user input of a serving.replica.UserRecord (None: the empty MeKB)."""
        ...

    def encode(self, inputs: list[Any]) -> tuple[np.ndarray, float]:
        """Embeddings [len(inputs), dim] and the session.run seconds."""
        ...

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 4)) -> float: ...


_ID, _SCORE = attrgetter("id"), attrgetter("score")


def _session(path: Path | bytes, device: Device, intra_op_threads: int,
             initializers: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    """An InferenceSession on the best available provider, and the providers it got
    (`path`: an .onnx file, or a serialized model; `initializers`: OrtValues replacing
    the model's initializers of those names, which the caller keeps alive)."""
    import onnxruntime as ort

    requested = select_providers(device)
    # Quiet while creating: a CUDA provider that cannot start logs errors, then we
    # report the outcome once ourselves. (onnxruntime has a setter but no getter for
    # the default logger: afterwards it is left at "error", which drops only the
    # graph-optimiser warnings that are noise in a server log.)
    ort.set_default_logger_severity(4 if CUDA in requested else 3)
    opts = session_options(intra_op_threads)
    for name, value in (initializers or {}).items():
        opts.add_initializer(name, value)
    try:
        session = ort.InferenceSession(path if isinstance(path, bytes) else str(path),
                                       sess_options=opts, providers=requested)
    finally:
        ort.set_default_logger_severity(3)
    providers = list(session.get_providers())
    if CUDA in requested and CUDA not in providers:
        logger.warning("CUDA provider could not start (libraries missing?); using CPU")
    return session, providers


class OnnxEncoder:
    """Text -> user embedding with one InferenceSession and the bundle's tokenizer."""

    batch_max = 0

    def __init__(
        self,
        model_dir: Path,
        max_tokens: int,
        *,
        device: Device = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        from transformers import AutoTokenizer

        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
        self.session, self.providers = _session(model_dir / "user_tower.onnx", device,
                                                intra_op_threads)
        self.provider = self.providers[0]
        self.output_name = self.session.get_outputs()[0].name
        last = self.session.get_outputs()[0].shape[-1]
        self.dim = int(last) if isinstance(last, int) else 0  # 0: symbolic in the graph

    def input_of(self, record: Any) -> str:
        return sequence_text(record.titles() if record is not None else [], self.max_tokens)

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


def with_entity_table(path: Path, width: int) -> bytes:
    """The user tower taking entity row ids: its first input (the gathered entity rows
    [B, L, F]) becomes row ids [B, L] and a Gather from the initializer `entity_table`
    (a 1-row placeholder here: the session gets the real table as an OrtValue, so the
    table is neither copied into a protobuf nor parsed again). The gather (a copy of
    L x F floats per user, the largest host cost) then runs in ONNX Runtime with the
    GIL released, in parallel with the event loop, and on a GPU the table stays on the
    device instead of crossing the bus per run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    rows = graph.input[0]
    graph.input.remove(rows)
    graph.input.insert(0, helper.make_tensor_value_info(
        "entity_rows", TensorProto.INT64, ["batch", "entities"]))
    graph.initializer.append(numpy_helper.from_array(
        np.zeros((1, width), dtype=np.float32), "entity_table"))
    graph.node.insert(0, helper.make_node("Gather", ["entity_table", "entity_rows"],
                                          [rows.name], axis=0))
    return bytes(model.SerializeToString())


def ort_value(array: np.ndarray) -> Any:
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy(array)


class EntityGraphEncoder:
    """MeKB entities -> user embedding: the bundle's per-entity rows (entities.npy: each
    entity's features, computed once per version at export; last row = zeros for
    padding) gathered by ONNX Runtime (`with_entity_table`), then the per-user
    attention tower.

    An entity the version's table has no row for (it appeared after the version was
    exported) is SKIPPED: it cannot be embedded without the title encoder, which serving
    does not run. The trainer's entity-vector cache gives it a row in the next version
    (trainer/online/kinds.py); `unknown_entities` counts what was skipped.

    The host side is most of a user's cost (docs/benchmarks.md, issue 16), so it has no
    Python frame per entity: ids are resolved with C-level `map` over the entities
    (serving.replica.Entity) of the whole batch at once, then padded with flat array
    operations, in groups of similar MeKB size (padding to the batch's longest MeKB
    would double the gathered rows)."""

    batch_max = 512  # ~10 ms per run on 2 cores: a request miss waits behind one at most
    # users per session.run: a group is padded to its longest MeKB only, and sorting the
    # batch by size keeps that close to each user's own (sizes are heavy-tailed)
    group = 64

    def __init__(self, model_dir: Path, *, device: Device = "auto",
                 intra_op_threads: int = 0) -> None:
        import json

        # One intra-op thread unless configured: a run is ~100 µs of work per group, and
        # a second thread on shared cores costs more in wake-ups and preemption than it
        # gains while taking the core the event loop needs (docs/benchmarks.md).
        table = np.ascontiguousarray(
            np.load(model_dir / "entities.npy", allow_pickle=False), dtype=np.float32)
        ids = json.loads((model_dir / "entities.json").read_text(encoding="utf-8"))["entity_ids"]
        if table.ndim != 2 or table.shape[0] != len(ids) + 1:
            raise ValueError(f"entities.npy {table.shape} does not hold "
                             f"{len(ids)} entities + the padding row")
        # the session reads the table from this buffer: both kept alive with the encoder
        self._table = (table, ort_value(table))
        self.session, self.providers = _session(
            with_entity_table(model_dir / "user_tower.onnx", table.shape[1]), device,
            intra_op_threads or 1, {"entity_table": self._table[1]})
        self.provider = self.providers[0]
        self.row = {str(e): i for i, e in enumerate(ids)}
        self.pad = len(ids)
        # inputs: [row ids (the gathered rows in the bundle's graph), MeKBScores, mask]
        # (trainer/entitygraph/export.py)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        last = self.session.get_outputs()[0].shape[-1]
        self.dim = int(last) if isinstance(last, int) else 0
        self.unknown_entities = 0

    def input_of(self, record: Any) -> list[Entity]:
        """The record's entities as they are: ids are resolved for the whole batch at
        once in `encode` (per user, even two small lists cost more than the lookups)."""
        return record.entities if record is not None else []

    def run(self, rows: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.input_names, (rows, scores, mask), strict=True))
        out = self.session.run([self.output_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, inputs: list[list[Entity]]) -> tuple[np.ndarray, float]:
        """Embeddings in input order, `group` users of similar MeKB size per run."""
        n = len(inputs)
        sizes = np.fromiter(map(len, inputs), dtype=np.int64, count=n)
        order = np.argsort(sizes, kind="stable")
        total = int(sizes.sum())
        # one pass of C-level map over the batch's entities (serving.replica.Entity):
        # rows (-1 = not in the table) and scores
        flat = list(chain.from_iterable([inputs[i] for i in order]))
        row_of: Callable[..., Any] = self.row.get
        flat_rows = np.fromiter(map(row_of, map(_ID, flat), repeat(-1, total)),
                                dtype=np.int64, count=total)
        flat_scores = np.fromiter(map(_SCORE, flat), dtype=np.float32, count=total)
        user = np.repeat(np.arange(n), sizes[order])
        known = flat_rows >= 0
        if not known.all():
            self.unknown_entities += int(total - known.sum())
            user, flat_rows, flat_scores = user[known], flat_rows[known], flat_scores[known]
        lengths = np.bincount(user, minlength=n)
        ends = np.cumsum(lengths)
        pos = np.arange(len(user)) - (ends - lengths)[user]
        out: np.ndarray | None = None
        run_s = 0.0
        for lo in range(0, n, self.group):
            hi = min(n, lo + self.group)
            a, b = int(ends[lo] - lengths[lo]), int(ends[hi - 1])
            width = max(1, int(lengths[lo:hi].max()))
            rows = np.full((hi - lo, width), self.pad, dtype=np.int64)
            scores = np.zeros((hi - lo, width), dtype=np.float32)
            at = (user[a:b] - lo, pos[a:b])
            rows[at] = flat_rows[a:b]
            scores[at] = flat_scores[a:b]
            mask = (np.arange(width) < lengths[lo:hi, None]).astype(np.float32)
            t0 = time.perf_counter()
            emb = self.run(rows, scores, mask)
            run_s += time.perf_counter() - t0
            if out is None:
                out = np.empty((n, emb.shape[1]), dtype=np.float32)
            out[order[lo:hi]] = emb
        return (out if out is not None else np.zeros((0, self.dim), dtype=np.float32)), run_s

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 4)) -> float:
        start = time.perf_counter()
        ids = list(self.row)[:64]
        full = [Entity(e, score=1.0 / max(1, len(ids))) for e in ids]
        for n in (*batch_sizes, self.batch_max):
            self.encode([full] * n)
        return time.perf_counter() - start


EncoderFactory = Callable[[Path, dict[str, Any], Device, int], UserEncoder]

_ENCODERS: dict[str, EncoderFactory] = {
    "embedme": lambda path, manifest, device, threads: OnnxEncoder(
        path, int(manifest["max_tokens"]), device=device, intra_op_threads=threads),
    "entitygraph": lambda path, manifest, device, threads: EntityGraphEncoder(
        path, device=device, intra_op_threads=threads),
}


# What each kind's loader imports on first use. A server imports these for every kind
# its registry holds before it loads its first model (ModelManager.watch), so that a
# later switch to another kind imports nothing under load: an import runs Python for
# tens to hundreds of milliseconds (transformers pulls in torch) while holding the GIL
# against the event loop that answers cache hits.
_IMPORTS: dict[str, tuple[str, ...]] = {
    "embedme": ("onnxruntime", "tokenizers", "transformers.tokenization_utils_fast",
                "transformers.models.auto.tokenization_auto"),
    "entitygraph": ("onnxruntime", "onnx", "onnx.helper", "onnx.numpy_helper"),
}


def register_encoder(model_kind: str, factory: EncoderFactory,
                     imports: tuple[str, ...] = ()) -> None:
    _ENCODERS[model_kind] = factory
    _IMPORTS[model_kind] = imports


def import_kinds(model_kinds: Iterable[str]) -> list[str]:
    """Import what the loaders of `model_kinds` need (see _IMPORTS); the modules done."""
    done = []
    for module in dict.fromkeys(m for kind in model_kinds for m in _IMPORTS.get(kind, ())):
        importlib.import_module(module)
        done.append(module)
    return done


def encoder_kinds() -> list[str]:
    return sorted(_ENCODERS)


def open_encoder(model_kind: str, model_dir: Path, manifest: dict[str, Any], *,
                 device: Device = "auto", intra_op_threads: int = 0) -> UserEncoder:
    """The user encoder of a bundle, by its manifest's model kind."""
    factory = _ENCODERS.get(model_kind)
    if factory is None:
        raise ValueError(f"no serving encoder for model kind {model_kind!r} "
                         f"(known: {', '.join(encoder_kinds())})")
    return factory(Path(model_dir), manifest, device, intra_op_threads)


def default_threads() -> int:
    """Physical-ish core count for logging (ORT picks its own when 0 is configured)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
