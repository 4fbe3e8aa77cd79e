"""The C++ and CUDA sources of the cuda backend (docs/kernels.md §11), installed with the package
as ``sttr_fast.csrc`` so that ``sttr_fast.ops.cuda_backend`` finds them for its runtime builds."""
