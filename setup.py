import re
from pathlib import Path

from setuptools import find_packages, setup


def _version() -> str:
    """The version lives in one place: ``segmentation/__init__.py``."""
    text = (Path(__file__).parent / "segmentation" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
    name="dermseg",
    version=_version(),
    description="Skin-lesion segmenters under one honest training and evaluation protocol",
    python_requires=">=3.10",
    packages=find_packages(include=["segmentation", "segmentation.*", "networks", "networks.*"]),
    install_requires=[
        # Ranges that resolve to the builds on this disk (torch 2.14.1, torchvision 0.29.1).
        "torch>=2.5,<=2.14.1",
        "torchvision>=0.20,<=0.29.1",
        "segmentation-models-pytorch>=0.4",
        "monai>=1.4",
        "einops>=0.7",
        "albumentations>=2.0",
        "opencv-python-headless>=4.8",
        "tensorboard>=2.15",
        "pyyaml>=6.0",
        "timm>=1.0",
        "tqdm>=4.66",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "scikit-image>=0.22",
        "PyWavelets>=1.5",
        "segment-anything>=1.0",
        "sam2>=1.0",
    ],
    entry_points={
        "console_scripts": [
            "dermseg-benchmark=segmentation.cli.benchmark:run",
            "dermseg-evaluate=segmentation.cli.evaluate:main",
            "dermseg-export=segmentation.cli.export:main",
            "dermseg-make-splits=segmentation.cli.make_splits:main",
            "dermseg-make-synthetic=segmentation.cli.make_synthetic:main",
            "dermseg-model-card=segmentation.cli.model_card:main",
            "dermseg-networks-table=segmentation.cli.networks_table:main",
            "dermseg-plan=segmentation.cli.plan:main",
            "dermseg-predict=segmentation.cli.predict:main",
            "dermseg-prepare-data=segmentation.cli.prepare_data:main",
            "dermseg-train=segmentation.cli.train:run",
        ]
    },
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.5"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        # SAM 3 (networks/sam/sam3_adapter.py) is optional: its SAM License and its upper pins
        # (numpy<2.4, tqdm<4.68, typing_extensions<4.16, einops<0.9) stay out of the core install.
        # pip resolves them with the rest (older pydantic-core/anyio). psutil: imported by sam3 but
        # not declared by it; open-clip-torch ships the BPE vocabulary SAM 3's tokenizer reads.
        "sam3": ["sam3>=0.1.4,<0.2", "psutil>=5.9", "open-clip-torch>=2.20"],
    },
)
