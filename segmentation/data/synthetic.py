"""Procedural dermoscopy-like images with exact masks and known skin tone (docs/synthetic-data.md).

The design follows S-SYNTH (Kim et al., "S-SYNTH: Knowledge-Based, Synthetic Generation of Skin
Images", MICCAI 2024): skin colour is set in float CIELAB from a target Individual Typology Angle
(ITA) and a blood fraction, a star-shaped lesion with a fuzzy edge darkens it, and dermoscopy
artefacts (hair, ruler, gel bubbles, vignetting aperture, blur, noise, JPEG) are drawn on top.
Written from scratch in 2-D numpy/OpenCV.

Reproducibility rules:

* A sample is a pure function of ``(seed, index, size, quotas)``. All its parameters come from one
  ``np.random.default_rng(np.random.SeedSequence([seed, index]))`` in a fixed order and a fixed
  number of draws (arrays for the largest case are always drawn), so forcing one property through a
  quota changes only that property. Quota decisions use a separate child stream
  (``spawn_key=(1,)``). No global RNG is touched.
* Lengths in pixels (edge width, hair thickness, blur, pigment-network frequency) are specified for
  256-px images and scale with ``size / 256``, so a sample looks the same at every size.
* The mask is computed from geometry before any artefact: pixel ``p`` is lesion iff its signed
  radial distance to the nearest lesion border is <= 0, which is exactly "smooth-step alpha >= 0.5".
  Hair, rulers and bubbles occlude the image only; the mask is clipped to the visible field (inside
  the aperture).

Disk cache: generating one 128-px sample takes about 10-20 ms, i.e. 20-40 s for a 2000-image
training split, paid again by every run. A split is therefore generated once and stored as one
``.npz`` file (uint8 images and masks, the metadata as JSON; no pickle) under
``$DERMSEG_CACHE_DIR`` (default ``${XDG_CACHE_HOME:-~/.cache}/dermseg``), ``synthetic/``. The file
name holds the seed, size, split, index range and quotas, plus a digest of the generator's source
files and of the numpy and OpenCV versions, so a changed generator never reads an old file. The
cached arrays are the generated ones byte for byte (a test checks it), so results do not depend on
the cache. ``DERMSEG_NO_DISK_CACHE=1`` turns it off; a file that cannot be read is regenerated and
rewritten (with a warning naming it), and a cache folder that cannot be written only costs the
speed-up (one warning).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from ..registry import DATASETS
from .color import ita as measure_ita
from .color import ita_group, lab_to_rgb, lesion_contrast, rgb_to_lab
from .procedural import MAX_HAIR, draw_artefacts, fractal_noise, lesion_geometry
from .transforms import build_transform

__all__ = [
    "TAGS",
    "QUOTA_PRESETS",
    "DARK_SKIN_MAX_ITA",
    "generate_sample",
    "difficulty_tags",
    "split_indices",
    "SyntheticDermoscopy",
    "write_isic2018_layout",
]

# Difficulty tags, all computed from the recorded parameters:
#   dark_skin       target ITA <= 10 degrees: the chardon6 bins "brown" and "dark" (about 54 % of
#                   U(-55, 65); use the per-sample `ita_group` column for finer strata)
#   low_contrast    L* darkening < 10, i.e. drawn from the low-contrast branch U(4, 10)
#   heavy_hair      6 or more hair strands (the "6-39 strands" branch)
#   tiny            primary lesion radius < 0.08 x image size
#   multiple        2-3 lesions drawn (`n_components` records how many stay separate)
#   touches_border  the mask reaches the edge of the visible field (image border or aperture rim)
TAGS = ("dark_skin", "low_contrast", "heavy_hair", "tiny", "multiple", "touches_border")
DARK_SKIN_MAX_ITA = 10.0
LOW_CONTRAST_MAX = 10.0
HEAVY_HAIR_MIN = 6
TINY_MAX_RADIUS = 0.08
QUOTA_PRESETS: dict[str, dict[str, float]] = {
    # each hard property forced independently with probability 1/2 (plus its natural rate)
    "hard": {"dark_skin": 0.5, "low_contrast": 0.5, "heavy_hair": 0.5},
}
_BLOOD = (0.002, 0.005, 0.02, 0.05)
_REF = 256.0


def resolve_quotas(quotas: Mapping[str, float] | str | None) -> dict[str, float]:
    """Validate ``quotas`` (tag -> probability of forcing it, or a preset name); return a dict."""
    if quotas is None:
        return {}
    if isinstance(quotas, str):
        if quotas not in QUOTA_PRESETS:
            raise KeyError(
                f"unknown quota preset '{quotas}'; accepted: {', '.join(QUOTA_PRESETS)}."
            )
        return dict(QUOTA_PRESETS[quotas])
    out = {}
    for tag, prob in dict(quotas).items():
        if tag not in TAGS:
            raise KeyError(f"quota for unknown tag '{tag}'; accepted tags: {', '.join(TAGS)}.")
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"quota '{tag}' must be a probability in [0, 1], got {prob}.")
        out[tag] = float(prob)
    return out


def _forced_tags(seed: int, index: int, quotas: dict[str, float]) -> set[str]:
    # Always draw one number per tag so the decision for one tag never depends on the others.
    rng = np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=(1,)))
    draws = rng.random(len(TAGS))
    return {tag for tag, u in zip(TAGS, draws, strict=True) if u < quotas.get(tag, 0.0)}


def _draw_params(rng: np.random.Generator, forced: set[str]) -> dict:
    """Scalar parameters (docs/synthetic-data.md), each from a fixed number of draws."""
    p: dict = {}
    u = rng.random()
    lo = -55.0
    hi = DARK_SKIN_MAX_ITA if "dark_skin" in forced else 65.0
    p["target_ita"] = lo + u * (hi - lo)
    p["skin_b"] = rng.uniform(12.0, 22.0)
    p["skin_L"] = float(
        np.clip(50.0 + p["skin_b"] * math.tan(math.radians(p["target_ita"])), 22, 88)
    )
    p["blood_fraction"] = _BLOOD[int(rng.integers(4))]
    p["skin_a"] = rng.uniform(6, 12) + 150 * p["blood_fraction"] + 0.08 * max(0.0, -p["target_ita"])
    p["texture_L"], p["texture_a"], p["texture_b"] = (
        rng.uniform(1.5, 4),
        rng.uniform(1, 3),
        rng.uniform(1, 2.5),
    )
    p["texture_octaves"] = int(rng.integers(4, 6))
    u = rng.random()
    if "multiple" in forced:
        p["n_lesions"] = 2 if u < 0.5 else 3
    else:
        p["n_lesions"] = 1 if u < 0.88 else (2 if u < 0.94 else 3)
    u, v = rng.random(2)
    cls = "tiny" if ("tiny" in forced or u < 0.10) else ("medium" if u < 0.85 else "large")
    lo, hi = {"tiny": (0.04, 0.08), "medium": (0.08, 0.30), "large": (0.30, 0.55)}[cls]
    p["lesion_radius_class"], p["lesion_radius_frac"] = cls, lo + v * (hi - lo)
    p["at_border"] = bool(rng.random() < 0.12) or "touches_border" in forced
    p["edge_width_px"] = rng.uniform(1, 14)
    u, v = rng.random(2)
    low = "low_contrast" in forced or u < 0.2
    p["contrast"] = 4 + 6 * v if low else 10 + 35 * v
    p["lesion_redness"] = rng.uniform(0.0, 0.35)
    p["pigment_amp"], p["pigment_freq"] = rng.uniform(0, 8), rng.uniform(0.35, 0.7)
    p["pigment_angle"] = rng.uniform(0, math.pi)
    p["blue_grey"] = rng.uniform(0, 10)
    u, v = rng.random(2)
    if "heavy_hair" in forced or u >= 0.8:
        p["hair_count"] = HEAVY_HAIR_MIN + int(v * (MAX_HAIR - HEAVY_HAIR_MIN + 1))
    else:
        p["hair_count"] = 0 if u < 0.45 else 1 + int(v * 5)
    p["ruler"], p["bubbles"] = bool(rng.random() < 0.12), bool(rng.random() < 0.10)
    p["illum_amp"], p["illum_angle"] = rng.uniform(0, 0.2), rng.uniform(0, 2 * math.pi)
    p["wb_r"], p["wb_g"], p["wb_b"] = (float(x) for x in rng.uniform(0.9, 1.1, 3))
    p["aperture"] = bool(rng.random() < 0.5)
    p["aperture_radius_frac"] = rng.uniform(0.45, 0.62)
    p["blur_sigma"], p["noise_sigma"] = rng.uniform(0.3, 1.2), rng.uniform(0, 0.02)
    p["jpeg_quality"] = int(rng.integers(60, 96))
    return p


def difficulty_tags(params: Mapping) -> list[str]:
    """Difficulty tags of a sample from its recorded parameters (thresholds: module constants)."""
    rules = {
        "dark_skin": params["target_ita"] <= DARK_SKIN_MAX_ITA,
        "low_contrast": params["contrast"] < LOW_CONTRAST_MAX,
        "heavy_hair": params["hair_count"] >= HEAVY_HAIR_MIN,
        "tiny": params["lesion_radius_frac"] < TINY_MAX_RADIUS,
        "multiple": params["n_lesions"] > 1,
        "touches_border": bool(params["mask_touches_border"]),
    }
    return [tag for tag in TAGS if rules[tag]]


def _generate(seed: int, index: int, size: int, quotas=None):
    if size < 16:
        raise ValueError(f"synthetic image size must be >= 16 px, got {size}.")
    forced = _forced_tags(seed, index, resolve_quotas(quotas))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    p = _draw_params(rng, forced)
    lesions = lesion_geometry(rng, p, size)
    s = size / _REF
    tex = [fractal_noise(rng, size, p["texture_octaves"], 4) for _ in range(3)]
    variegation = fractal_noise(rng, size, 3, 2)
    warp = [fractal_noise(rng, size, 2, 3) for _ in range(2)]
    noise = rng.standard_normal((size, size, 3), dtype=np.float32)
    cov, col, bubbles = draw_artefacts(rng, p, size)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c0 = (size - 1) / 2.0
    field = np.ones((size, size), bool)
    if p["aperture"]:
        field = np.hypot(xx - c0, yy - c0) <= p["aperture_radius_frac"] * size
    width = max(0.5, p["edge_width_px"] * s)
    alpha = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    for cx, cy, lut in lesions:
        dx, dy = xx - cx, yy - cy
        idx = ((np.arctan2(dy, dx) + math.pi) * (1024 / (2 * math.pi))).astype(np.int32)
        signed = np.hypot(dx, dy) - lut[np.clip(idx, 0, 1024)]  # radial distance to the border, px
        mask |= signed <= 0
        x = np.clip(0.5 - signed / width, 0.0, 1.0)
        alpha = np.maximum(alpha, x * x * (3 - 2 * x))  # smooth step; alpha >= 0.5 <=> signed <= 0
    mask &= field

    darkening = p["contrast"] * (1 + 0.25 * np.clip(variegation, -1, 1)) * alpha
    f = p["pigment_freq"] / s
    ca, sa = math.cos(p["pigment_angle"]), math.sin(p["pigment_angle"])
    net = np.sin(f * (xx * ca + yy * sa) + 2 * warp[0]) * np.sin(
        f * (yy * ca - xx * sa) + 2 * warp[1]
    )
    lab = np.empty((size, size, 3), np.float32)
    lab[..., 0] = p["skin_L"] + p["texture_L"] * tex[0] - darkening
    lab[..., 0] -= p["pigment_amp"] * np.maximum(net, 0) * alpha
    lab[..., 1] = p["skin_a"] + p["texture_a"] * tex[1] + p["lesion_redness"] * darkening
    blue = np.clip((variegation - 1.0) * 4, 0, 1)
    lab[..., 2] = p["skin_b"] + p["texture_b"] * tex[2] - p["blue_grey"] * blue * alpha
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    rgb = lab_to_rgb(lab)

    ramp = ((xx - c0) * math.cos(p["illum_angle"]) + (yy - c0) * math.sin(p["illum_angle"])) / c0
    gain = (1 + p["illum_amp"] * ramp)[..., None] * np.array(
        [p["wb_r"], p["wb_g"], p["wb_b"]], np.float32
    )
    rgb *= gain
    for centre, radius in bubbles:  # gel bubbles brighten their interior slightly
        inside = np.hypot(xx - centre[0], yy - centre[1]) < radius
        rgb[inside] = rgb[inside] * 0.92 + 0.08
    a = (cov.astype(np.float32) / 255.0)[..., None]
    rgb = rgb * (1 - a) + (col.astype(np.float32) / 255.0) * a
    if p["aperture"]:
        soft = np.clip(p["aperture_radius_frac"] * size + 0.5 - np.hypot(xx - c0, yy - c0), 0, 1)
        rgb *= soft[..., None]
    rgb = cv2.GaussianBlur(rgb, (0, 0), max(0.1, p["blur_sigma"] * s))
    rgb += p["noise_sigma"] * noise
    image = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, p["jpeg_quality"]])
    image = np.ascontiguousarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1])

    mask_u8 = mask.astype(np.uint8)
    inner = cv2.erode(field.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0)
    p["mask_touches_border"] = bool((mask & (inner == 0)).any())
    p["lesion_area_frac"] = float(mask.mean())
    p["n_components"] = int(cv2.connectedComponents(mask_u8, connectivity=8)[0] - 1)
    lab_out = rgb_to_lab(image)
    p["measured_ita"] = measure_ita(image, exclude_mask=mask_u8, lab=lab_out)
    p["ita_group"] = ita_group(p["target_ita"], "chardon6")
    p["ita_group_measured"] = ita_group(p["measured_ita"], "chardon6")
    p["delta_e"] = lesion_contrast(image, mask_u8, lab=lab_out)
    p["forced"] = ";".join(t for t in TAGS if t in forced)
    p["tags"] = ";".join(difficulty_tags(p))
    p = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in p.items()}
    p = {"seed": int(seed), "index": int(index), "size": int(size), **p}
    return image, mask_u8, p, jpeg.tobytes()


def generate_sample(
    seed: int, index: int, size: int = 256, *, quotas: Mapping[str, float] | str | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Generate one synthetic dermoscopy sample.

    Args:
        seed: dataset seed.
        index: sample index (splits use disjoint index ranges).
        size: image side in pixels (square images).
        quotas: optional tag -> probability of forcing that property (e.g. ``{"dark_skin": 1.0}``)
            or a preset name from ``QUOTA_PRESETS`` (``"hard"``). ``touches_border`` forces a border
            placement.

    Returns:
        ``(image uint8 [size, size, 3] RGB, mask uint8 [size, size] in {0, 1}, params)``; ``params``
        is a flat dict of str/int/float/bool: every drawn parameter, measured ITA / Delta E / area /
        components, the ``forced`` tags and the ``tags`` (both ';'-joined).
    """
    image, mask, params, _ = _generate(seed, index, size, quotas)
    return image, mask, params


SPLIT_OFFSETS = {"train": 0, "val": 500_000, "test": 1_000_000}


CACHE_DIR_ENV = "DERMSEG_CACHE_DIR"
NO_DISK_CACHE_ENV = "DERMSEG_NO_DISK_CACHE"
# Above this many bytes of raw pixels a split is generated lazily, item by item, and not cached.
DISK_CACHE_MAX_BYTES = 2 << 30
_GENERATOR_FILES = ("synthetic.py", "procedural.py", "color.py")
_warned_dirs: set[str] = set()


def disk_cache_dir() -> Path | None:
    """Folder of the synthetic disk cache, or ``None`` when ``DERMSEG_NO_DISK_CACHE`` is set."""
    if os.environ.get(NO_DISK_CACHE_ENV, "") not in ("", "0"):
        return None
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dermseg"
    )
    return Path(root) / "synthetic"


def _generator_digest() -> str:
    """Digest of what fixes a sample besides its arguments: the sources and library versions."""
    h = hashlib.sha256(f"numpy {np.__version__} opencv {cv2.__version__}".encode())
    for name in _GENERATOR_FILES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def _cache_file(seed: int, size: int, split: str, indices: range, quotas: dict) -> Path | None:
    root = disk_cache_dir()
    if root is None:
        return None
    q = hashlib.sha256(json.dumps(quotas, sort_keys=True).encode()).hexdigest()[:8]
    name = f"s{seed}_{size}px_{split}_{indices.start}-{indices.stop}_q{q}_{_generator_digest()}"
    return root / f"{name}.npz"


def _read_cache(path: Path, n: int, size: int) -> list | None:
    """The cached ``(image, mask, meta)`` items of ``path``, or ``None`` (absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            images, masks = f["images"], f["masks"]
            metas = json.loads(str(f["meta"]))
        if images.shape != (n, size, size, 3) or masks.shape != (n, size, size) or len(metas) != n:
            raise ValueError(
                f"arrays {images.shape} / {masks.shape}, expected {n} items of {size} px"
            )
    except Exception as err:  # a truncated or foreign file: regenerate it
        warnings.warn(
            f"synthetic cache file {path} is unreadable ({err}); regenerating the split and "
            "rewriting the file.",
            stacklevel=3,
        )
        return None
    return [(images[i], masks[i], metas[i]) for i in range(n)]


def _write_cache(path: Path, items: list) -> None:
    """Write ``items`` to ``path`` atomically (temporary file, then rename); warn on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(
                    out,
                    images=np.stack([item[0] for item in items]),
                    masks=np.stack([item[1] for item in items]),
                    meta=np.array(json.dumps([item[2] for item in items])),
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        if str(path.parent) not in _warned_dirs:
            _warned_dirs.add(str(path.parent))
            warnings.warn(
                f"cannot write the synthetic cache in {path.parent} ({err}); the data is "
                f"generated again by every run. Set {CACHE_DIR_ENV} to a writable folder, or "
                f"{NO_DISK_CACHE_ENV}=1 to silence this.",
                stacklevel=3,
            )


def split_indices(split: str, *, n_train: int, n_val: int, n_test: int) -> range:
    """Sample indices of ``split``: train ``[0, n_train)``, val from 500 000, test from 1 000 000.

    The fixed offsets keep the validation and test images unchanged when ``n_train`` changes.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    if split not in sizes:
        raise KeyError(f"unknown split '{split}'; the synthetic dataset has: train, val, test.")
    n = sizes[split]
    if not 0 <= n <= 500_000:
        raise ValueError(f"n_{split} must be in [0, 500000] (disjoint index ranges), got {n}.")
    return range(SPLIT_OFFSETS[split], SPLIT_OFFSETS[split] + n)


def flat_meta(params: Mapping) -> dict:
    """``params`` plus one bool ``tag_<name>`` per tag (all values str/int/float/bool)."""
    tags = set(params["tags"].split(";")) if params["tags"] else set()
    return {**params, **{f"tag_{t}": t in tags for t in TAGS}}


@DATASETS.register("synthetic")
class SyntheticDermoscopy(Dataset):
    """The embedded synthetic dermoscopy dataset, generated in memory (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint index ranges, see
            :func:`split_indices`).
        image_size: generated image side in pixels.
        seed: dataset seed; together with the index and size it fixes every sample.
        n_train, n_val, n_test: split sizes.
        quotas: forced properties per split, ``{split: {tag: probability} | preset}``, e.g.
            ``{"test": "hard"}`` or ``{"test": {"dark_skin": 1.0}}``; splits not listed are
            unforced.
        transform: ``(image uint8 [H, W, 3], mask uint8 [H, W]) -> (image float32 [3, H, W], mask
            int64 [H, W])``; default: ImageNet normalisation at ``image_size``.
        cache: keep generated ``(image, mask, meta)`` in memory (the transform still runs on every
            access).
        disk_cache: with ``cache``, read the whole split from the disk cache at the first access,
            or generate it and write it there (module docstring); splits above
            ``DISK_CACHE_MAX_BYTES`` of pixels stay lazy.

    Items: ``{"image": float32 [3, H, W], "mask": int64 [H, W], "id": "syn_0000042", "meta": flat
        dict}``.
    """

    in_channels = 3
    num_classes = 1

    def __init__(
        self,
        *,
        split: str,
        image_size: int = 128,
        seed: int = 0,
        n_train: int = 2000,
        n_val: int = 300,
        n_test: int = 300,
        quotas: Mapping[str, Mapping[str, float] | str] | None = None,
        transform=None,
        cache: bool = True,
        disk_cache: bool = True,
    ) -> None:
        self.indices = split_indices(split, n_train=n_train, n_val=n_val, n_test=n_test)
        for key in quotas or {}:
            if key not in SPLIT_OFFSETS:
                raise KeyError(
                    f"quotas are given per split ({{split: {{tag: p}}}}); unknown split '{key}', "
                    f"accepted: {', '.join(SPLIT_OFFSETS)}."
                )
        self.quotas = resolve_quotas((quotas or {}).get(split))
        self.split, self.image_size, self.seed, self.cache = (
            split,
            int(image_size),
            int(seed),
            cache,
        )
        self.ids = [f"syn_{i:07d}" for i in self.indices]
        if transform is None:
            transform = build_transform(image_size=None, train=False)
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, dict]] = {}
        pixels = len(self.indices) * self.image_size**2 * 4
        self._disk_file = (
            _cache_file(self.seed, self.image_size, split, self.indices, self.quotas)
            if cache and disk_cache and len(self.indices) and pixels <= DISK_CACHE_MAX_BYTES
            else None
        )

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Raw ``(image uint8 [S, S, 3], mask uint8 [S, S], flat meta)`` of item ``i`` (cached)."""
        if not -len(self) <= i < len(self):
            raise IndexError(
                f"index {i} out of range for the {len(self)}-image '{self.split}' split."
            )
        i %= len(self)
        if i in self._cache:
            return self._cache[i]
        if self._disk_file is not None:
            self._fill_from_disk_cache()
            return self._cache[i]
        image, mask, params = generate_sample(
            self.seed, self.indices[i], self.image_size, quotas=self.quotas
        )
        item = (image, mask, flat_meta(params))
        if self.cache:
            self._cache[i] = item
        return item

    def _fill_from_disk_cache(self) -> None:
        """Load the whole split from the disk cache, or generate it all and write the file."""
        path, n = self._disk_file, len(self)
        items = _read_cache(path, n, self.image_size)
        if items is None:
            items = []
            for j in tqdm(
                range(n), desc=f"synthetic {self.split}: generating", leave=False, disable=n < 200
            ):
                image, mask, params = generate_sample(
                    self.seed, self.indices[j], self.image_size, quotas=self.quotas
                )
                items.append((image, mask, flat_meta(params)))
            _write_cache(path, items)
        self._cache = dict(enumerate(items))
        self._disk_file = None  # filled: later accesses are dictionary look-ups

    def __getitem__(self, i: int) -> dict:
        image, mask, meta = self.load(i)
        image_t, mask_t = self.transform(image, mask)
        return {"image": image_t, "mask": mask_t, "id": self.ids[i], "meta": dict(meta)}


ISIC2018_FOLDERS = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}


def write_isic2018_layout(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 2000,
    n_val: int = 300,
    n_test: int = 300,
    size: int = 256,
    seed: int = 0,
    quotas: Mapping[str, Mapping[str, float] | str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write the synthetic set in the ISIC 2018 Task 1 layout plus ``metadata.csv``.

    Images are ``<input folder>/ISIC_<index:07d>.jpg`` (the generator's own JPEG bytes, so decoding
    gives exactly the in-memory image), masks ``<ground-truth
    folder>/ISIC_<index:07d>_segmentation.png`` with values 0/255. ``metadata.csv`` has one row per
    image: ``image_id``, ``split``, ``id`` and every parameter.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty, unless ``force``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"output folder '{out}' is not empty; choose another folder or pass force=True "
            "(--force)."
        )
    jobs = []
    for split, (image_dir, mask_dir) in ISIC2018_FOLDERS.items():
        (out / image_dir).mkdir(parents=True, exist_ok=True)
        (out / mask_dir).mkdir(parents=True, exist_ok=True)
        split_quotas = resolve_quotas((quotas or {}).get(split))
        for index in split_indices(split, n_train=n_train, n_val=n_val, n_test=n_test):
            jobs.append((split, index, image_dir, mask_dir, split_quotas))
    rows = []
    for split, index, image_dir, mask_dir, split_quotas in tqdm(
        jobs, desc="synthetic", unit="img", disable=not progress
    ):
        _, mask, params, jpeg = _generate(seed, index, size, split_quotas)
        image_id = f"ISIC_{index:07d}"
        (out / image_dir / f"{image_id}.jpg").write_bytes(jpeg)
        ok, png = cv2.imencode(".png", mask * 255)
        (out / mask_dir / f"{image_id}_segmentation.png").write_bytes(png.tobytes())
        rows.append(
            {"image_id": image_id, "split": split, "id": f"syn_{index:07d}", **flat_meta(params)}
        )
    with open(out / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=list(rows[0]) if rows else ["image_id", "split", "id"]
        )
        writer.writeheader()
        writer.writerows(rows)
    return out
