"""Triton kernels behind the `jetspec` custom ops (CUDA; tested on CPU under TRITON_INTERPRET=1)."""
