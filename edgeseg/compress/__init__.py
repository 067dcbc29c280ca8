"""Model compression: structured pruning and INT8 quantization."""
