"""Self-configuration from a data fingerprint: nnU-Net's 2-D planning rules, simplified.

``plan_config(config)`` reads the training split once, derives the settings below and fills them
into the experiment wherever the YAML (or ``--set``) leaves them out; what the experiment states
wins, and the plan records both. ``tools/plan.py`` prints and saves the plan; ``train.plan: auto``
runs the same step at the start of training (``plan.json`` in the run folder).

The rules, after nnU-Net v2's ``ExperimentPlanner`` (2-D configuration) and
``get_pool_and_conv_props`` (Isensee et al., Nature Methods 2021); differences are marked *ours*:

1. **Fingerprint.** One pass over the training split (``dataset.load``, raw files): every image's
   height and width, per-channel mean and standard deviation pooled over all pixels, and the
   lesion (foreground) fraction.
2. **Input size.** nnU-Net starts from the median shape (each axis), at most 2048. *Ours*: dermseg
   resizes every image to one square, so the side is that of the square with the median image's
   pixel count, ``sqrt(median_h * median_w)``, at most 2048. An ``image_size`` given in the
   experiment is kept, and the rest is planned for it.
3. **Topology.** Halve the feature map (stride 2) while it stays at least 4 px, i.e. pool an axis
   while it is >= 8 px (a lone remaining axis only while >= 12 px); 3x3 kernels everywhere (pixels
   are isotropic). The side is padded up to a multiple of ``2 ** poolings``. *Ours*: at least two
   poolings (MONAI ``DynUNet``'s minimum).
4. **Memory.** nnU-Net's estimate: the feature-map elements of one image in its network (each
   convolution's output, each transposed convolution's output, each segmentation output), with
   widths ``base_width * 2**i`` capped at ``max_width`` (32 and 512 unless the model says
   otherwise). Reference: 85 M elements fit batch 12 in 8 GB, scaled by ``train.plan_memory_gb``.
   While batch 2 does not fit, the side shrinks by one divisor step (nnU-Net shrinks the axis
   furthest above the median; ours is square). On a CPU the "memory" is a compute budget: 0.16 GB
   gives batch 8 at 128 px with widths 16-256.
5. **Batch size.** ``round(budget / estimate)``, at most 5 % of the training set (nnU-Net: 5 % of
   its pixels; here each image is one sample) and at least 2.
6. **Normalisation.** nnU-Net picks it from the channel's name (CT: dataset statistics, anything
   else: per-image z-score). *Ours*: RGB dermoscopy gets a per-channel z-score with the dataset's
   mean and standard deviation (colour carries diagnostic information and the absolute skin tone
   that a per-image z-score would erase); inputs with extra channels (already standardised per
   image) get the per-image z-score. It is applied inside the network (``input_norm``), on top of
   the pipeline's ImageNet normalisation, so prediction and export need nothing else.

Network settings (``strides``, ``kernel_sizes``, ``input_norm``, ``input_mean``, ``input_std``)
are filled only for networks that take them (``nnunet2d``); any network gets the input size and
batch size (estimated for nnU-Net's network).
"""

from __future__ import annotations

import copy
import inspect
import math

import cv2
import numpy as np

from segmentation.config import Config, validate
from segmentation.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segmentation.registry import DATASETS, NETWORKS

MIN_FEATURE_MAP = 4  # nnU-Net UNet_featuremap_min_edge_length
MIN_POOLINGS = 2  # DynUNet needs a down- and an up-sampling block besides input and bottleneck
MAX_SIDE = 2048  # nnU-Net's initial 2-D patch
REFERENCE_ELEMENTS = 85_000_000  # nnU-Net UNet_reference_val_2d ...
REFERENCE_BATCH = 12  # ... fits this batch ...
REFERENCE_GB = 8.0  # ... in this much GPU memory
MIN_BATCH = 2
MAX_DATASET_FRACTION = 0.05
NNUNET_WIDTHS = (32, 512)


def extract_fingerprint(dataset) -> dict:
    """Shapes and intensity statistics of every image of ``dataset`` (one pass, raw files).

    Returns:
        ``n_images``; ``median_shape``, ``min_shape``, ``max_shape`` (``[H, W]``); ``rgb_mean``,
        ``rgb_std`` (per channel, pixels scaled to [0, 1], pooled over all pixels);
        ``median_foreground_fraction``.
    """
    if not hasattr(dataset, "load"):
        raise TypeError(
            f"planning reads raw images through dataset.load(i); {type(dataset).__name__} has no "
            "load method."
        )
    n = len(dataset)
    shapes = np.zeros((n, 2), dtype=np.int64)
    moments = np.zeros((2, 3))  # sum over images of pixels * E[x], pixels * E[x^2]
    foreground = np.zeros(n)
    for i in range(n):
        image, mask, _ = dataset.load(i)
        shapes[i] = image.shape[:2]
        mean, std = (v[:, 0] for v in cv2.meanStdDev(image))
        pixels = image.shape[0] * image.shape[1]
        moments += pixels * np.stack([mean, std**2 + mean**2])
        foreground[i] = float(np.mean(mask > 0))
    ex, ex2 = moments / shapes.prod(axis=1).sum()
    return {
        "n_images": n,
        "median_shape": [int(round(v)) for v in np.median(shapes, axis=0)],
        "min_shape": shapes.min(axis=0).tolist(),
        "max_shape": shapes.max(axis=0).tolist(),
        "rgb_mean": [round(float(v) / 255, 4) for v in ex],
        "rgb_std": [round(float(v) / 255, 4) for v in np.sqrt(np.maximum(ex2 - ex**2, 0))],
        "median_foreground_fraction": round(float(np.median(foreground)), 4),
    }


def plan_topology(shape: tuple[int, int], min_feature_map: int = MIN_FEATURE_MAP) -> dict:
    """nnU-Net's poolings for an image of ``shape`` (isotropic pixels).

    Returns:
        ``strides`` and ``kernel_sizes`` per stage (``[h, w]``), ``divisor`` (``2**poolings`` per
        axis), ``shape`` padded up to it, and the ``bottleneck`` feature-map size.
    """
    size, pools, strides = list(shape), [0, 0], [[1, 1]]
    while True:
        valid = [a for a in (0, 1) if size[a] >= 2 * min_feature_map]
        if len(valid) == 1 and size[valid[0]] < 3 * min_feature_map:
            valid = []
        if not valid and len(strides) > MIN_POOLINGS:
            break
        valid = valid or [0, 1]  # ours: force DynUNet's two poolings on tiny images
        for a in valid:
            pools[a] += 1
            size[a] = math.ceil(size[a] / 2)
        strides.append([2 if a in valid else 1 for a in (0, 1)])
    divisor = [2**p for p in pools]
    padded = [math.ceil(s / d) * d for s, d in zip(shape, divisor, strict=True)]
    return {
        "strides": strides,
        "kernel_sizes": [[3, 3] for _ in strides],
        "divisor": divisor,
        "shape": padded,
        "bottleneck": [p // d for p, d in zip(padded, divisor, strict=True)],
    }


def feature_map_elements(
    shape, strides, widths, num_classes: int, deep_supervision: bool = True
) -> int:
    """Elements of every feature map of one image in nnU-Net's 2-D U-Net (its VRAM proxy):
    two convolutions per encoder stage; per decoder level a transposed convolution, two
    convolutions and (deep supervision, or the top level) a segmentation output."""
    sizes, size = [], list(shape)
    for stride in strides:
        size = [s // t for s, t in zip(size, stride, strict=True)]
        sizes.append(size[0] * size[1])
    total = sum(2 * w * a for w, a in zip(widths, sizes, strict=True))
    for level in range(len(strides) - 1):
        total += 3 * widths[level] * sizes[level]
        if deep_supervision or level == 0:
            total += num_classes * sizes[level]
    return int(total)


def plan_experiment(
    fingerprint: dict,
    *,
    num_classes: int,
    in_channels: int = 3,
    base_width: int = NNUNET_WIDTHS[0],
    max_width: int = NNUNET_WIDTHS[1],
    memory_gb: float = REFERENCE_GB,
    input_size: int | None = None,
    deep_supervision: bool = True,
) -> dict:
    """Input size, topology, batch size and normalisation from a fingerprint (module docstring).

    Args:
        fingerprint: :func:`extract_fingerprint` of the training split.
        num_classes, in_channels: of the network.
        base_width, max_width: channel widths used for the memory estimate.
        memory_gb: the budget (nnU-Net: 8 GB of GPU memory).
        input_size: a side fixed by the experiment (kept; the rest is planned for it).
        deep_supervision: count the auxiliary segmentation outputs in the estimate.
    """
    if memory_gb <= 0:
        raise ValueError(f"train.plan_memory_gb must be positive, got {memory_gb}.")
    median = fingerprint["median_shape"]
    side = input_size or min(MAX_SIDE, round(math.sqrt(median[0] * median[1])))
    topology = plan_topology((side, side))
    side = side if input_size else topology["shape"][0]

    def estimate(topo):
        widths = [min(base_width * 2**i, max_width) for i in range(len(topo["strides"]))]
        return feature_map_elements(
            (side, side), topo["strides"], widths, num_classes, deep_supervision
        )

    budget = REFERENCE_ELEMENTS * REFERENCE_BATCH * memory_gb / REFERENCE_GB
    elements = estimate(topology)
    while input_size is None and elements * MIN_BATCH > budget:
        # nnU-Net: subtract the divisor of the reduced size, so no valid size is skipped
        step = plan_topology((side - topology["divisor"][0],) * 2)["divisor"][0]
        if side - step < 2 * MIN_FEATURE_MAP:
            break
        side -= step
        topology = plan_topology((side, side))
        elements = estimate(topology)
    cap = max(MIN_BATCH, round(MAX_DATASET_FRACTION * fingerprint["n_images"]))
    batch = max(MIN_BATCH, min(round(budget / elements), cap))
    if in_channels == 3:
        stats = zip(fingerprint["rgb_mean"], IMAGENET_MEAN, IMAGENET_STD, strict=True)
        mean = [(m - im) / s for m, im, s in stats]
        std = [v / s for v, s in zip(fingerprint["rgb_std"], IMAGENET_STD, strict=True)]
        norm = {
            "input_norm": "dataset",
            "input_mean": [round(v, 4) for v in mean],
            "input_std": [round(max(v, 1e-3), 4) for v in std],
        }
    else:
        norm = {"input_norm": "per_image"}
    return {
        "fingerprint": fingerprint,
        "input_size": side,
        "input_size_from": "experiment" if input_size else "median image",
        "stages": len(topology["strides"]),
        "strides": topology["strides"],
        "kernel_sizes": topology["kernel_sizes"],
        "bottleneck": topology["bottleneck"],
        "widths": [base_width, max_width],
        "feature_map_elements": elements,
        "memory_gb": memory_gb,
        "budget_elements": int(budget),
        "batch_size": batch,
        "batch_limits": {"memory": round(budget / elements), "dataset_5_percent": cap},
        "normalization": norm,
    }


def _training_split(config: Config):
    """The training split as the experiment builds it, without any transform (raw files)."""
    import segmentation.data  # noqa: F401  (registers the datasets)
    from segmentation.data.channels import count_extra_channels

    spec = config.section("data")
    target, _ = DATASETS.get(spec["name"])
    accepted = set(DATASETS.accepted_kwargs(target)) - {"split", "transform"}
    kwargs = {k: v for k, v in spec.items() if k in accepted}
    dataset = DATASETS.build(spec["name"], split="train", **kwargs)
    if spec.get("on_error") == "skip" and hasattr(dataset, "exclude_unreadable"):
        dataset.exclude_unreadable()  # as training will (data.on_error: skip)
    extra = count_extra_channels(spec.get("extra_channels") or ())
    return dataset, dataset.in_channels + extra


def _model_arguments(spec: dict) -> tuple[list[str], dict]:
    """Accepted keyword arguments of the configured network and their values (defaults, the
    registered preset, then the YAML)."""
    target, preset = NETWORKS.get(spec["name"])
    params = inspect.signature(target).parameters.values()
    values = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    values.update(preset)
    values.update({k: v for k, v in spec.items() if k != "name"})
    return NETWORKS.accepted_kwargs(target), values


def plan_config(config: Config) -> tuple[Config, dict]:
    """Fingerprint the training split of ``config``, plan, and fill the plan into the config.

    Returns:
        ``(planned config, plan)``; ``plan["applied"]`` lists every planned setting with the
        planned value, the value used and where it came from (``plan`` or ``experiment``).
    """
    dataset, in_channels = _training_split(config)
    accepted, model = _model_arguments(config.raw["model"])
    nnunet_like = {"strides", "kernel_sizes"} <= set(accepted)
    plan = plan_experiment(
        extract_fingerprint(dataset),
        num_classes=dataset.num_classes,
        in_channels=in_channels,
        base_width=model.get("base_width", 32) if nnunet_like else NNUNET_WIDTHS[0],
        max_width=model.get("max_width", 512) if nnunet_like else NNUNET_WIDTHS[1],
        memory_gb=config.train.plan_memory_gb,
        input_size=config.raw["data"].get("image_size"),
        deep_supervision=bool(model.get("deep_supervision", True)),
    )
    raw, applied = copy.deepcopy(config.raw), {}
    groups = [
        ("data", {"image_size": plan["input_size"]}),
        ("train", {"batch_size": plan["batch_size"]}),
        ("model", {"strides": plan["strides"], "kernel_sizes": plan["kernel_sizes"]}),
        ("model", plan["normalization"]),
    ]
    for section, values in groups:
        if section == "model" and not set(values) <= set(accepted):
            continue
        # a group is taken whole from the experiment when it states any of its keys
        stated = any(key in raw[section] for key in values)
        for key, value in values.items():
            used = raw[section].get(key) if stated else value
            applied[f"{section}.{key}"] = {
                "planned": value,
                "used": used,
                "from": "experiment" if stated else "plan",
            }
            if not stated:
                raw[section][key] = value
    plan["dataset"] = config.raw["data"]["name"]
    plan["applied"] = applied
    return validate(raw, source="planned config"), plan


def format_plan(plan: dict) -> str:
    """The plan as a few printable lines."""
    fp, limits = plan["fingerprint"], plan["batch_limits"]
    shape = "x".join(map(str, fp["median_shape"]))
    lines = [
        f"plan (nnU-Net 2-D rules) from {fp['n_images']} training images of '{plan['dataset']}':",
        f"  median image {shape} (HxW; min {'x'.join(map(str, fp['min_shape']))}, max "
        f"{'x'.join(map(str, fp['max_shape']))}), median lesion fraction "
        f"{fp['median_foreground_fraction']:.3f}",
        f"  input size {plan['input_size']} (from the {plan['input_size_from']}); "
        f"{plan['stages']} stages, strides {[s[0] for s in plan['strides']]}, 3x3 kernels, "
        f"bottleneck {'x'.join(map(str, plan['bottleneck']))} px",
        f"  memory: {plan['feature_map_elements'] / 1e6:.2f} M feature-map elements per image "
        f"(widths {plan['widths'][0]}-{plan['widths'][1]}); budget {plan['memory_gb']:g} GB = "
        f"{plan['budget_elements'] / 1e6:.1f} M -> batch {plan['batch_size']} (memory "
        f"{limits['memory']}, 5 % of the data {limits['dataset_5_percent']}, min {MIN_BATCH})",
        "  normalisation: "
        + ", ".join(f"{k}={v}" for k, v in plan["normalization"].items())
        + " (of the ImageNet-normalised input)",
    ]
    for key, item in plan.get("applied", {}).items():
        if item["from"] == "plan":
            lines.append(f"  set {key} = {item['used']}")
        else:
            lines.append(
                f"  kept {key} = {item['used']} from the experiment (planned {item['planned']})"
            )
    return "\n".join(lines)
