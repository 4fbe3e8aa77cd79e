"""Test-session set-up shared by all tests.

Without a CUDA GPU, the Triton kernels run in Triton's CPU interpreter. Triton fixes that mode when
it decorates the kernels, i.e. when ``sttr_fast`` is first imported, and pytest imports this file
before any test module, so the switch is made here. With a GPU the kernels are compiled and run
on it, and the same tests exercise them there.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
