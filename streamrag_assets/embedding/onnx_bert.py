"""A BERT encoder (the transformer of sentence-transformers' MiniLM models and their kind) written straight into an
ONNX graph from the model's safetensors weights: the file `Embedder` runs, made without torch.

torch's exporter traces the model; this builds the same computation — embeddings, then per layer self-attention and
the feed-forward block, each followed by a residual add and LayerNorm — from the `BertModel` configuration, with
operators of ONNX opset 17, and reads the weights with safetensors' numpy API. Inputs and output are those of the
traced file (``input_ids``, ``attention_mask``, ``token_type_ids`` → ``last_hidden_state``), so pooling and the int8
quantisation are unchanged; a test holds its output to the torch model's (`test_embedder.py`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def exportable(model_dir: Path) -> bool:
    """Whether the directory's transformer is a BERT with absolute positions and GELU, in safetensors."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        config.get("model_type") == "bert"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act") == "gelu"
        and (model_dir / "model.safetensors").exists()
    )


class _Graph:
    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, key: str, transpose: bool = False) -> str:
        value = self.weights[key]
        return self.const(key, np.ascontiguousarray(value.T if transpose else value).astype(np.float32))

    def op(self, kind: str, inputs: list[str], **attributes: Any) -> str:
        self._count += 1
        output = f"{kind.lower()}_{self._count}"
        self.nodes.append(helper.make_node(kind, inputs, [output], **attributes))
        return output

    def linear(self, x: str, prefix: str) -> str:
        """x @ W.T + b, as torch's Linear (its weight is stored [out, in])."""
        return self.op(
            "Add", [self.op("MatMul", [x, self.weight(f"{prefix}.weight", True)]), self.weight(f"{prefix}.bias")]
        )

    def heads(self, x: str, prefix: str, split: str, perm: list[int]) -> str:
        """A projection of ``x`` split into attention heads, its axes in ``perm`` order."""
        return self.op("Transpose", [self.op("Reshape", [self.linear(x, prefix), split])], perm=perm)

    def layer_norm(self, x: str, prefix: str, epsilon: float) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")],
            axis=-1,
            epsilon=epsilon,
        )


def build(model_dir: Path) -> onnx.ModelProto:
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    weights = {key.removeprefix("bert."): value for key, value in load_file(model_dir / "model.safetensors").items()}
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_size, eps = hidden // heads, float(config["layer_norm_eps"])
    g = _Graph(weights)

    # Embeddings: word + position (0 .. tokens - 1) + token type, then LayerNorm.
    tokens = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("one", np.array(1, dtype=np.int64))], axis=0)
    positions = g.op("Range", [g.const("zero", np.array(0, dtype=np.int64)), tokens, "one"])
    x = g.op("Gather", [g.weight("embeddings.word_embeddings.weight"), "input_ids"])
    x = g.op("Add", [x, g.op("Gather", [g.weight("embeddings.position_embeddings.weight"), positions])])
    x = g.op("Add", [x, g.op("Gather", [g.weight("embeddings.token_type_embeddings.weight"), "token_type_ids"])])
    x = g.layer_norm(x, "embeddings.LayerNorm", eps)

    # The attention mask as a bias on the scores: 0 where attended, the float's minimum where padded (as BERT does).
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    blocked = g.op("Sub", [g.const("one_f", np.array(1.0, dtype=np.float32)), mask])
    bias = g.op("Mul", [blocked, g.const("lowest", np.array(np.finfo(np.float32).min, dtype=np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const("axes_1_2", np.array([1, 2], dtype=np.int64))])
    split = g.const("split_heads", np.array([0, 0, heads, head_size], dtype=np.int64))
    merge = g.const("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    scale = g.const("scale", np.array(1 / math.sqrt(head_size), dtype=np.float32))
    half = g.const("half", np.array(0.5, dtype=np.float32))
    root2 = g.const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))

    for n in range(int(config["num_hidden_layers"])):
        layer = f"encoder.layer.{n}"

        query = g.heads(x, f"{layer}.attention.self.query", split, [0, 2, 1, 3])  # batch, head, token, size
        key = g.heads(x, f"{layer}.attention.self.key", split, [0, 2, 3, 1])  # batch, head, size, token
        value = g.heads(x, f"{layer}.attention.self.value", split, [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [query, key]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), value])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        attended = g.linear(context, f"{layer}.attention.output.dense")
        x = g.layer_norm(g.op("Add", [attended, x]), f"{layer}.attention.output.LayerNorm", eps)
        inner = g.linear(x, f"{layer}.intermediate.dense")
        gelu = g.op(
            "Mul", [g.op("Mul", [inner, half]), g.op("Add", ["one_f", g.op("Erf", [g.op("Div", [inner, root2])])])]
        )
        out = g.linear(gelu, f"{layer}.output.dense")
        x = g.layer_norm(g.op("Add", [out, x]), f"{layer}.output.LayerNorm", eps)

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    batch_tokens = ["batch", "tokens"]
    graph = helper.make_graph(
        g.nodes,
        "bert",
        [helper.make_tensor_value_info(name, TensorProto.INT64, batch_tokens) for name in INPUTS],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*batch_tokens, hidden])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def export(model_dir: Path, path: Path) -> None:
    """The model directory's BERT encoder as an ONNX file at ``path``."""
    onnx.save(build(model_dir), str(path))
