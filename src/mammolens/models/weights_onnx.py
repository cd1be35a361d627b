"""Weights of a PyTorch model exported to ONNX, read back under the module names they had.

The exporter keeps named parameters as initializers, but a linear layer's weight becomes an
anonymous, transposed MatMul operand (``onnx::MatMul_1966``) and constants folded from parameters
lose their names too. The MatMul node's own name still carries the module path
(``/backbone/encoder/layer.0/attention/attention/key/MatMul``), so the weight is named after it and
transposed back. A Hugging Face DINOv2 export also splits its position embedding into the class
token's row and the patch rows (``Concat`` / ``Reshape`` operands under ``/backbone/embeddings/``);
they are joined again. Any other anonymous initializer is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mammolens.utils.errors import ConfigError


def read_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """``{"module.path.weight": tensor}`` in PyTorch's layout, for every initializer of the file."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # noqa: BLE001 - any protobuf failure is the file's fault
        raise ConfigError(f"cannot read ONNX file: {type(exc).__name__}: {str(exc)[:160]}", path=path) from None
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    named = {k: v for k, v in arrays.items() if not k.startswith("onnx::")}
    position: dict[str, np.ndarray] = {}
    for node in graph.node:
        for operand in node.input:
            if not operand.startswith("onnx::") or operand not in arrays:
                continue
            if node.op_type == "MatMul" and node.name.endswith("/MatMul"):
                module = node.name[: -len("/MatMul")].strip("/").replace("/", ".")
                named[f"{module}.weight"] = arrays[operand].T
            elif node.name.startswith("/backbone/embeddings/") and node.op_type in ("Concat", "Reshape"):
                position[node.op_type] = arrays[operand]
            else:
                raise ConfigError(f"cannot name ONNX initializer {operand!r} (input of {node.name})", path=path)
    if position:
        if set(position) != {"Concat", "Reshape"}:
            raise ConfigError(f"position embedding of the export has only its {', '.join(position)} part", path=path)
        named["backbone.embeddings.position_embeddings"] = np.concatenate(
            [position["Concat"], position["Reshape"]], axis=1
        )
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in named.items()}
