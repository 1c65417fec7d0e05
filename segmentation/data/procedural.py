"""Drawing primitives of the synthetic generator: fractal value noise and dermoscopy artefacts.

Everything takes an explicit ``np.random.Generator`` and draws a fixed number of values (arrays for
the largest case), so the caller's stream position never depends on the drawn values.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

MAX_LESIONS, MAX_HAIR, MAX_BUBBLES = 3, 39, 4
_K = np.arange(2, 13)  # harmonics of the star-shaped border
_HAIR_COLOURS = np.array([[28, 20, 16], [92, 60, 38], [205, 200, 192]], dtype=np.float32)
_REF = 256.0


def fractal_noise(rng: np.random.Generator, size: int, octaves: int, base: int) -> np.ndarray:
    """Zero-mean, unit-std value noise ``float32 [size, size]``; always draws 5 octaves.

    Octave ``o`` is a ``(base * 2**o + 1)``-square Gaussian grid with weight ``0.5**o``; coarser
    octaves are upsampled pyramid-style into the next grid, so only the final image-sized resize is
    expensive.
    """
    grids = [rng.standard_normal((base * 2**o + 1,) * 2, dtype=np.float32) for o in range(5)]
    out = grids[0]
    for o in range(1, octaves):
        n = grids[o].shape[0]
        out = cv2.resize(out, (n, n), interpolation=cv2.INTER_CUBIC) + 0.5**o * grids[o]
    out = cv2.resize(out, (size, size), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / (out.std() + 1e-6)


def _stroke_canvases(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((size, size), np.uint8), np.zeros((size, size, 3), np.uint8)


def _draw_polyline(cov, col, pts, colour, thickness_px: float, scale: float = 16.0) -> None:
    """Draw a stroke: anti-aliased coverage and a solid colour stroke.

    The colour stroke is one pixel wider than the coverage so the anti-aliased rim has colour;
    coverage is scaled by ``thickness_px`` when the hair is thinner than one pixel.
    """
    pts = np.round(np.asarray(pts) * scale).astype(np.int32).reshape(-1, 1, 2)
    thick = max(1, round(thickness_px))
    opacity = min(1.0, thickness_px)
    cv2.polylines(cov, [pts], False, int(255 * opacity), thick, cv2.LINE_AA, shift=4)
    cv2.polylines(col, [pts], False, [int(c) for c in colour], thick + 1, cv2.LINE_8, shift=4)


def draw_artefacts(
    rng: np.random.Generator, p: dict, size: int
) -> tuple[np.ndarray, np.ndarray, list]:
    """Hair, ruler and bubble strokes; fixed draws for the maximum counts."""
    s = size / _REF
    hair = rng.random((MAX_HAIR, 11))
    ruler = rng.random(5)
    bub = rng.random((MAX_BUBBLES + 1, 3))
    cov, col = _stroke_canvases(size)
    if p["ruler"]:
        side, offset = int(ruler[0] * 4), (0.03 + 0.07 * ruler[1]) * size
        step = (0.03 + 0.03 * ruler[2]) * size
        grey = 30 + 60 * ruler[3]
        for j in range(int(size / step) + 1):
            length = (0.06 if j % 5 == 0 else 0.03) * size
            a, b = (j * step, offset), (j * step, offset + length)
            pts = np.array([a, b]) if side % 2 == 0 else np.array([a, b])[:, ::-1]
            if side >= 2:
                pts = size - 1 - pts
            _draw_polyline(cov, col, pts, (grey,) * 3, 1.5 * s)
    t = np.linspace(0, 1, 24)[:, None]
    for h in hair[: p["hair_count"]]:
        p0 = (h[0:2] * 1.2 - 0.1) * size
        ang, length = 2 * math.pi * h[2], (0.2 + 0.7 * h[3]) * size
        p3 = p0 + length * np.array([math.cos(ang), math.sin(ang)])
        normal = np.array([-math.sin(ang), math.cos(ang)])
        p1 = p0 + (p3 - p0) / 3 + normal * (h[4] - 0.5) * 0.6 * length
        p2 = p0 + 2 * (p3 - p0) / 3 + normal * (h[5] - 0.5) * 0.6 * length
        curve = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
        kind = 0 if h[6] < 0.6 else (1 if h[6] < 0.85 else 2)
        colour = np.clip(_HAIR_COLOURS[kind] * (0.8 + 0.4 * h[7]), 0, 255)
        _draw_polyline(cov, col, curve, colour, (1 + h[8]) * s)
    bubbles = []
    if p["bubbles"]:
        for b in bub[1 : 2 + int(bub[0, 0] * MAX_BUBBLES)]:
            centre, radius = b[:2] * size, (0.03 + 0.09 * b[2]) * size
            circle = centre + radius * np.stack([np.cos(t[:, 0] * 6.3), np.sin(t[:, 0] * 6.3)], 1)
            _draw_polyline(cov, col, circle, (235, 235, 235), 1.2 * s)
            bubbles.append((centre, radius))
    return cov, col, bubbles


def lesion_geometry(rng: np.random.Generator, p: dict, size: int) -> list[tuple]:
    """Lesion centres and border radius look-up tables ``r(theta)`` (fixed draws for 3 lesions).

    Border: ``r(theta) = R0 (1 + sum_k a_k cos(k theta + phi_k))``, ``k = 2..12``,
    ``a_k ~ N(0, sigma / k^0.9)``, clipped to ``[0.35, 1.8] R0``, tabulated on 1025 angles in
    ``[-pi, pi]``. Placement of the primary lesion: with ``at_border`` its centre lies within
    ``0.25 R0`` of the visible field's edge (so the lesion crosses it, as ``r >= 0.35 R0``);
    otherwise it is placed so the whole lesion fits inside the field when it can. Satellites
    (radius 0.3-0.7 of the primary) are scattered inside the field.

    Returns:
        ``[(cx, cy, lut float32 [1025])]`` in pixels, one per lesion (sets ``p["border_sigma"]``).
    """
    sigma = rng.uniform(0.03, 0.35, MAX_LESIONS)
    amps = rng.standard_normal((MAX_LESIONS, _K.size)) * sigma[:, None] / _K**0.9
    phases = rng.uniform(0, 2 * math.pi, (MAX_LESIONS, _K.size))
    place = rng.random((MAX_LESIONS, 3))  # direction, distance, satellite radius factor
    p["border_sigma"] = float(sigma[0])
    theta = np.linspace(-math.pi, math.pi, 1025, dtype=np.float64)
    c0 = (size - 1) / 2.0
    field_r = p["aperture_radius_frac"] * size if p["aperture"] else math.inf
    lesions = []
    for i in range(p["n_lesions"]):
        r0 = p["lesion_radius_frac"] * size * (1.0 if i == 0 else 0.3 + 0.4 * place[i, 2])
        shape = 1.0 + (amps[i, :, None] * np.cos(_K[:, None] * theta + phases[i, :, None])).sum(0)
        lut = (r0 * np.clip(shape, 0.35, 1.8)).astype(np.float32)
        r_max = float(lut.max())
        psi = 2 * math.pi * place[i, 0]
        direction = np.array([math.cos(psi), math.sin(psi)])
        # Distance from the centre to the field edge along psi (square image, optionally the
        # aperture).
        with np.errstate(divide="ignore"):
            square = np.min(np.abs(c0 / np.where(direction == 0, 1e-12, direction)))
        edge = min(square, field_r - 1.0)
        if i == 0 and p["at_border"]:
            dist = edge - 0.25 * r0 * place[i, 1]  # centre within 0.25 R0 of the edge; r >= 0.35 R0
        elif i == 0:
            slack = min(c0, field_r) - r_max - 2.0
            dist = max(0.0, slack) * math.sqrt(place[i, 1])
            dist = min(dist, max(0.0, edge - r_max - 2.0))
        else:
            dist = 0.75 * min(c0, field_r) * math.sqrt(place[i, 1])
        lesions.append((c0 + dist * direction[0], c0 + dist * direction[1], lut))
    return lesions
