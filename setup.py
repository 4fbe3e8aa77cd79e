from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="sttr_fast",
    version="0.1.0",
    description="Fast ST-TR (Spatial Temporal Transformer) for skeleton action recognition",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # kernels/ sits at the top of the repository but is imported as sttr_fast.kernels.
    packages=find_packages(include=["sttr_fast", "sttr_fast.*"]) + ["sttr_fast.kernels"],
    package_dir={"sttr_fast.kernels": "kernels"},
    # The official lists of NTU RGB+D samples with missing skeletons, read by `sttr prepare`.
    package_data={"sttr_fast.data": ["resources/*.txt", "resources/*.md"]},
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
        "dev": ["pytest>=8", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["sttr = sttr_fast.cli:main"]},
)
