"""Export: the ModelSpec metadata contract and ONNX export."""

from edgeseg.export.spec import FORMAT_VERSION, METADATA_KEY, InputSpec, ModelSpec, OutputSpec

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "InputSpec", "ModelSpec", "OutputSpec"]
