"""Triton kernels of sttr_fast, installed as ``sttr_fast.kernels``."""
