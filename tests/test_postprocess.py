"""Label-free post-processing steps on hand-made masks, and the evaluation predictor wrapper."""

import numpy as np
import pytest
import torch

from segmentation.evaluation.postprocess import (
    fill_holes,
    largest_component,
    opening,
    parse_steps,
    postprocess_mask,
    postprocessed_predictor,
)


def blobs():
    mask = np.zeros((12, 12), bool)
    mask[1:6, 1:6] = True  # 25 px
    mask[8:10, 8:10] = True  # 4 px
    mask[8, 1] = True  # 1 px, diagonal neighbour of nothing
    return mask


def test_largest_component_keeps_the_biggest_blob():
    out = largest_component(blobs())
    assert out.sum() == 25 and out[1:6, 1:6].all()
    empty = np.zeros((5, 5), bool)
    np.testing.assert_array_equal(largest_component(empty), empty)
    diagonal = np.eye(4, dtype=bool)  # one 8-connected component
    np.testing.assert_array_equal(largest_component(diagonal), diagonal)


def test_fill_holes_fills_enclosed_background_only():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False  # 9-pixel hole
    filled = fill_holes(ring)
    assert filled.sum() == 25
    open_ring = ring.copy()
    open_ring[3, 5] = False  # the hole now reaches the outside background
    open_ring[3, 4] = False
    np.testing.assert_array_equal(fill_holes(open_ring), open_ring)  # nothing is enclosed


def test_opening_removes_specks_and_keeps_large_shapes():
    mask = np.zeros((20, 20), bool)
    mask[4:16, 4:16] = True  # 12 x 12 square
    mask[1, 18] = True  # speck
    out = opening(mask, radius=1)
    assert not out[1, 18]
    assert out[5:15, 5:15].all() and not (out & ~mask).any()  # a disc only trims the corners
    with pytest.raises(ValueError, match="positive int"):
        opening(mask, radius=0)


def test_chained_steps_and_names():
    mask = blobs()
    mask[3, 3] = False  # hole in the big blob
    out = postprocess_mask(mask, ["lcc", "fill_holes"])
    assert out.sum() == 25
    assert parse_steps("lcc, fill_holes") == ["lcc", "fill_holes"]
    with pytest.raises(KeyError, match="Did you mean 'fill_holes'"):
        parse_steps("lcc,fill_hole")
    with pytest.raises(TypeError, match="accepted: radius"):
        postprocess_mask(mask, [{"name": "opening", "size": 3}])
    with pytest.raises(ValueError, match="2-D mask"):
        largest_component(np.zeros((1, 4, 4), bool))


def test_postprocessed_predictor_returns_logits_of_the_cleaned_mask():
    logits = torch.full((2, 1, 12, 12), -3.0)
    logits[:, 0][torch.from_numpy(np.stack([blobs(), blobs()]))] = 3.0

    def predictor(model, image):
        return logits

    out = postprocessed_predictor(["lcc"], predictor)(None, torch.zeros(2, 3, 12, 12))
    assert out.shape == (2, 1, 12, 12)
    assert ((out[:, 0] > 0).sum(dim=(1, 2)) == 25).all()
    with pytest.raises(ValueError, match="one-channel"):
        postprocessed_predictor(["lcc"], lambda m, x: torch.zeros(1, 2, 4, 4))(None, None)
