"""The int8 embedder ranks replayed edits as the float32 model does (real model, no servers)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from streamrag_assets.embedding.embedder import Embedder
from streamrag_tests.harness import gold_documents


def needs_torch() -> None:
    """The full-precision engines are the `torch` extra, which `make test` installs (CI always has it); an install
    without it (`make up`'s, or a Python torch has no CPU wheel for here) runs the int8 tests alone."""
    pytest.importorskip("sentence_transformers", reason="the full-precision engines need the torch extra")


@pytest.fixture(scope="module")
def int8() -> Embedder:
    return Embedder(threads=2, int8=True)


@pytest.fixture(scope="module")
def engines(int8) -> tuple[Embedder, Embedder]:
    needs_torch()
    return int8, Embedder(threads=2, backend="torch", bf16=False)


def test_int8_vectors_retrieve_what_float32_retrieves(engines) -> None:
    int8, float32 = engines
    docs = gold_documents(300)
    queries = [d["title"] for d in docs[:100]]
    reference = float32.embed(queries) @ float32.embed([d["text"] for d in docs]).T
    found = int8.embed(queries) @ int8.embed([d["text"] for d in docs]).T
    assert int8.model_name == "all-MiniLM-L6-v2:int8" and float32.model_name == "all-MiniLM-L6-v2"

    # Near-duplicate edits of one page tie, so compare what is found by its float32 similarity, not by id.
    top = np.argsort(-found, axis=1)[:, :10]
    held = np.take_along_axis(reference, top, axis=1).sum(1) / np.sort(reference, axis=1)[:, -10:].sum(1)
    assert held.mean() >= 0.98, f"int8's top ten hold {held.mean():.3f} of float32's similarity"

    titles = np.array([d["title"] for d in docs])

    def page_mrr(scores: np.ndarray) -> float:
        ranks = [
            int((titles[np.argsort(-row)] == query).nonzero()[0][0]) + 1
            for row, query in zip(scores, queries, strict=True)
        ]
        return float(np.mean(1 / np.array(ranks)))

    assert page_mrr(found) >= page_mrr(reference) - 0.03


def test_an_int8_vector_depends_on_its_text_alone(int8) -> None:
    """Dynamic quantisation scales a call's activations together; the embedder must not let batch mates leak in."""
    texts = [d["text"] for d in gold_documents(24)]
    together = int8.embed(texts)
    alone = np.vstack([int8.embed([t]) for t in texts[:6]])
    assert np.abs(together[:6] - alone).max() < 1e-6


def test_int8_model_is_prepared_once_and_shared(tmp_path) -> None:
    first = Embedder(threads=1, int8=True, cache_dir=tmp_path)
    vector = first.embed(["Talk page archived by a bot"])
    files = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert len(files) == 2 and any(f.endswith("-int8.onnx") for f in files)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.onnx")}
    second = Embedder(threads=1, int8=True, cache_dir=tmp_path)
    assert np.allclose(second.embed(["Talk page archived by a bot"]), vector)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.onnx")} == stamps
    assert abs(float(np.linalg.norm(vector[0])) - 1.0) < 1e-5


def test_int8_threads_embed_documents_at_once_with_the_same_vectors(int8) -> None:
    """Two threads each embed their own documents: every vector is the one a single thread makes, in call order."""
    single = Embedder(threads=1, int8=True)
    assert (int8.workers, single.workers) == (2, 1)
    texts = [d["text"] for d in gold_documents(40)]
    texts[7] = "Seven"  # lengths differ, so the calls finish out of order
    assert np.abs(int8.embed(texts) - single.embed(texts)).max() < 1e-6


def test_int8_embeds_without_torch_exactly_as_the_models_own_tokenizer_would(tmp_path) -> None:
    """A process that embeds with int8 (the API, the stream) loads neither torch nor sentence-transformers (~500 MiB
    a process); its vectors are exactly those of the transformers tokenizer feeding the same ONNX session."""
    texts = [d["text"] for d in gold_documents(40)] + [
        "",
        "  spaces around  ",
        "Zürich 北京市 ירושלים Łódź <script>alert(1)</script>",
        "long " * 400,  # truncated at the model's 256 tokens
    ]
    needs_torch()
    reference = Embedder(threads=1, int8=True)
    model = reference._load()  # the general path: sentence-transformers' model and its transformers tokenizer
    assert reference._onnx(model) is not None  # also prepares the int8 file, as the first start on a machine does
    expected = reference._onnx_encode(model, texts)

    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = (
        "import json, sys, numpy as np\n"
        "from streamrag_assets.embedding.embedder import Embedder\n"
        f"texts = json.loads(open({str(tmp_path / 'texts.json')!r}).read())\n"
        "embedder = Embedder(threads=1, int8=True)\n"
        f"np.save({str(tmp_path / 'vectors.npy')!r}, embedder.embed(texts))\n"
        "print(json.dumps({'name': embedder.model_name, 'dimension': embedder.dimension,\n"
        "    'loaded': [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"name": "all-MiniLM-L6-v2:int8", "dimension": 384, "loaded": []}
    assert np.array_equal(np.load(tmp_path / "vectors.npy"), expected)


def test_the_model_file_is_made_without_torch_and_computes_what_the_torch_model_does(tmp_path) -> None:
    """On a machine's first start the ONNX file is written straight from the safetensors weights (`onnx_bert`): no
    torch in the process, and its hidden states are those of the model torch runs."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "for name in ('torch', 'transformers', 'sentence_transformers'):\n"
        "    sys.modules[name] = None  # as if not installed: `make up` installs none of them\n"
        "from streamrag_assets.embedding.embedder import Embedder\n"
        f"Embedder(threads=1, int8=True, cache_dir=Path({str(tmp_path)!r})).embed(['Talk page archived by a bot'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if sys.modules.get(m)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", "the file was made and used without torch"
    assert len(list(tmp_path.glob("*.onnx"))) == 2

    needs_torch()
    import onnxruntime as ort
    import torch

    model = Embedder(threads=1, int8=False, backend="torch")._load()
    [made] = [p for p in tmp_path.glob("*.onnx") if "int8" not in p.name]
    texts = ["The History Wizard of Cambridge added a category", "a", "Die Linie 3 wurde verlängert " * 20]
    batch = model.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        expected = model[0].auto_model(**batch).last_hidden_state.numpy()
    session = ort.InferenceSession(str(made), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: batch[i.name].numpy() for i in session.get_inputs()})[0]
    attended = batch["attention_mask"].numpy()[..., None].astype(bool)
    assert np.abs(np.where(attended, got - expected, 0)).max() < 1e-4
