"""The name of every file an export writes, in one place (the export chain, the ONNX writer,
``edgeseg bench`` looking for files beside a model and the CLI all ask here).

::

    model.onnx                 FP32 logits           model.argmax.onnx    FP32, uint8 labels out
    model.fp16.onnx            FP16                  model.int8-TARGET.onnx       INT8 (Q/DQ)
    model.int8-qat-TARGET.onnx INT8 after QAT        qat.pt               the QAT-tuned weights
    NAME.engine (+ NAME.engine.json)                 TensorRT, built from NAME.onnx

One name per kind, so a labels model never replaces the logits model the other commands use,
nor an FP16 or INT8 file the FP32 one.
"""

from __future__ import annotations

QAT_CHECKPOINT = "qat.pt"


def onnx_name(
    precision: str = "fp32", *, argmax: bool = False, target: str = "cpu", qat: bool = False
) -> str:
    """The ONNX file of an export of ``precision`` (fp32, fp16, int8; INT8 for ``target``)."""
    if precision == "int8":
        return f"model.int8-{'qat-' if qat else ''}{target}.onnx"
    return (
        "model" + (".argmax" if argmax else "") + (".fp16" if precision == "fp16" else "") + ".onnx"
    )


def engine_name(onnx: str) -> str:
    """The TensorRT engine built from the ONNX file ``onnx`` (a name, not a path)."""
    return onnx.removesuffix(".onnx") + ".engine"


def exported_for(precision: str, target: str, engine: bool = False) -> list[str]:
    """The files an export of ``precision`` may have left for ``target`` (``cpu`` or ``trt``),
    preferred first: what ``edgeseg bench`` looks for beside a model."""
    if precision == "int8":
        names = [onnx_name("int8", target=target), onnx_name("int8", target=target, qat=True)]
    elif precision == "fp16":
        names = [onnx_name("fp16")]
    else:
        names = [onnx_name()]
    return [engine_name(n) for n in names] if engine else names
