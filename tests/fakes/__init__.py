"""Small fakes shaped like APIs that cannot run here (TensorRT, the CUDA driver): for testing the
logic around them, never as a substitute for the GPU tests."""
