import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
# Flags of the cuda backend's GPU build; sttr_fast/ops/cuda_backend.py builds the same sources
# with the same flags at run time when this install did not.
CUDA_FLAGS = ["-O3", "-DSTTR_NS=sttr_fast_cuda", "-DSTTR_DEVICE_BUILD"]


def cuda_extension() -> tuple[list, dict]:
    """The cuda backend's kernels (csrc/) as the extension sttr_fast._cuda_kernels, built with
    ninja when torch is a CUDA build and nvcc is found, or FORCE_CUDA=1 insists; for sm_80 and
    sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise; not with STTR_SKIP_CUDA_BUILD=1. Otherwise
    nothing is compiled: in an
    isolated build environment torch is absent (and is never installed there), and a CPU-only
    install stays pure Python."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    forced = os.environ.get("FORCE_CUDA") == "1"
    if os.environ.get("STTR_SKIP_CUDA_BUILD") == "1" and not forced:
        return [], {}  # backend="cuda" then builds the kernels when first used (bench/gpu_check.sh)
    if forced and torch.version.cuda is None:
        raise RuntimeError(f"FORCE_CUDA=1 needs a CUDA build of torch, found {torch.__version__}")
    if not forced and (torch.version.cuda is None or CUDA_HOME is None):
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    extension = CUDAExtension("sttr_fast._cuda_kernels", ["csrc/binding.cpp", "csrc/cuda_launch.cu"],
                              extra_compile_args={"cxx": CUDA_FLAGS, "nvcc": CUDA_FLAGS})

    class BuildCudaKernels(BuildExtension.with_options(use_ninja=True)):
        """Unless FORCE_CUDA=1, a failed build of the extension leaves the rest of the install
        intact: the package works without it, and backend="cuda" then builds the kernels at run
        time or says why it cannot."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # a compiler or toolkit problem: report it, install the rest
                if forced:
                    raise
                print(f"sttr_fast: building the cuda backend's extension failed, installing without it "
                      f"(set FORCE_CUDA=1 to make this an error): {error}")

    return [extension], {"build_ext": BuildCudaKernels}


EXTENSIONS, COMMANDS = cuda_extension()

setup(
    name="sttr_fast",
    version="0.1.0",
    description="Fast ST-TR (Spatial Temporal Transformer) for skeleton action recognition",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # kernels/ and csrc/ sit at the top of the repository but are imported as sttr_fast.kernels
    # and sttr_fast.csrc.
    packages=find_packages(include=["sttr_fast", "sttr_fast.*"]) + ["sttr_fast.kernels", "sttr_fast.csrc"],
    package_dir={"sttr_fast.kernels": "kernels", "sttr_fast.csrc": "csrc"},
    # The official lists of NTU RGB+D samples with missing skeletons, read by `sttr prepare`; the
    # kernel sources, which the cuda backend compiles at run time where the install did not.
    package_data={"sttr_fast.data": ["resources/*.txt", "resources/*.md"],
                  "sttr_fast.csrc": ["*.h", "*.cuh", "*.cu", "*.cpp"]},
    ext_modules=EXTENSIONS,
    cmdclass=COMMANDS,
    install_requires=[
        "torch>=2.11",
        "numpy>=1.24",
        "pyyaml>=6",          # training configs
        "tqdm>=4.60",         # progress bars
        "matplotlib>=3.7",    # training plots and confusion matrices
        "tensorboard>=2.14",  # training scalars
        "triton>=3.6; platform_system == 'Linux'",
    ],
    extras_require={
        # sttr export --format onnx, and the tests that run its output in onnxruntime
        "export": ["onnx>=1.18", "onnxscript>=0.5", "onnxruntime>=1.22"],
        "dev": ["pytest>=8", "pytest-xdist>=3.6", "pytest-benchmark>=4", "onnx>=1.18", "onnxscript>=0.5",
                "onnxruntime>=1.22"],
    },
    entry_points={"console_scripts": ["sttr = sttr_fast.cli:main"]},
)
