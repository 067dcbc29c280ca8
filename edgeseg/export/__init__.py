"""Export: checkpoint -> ONNX (``onnx.py``) and ONNX -> TensorRT engine (``tensorrt.py``)."""
