from setuptools import find_packages, setup

setup(
    name="dermseg",
    version="0.1.0",
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
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.5"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
    },
)
