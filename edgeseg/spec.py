"""ModelSpec: the description every exported model carries (the metadata contract).

Stored as JSON under the ONNX metadata key ``edgeseg``, inside ``.pt`` checkpoints, and beside a
TensorRT engine as ``<engine>.json``. With it, ``eval``, ``predict``, ``stream`` and ``bench``
need nothing but the model path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeseg.errors import EdgesegError

FORMAT_VERSION = 1
METADATA_KEY = "edgeseg"


@dataclass
class InputSpec:
    """What the network expects: NCHW, RGB, ``(x - mean) / std`` on the 0-255 scale."""

    height: int
    width: int
    mean: list[float]
    std: list[float]
    layout: str = "NCHW"
    color: str = "RGB"
    dtype: str = "float32"


@dataclass
class OutputSpec:
    """``logits`` (N, C, h, w) float or ``labels`` (N, h, w) ints; ``stride``: input / output."""

    kind: str = "logits"
    stride: int = 1


@dataclass
class ModelSpec:
    """Everything the runtime needs to run a model without flags."""

    arch: str
    num_classes: int
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    input: InputSpec
    output: OutputSpec = field(default_factory=OutputSpec)
    precision: str = "fp32"
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise EdgesegError(
                f"model spec lists {len(self.classes)} class names for {self.num_classes} classes"
            )
        if len(self.palette) < self.num_classes:
            raise EdgesegError(
                f"model spec has {len(self.palette)} palette colours for {self.num_classes} classes"
            )
        if self.output.kind not in ("logits", "labels"):
            raise EdgesegError(
                f"model spec output kind must be 'logits' or 'labels', got {self.output.kind!r}"
            )

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input.height, self.input.width

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "model") -> ModelSpec:
        """Parse and validate; ``origin`` names the file in error messages."""
        if not isinstance(d, dict):
            raise EdgesegError(f"{origin}: the edgeseg model spec is not a JSON object")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise EdgesegError(f"{origin}: the edgeseg model spec has no format_version")
        if version > FORMAT_VERSION:
            raise EdgesegError(
                f"{origin} uses model spec format {version}, newer than this edgeseg reads "
                f"({FORMAT_VERSION}); upgrade edgeseg (pip install -U edgeseg)"
            )
        try:
            d = dict(d)
            d["input"] = InputSpec(**d["input"])
            d["output"] = OutputSpec(**d.get("output", {}))
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise EdgesegError(
                f"{origin}: the edgeseg model spec is incomplete or malformed ({e})"
            ) from None

    @classmethod
    def from_json(cls, text: str, origin: str = "model") -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise EdgesegError(
                f"{origin}: the edgeseg model spec is not valid JSON ({e})"
            ) from None
        return cls.from_dict(d, origin)
