"""ModelSpec: the description every exported model carries (the metadata contract).

Stored as JSON under the ONNX metadata key ``edgeseg``, inside ``.pt`` checkpoints, and beside a
TensorRT engine as ``<engine>.json``. With it, ``eval``, ``predict``, ``stream`` and ``bench``
need nothing but the model path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeseg.errors import EdgesegError

FORMAT_VERSION = 1
METADATA_KEY = "edgeseg"
MAX_CLASSES = 256  # labels are uint8
MAX_SIDE = 16384  # pixels a model input side may have
MAX_PIXELS = 64 * 2**20
PRECISIONS = ("fp32", "fp16", "int8")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rgb(c: Any) -> bool:
    return (
        isinstance(c, (list, tuple)) and len(c) == 3 and all(_int(v) and 0 <= v <= 255 for v in c)
    )


def _three_finite(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) == 3
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
        )
    )


def _check_input(inp: InputSpec, bad) -> None:
    for side in ("height", "width"):
        v = getattr(inp, side)
        if not _int(v) or not 1 <= v <= MAX_SIDE:
            raise bad(f"input.{side}", f"an integer from 1 to {MAX_SIDE}", v)
    if inp.height * inp.width > MAX_PIXELS:
        raise bad("input", f"at most {MAX_PIXELS} pixels", (inp.height, inp.width))
    if not _three_finite(inp.mean):
        raise bad("input.mean", "three finite numbers", inp.mean)
    if not _three_finite(inp.std) or not all(x > 0 for x in inp.std):
        raise bad("input.std", "three finite numbers above 0", inp.std)
    if inp.layout != "NCHW" or inp.color != "RGB" or inp.dtype not in ("float32", "float16"):
        raise bad(
            "input",
            "layout NCHW, color RGB, dtype float32 or float16",
            (inp.layout, inp.color, inp.dtype),
        )


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
        self.validate()

    def validate(self, origin: str = "model spec") -> None:
        """Refuse a spec no real model has: each check names the field and what it must be.

        Every loader goes through here (ONNX metadata, checkpoints, engine sidecars), so a
        malformed or hostile spec is refused before it sizes a buffer or drives a kernel.
        """

        def bad(field: str, need: str, got: Any) -> EdgesegError:
            return EdgesegError(f"{origin} field {field} must be {need}, got {got!r}"[:300])

        if not _int(self.num_classes) or not 1 <= self.num_classes <= MAX_CLASSES:
            raise bad("num_classes", f"an integer from 1 to {MAX_CLASSES}", self.num_classes)
        if not isinstance(self.classes, list) or len(self.classes) != self.num_classes:
            raise bad("classes", f"a list of {self.num_classes} names", self.classes)
        if not all(isinstance(c, str) and c for c in self.classes):
            raise bad("classes", "non-empty strings", self.classes)
        pal = self.palette
        if (
            not isinstance(pal, list)
            or len(pal) < self.num_classes
            or not all(_rgb(c) for c in pal)
        ):
            raise bad(
                "palette", f"at least {self.num_classes} [r, g, b] lists of integers 0..255", pal
            )
        if not _int(self.ignore_index) or not 0 <= self.ignore_index <= 255:
            raise bad("ignore_index", "an integer from 0 to 255", self.ignore_index)
        _check_input(self.input, bad)
        if self.output.kind not in ("logits", "labels"):
            raise bad("output.kind", "'logits' or 'labels'", self.output.kind)
        if not _int(self.output.stride) or not 1 <= self.output.stride <= 64:
            raise bad("output.stride", "an integer from 1 to 64", self.output.stride)
        if self.precision not in PRECISIONS:
            raise bad("precision", " or ".join(PRECISIONS), self.precision)
        if not isinstance(self.arch, str) or not isinstance(self.source, dict):
            raise bad("arch/source", "a string and an object", (self.arch, self.source))

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
        if not _int(version):
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
        except (KeyError, TypeError, AttributeError) as e:
            raise EdgesegError(
                f"{origin}: the edgeseg model spec is incomplete or malformed ({e})"
            ) from None
        except EdgesegError as e:  # validate(): name the file too
            raise EdgesegError(f"{origin}: {e}") from None

    @classmethod
    def from_json(cls, text: str, origin: str = "model") -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise EdgesegError(
                f"{origin}: the edgeseg model spec is not valid JSON ({e})"
            ) from None
        return cls.from_dict(d, origin)
