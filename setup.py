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
    install_requires=[
        "torch>=2.11",
        "numpy>=1.24",
        "triton>=3.6; platform_system == 'Linux'",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["sttr = sttr_fast.cli:main"]},
)
