"""Metrics of docs/protocol.md: reference table, aggregation, boundary definitions, empty policies,
parity with MONAI and smp, accumulator gathering, metric registry and the group report."""

import math

import numpy as np
import pytest
import torch

from segmentation.evaluation.groups import group_report
from segmentation.evaluation.metrics import (
    METRICS,
    SegmentationMetrics,
    assd,
    binarize,
    confusion_counts,
    hausdorff_distance,
    hd95,
    higher_is_better,
    metric_value,
    scores_from_counts,
)
from segmentation.reporting.tables import markdown_table


def _mask(pixels=(), size=8):
    m = torch.zeros(size, size, dtype=torch.long)
    for r, c in pixels:
        m[r, c] = 1
    return m


def _block(r0, r1, c0, c1, size=8):
    m = torch.zeros(size, size, dtype=torch.long)
    m[r0:r1, c0:c1] = 1
    return m


def _reference_cases():
    gt20 = _block(1, 5, 1, 6)  # 4 x 5 = 20 pixels
    inside13 = torch.zeros_like(gt20)
    inside13.view(-1)[gt20.view(-1).nonzero()[:13, 0]] = 1
    inside12 = torch.zeros_like(gt20)
    inside12.view(-1)[gt20.view(-1).nonzero()[:12, 0]] = 1
    return {
        # case: (ground truth, prediction, dice, iou, thresholded jaccard)
        "A": (_mask(), _mask(), 1.0, 1.0, 1.0),
        "B": (_mask(), _mask([(3, 3)]), 0.0, 0.0, 0.0),
        "C": (_mask([(3, 3)]), _mask(), 0.0, 0.0, 0.0),
        "D": (_mask([(3, 3)]), _mask([(3, 3)]), 1.0, 1.0, 1.0),
        "F": (_block(2, 6, 2, 6), _block(2, 6, 3, 7), 0.75, 0.6, 0.0),
        "H": (gt20, inside13, 0.787879, 0.65, 0.65),
        "I": (gt20, inside12, 0.75, 0.6, 0.0),
    }


@pytest.mark.parametrize("case", sorted(_reference_cases()))
def test_protocol_reference_table(case):
    gt, pred, dice, iou, tj = _reference_cases()[case]
    assert int(gt.sum()) in (0, 1, 16, 20) and pred.shape == (8, 8)
    scores = scores_from_counts(confusion_counts(pred[None], gt[None]))
    assert scores["dice"][0] == pytest.approx(dice, abs=5e-7)
    assert scores["iou"][0] == pytest.approx(iou, abs=1e-12)
    assert scores["thresholded_jaccard"][0] == pytest.approx(tj, abs=1e-12)
    # the same through the accumulator, from logits
    meter = SegmentationMetrics(boundary=False)
    meter.update((pred.float() * 2 - 1)[None, None] * 5, gt[None])
    assert meter.compute()["per_image"]["dice"] == pytest.approx(dice, abs=5e-7)


def test_thresholded_jaccard_keeps_exactly_065_in_float64():
    # 13/20, 26/40, 65/100: J is the double nearest 0.65 and must be kept; 0.6499 is dropped
    counts = np.array([[13, 0, 7, 0], [26, 4, 10, 5], [65, 35, 0, 0], [6499, 3501, 0, 0]])
    tj = scores_from_counts(counts)["thresholded_jaccard"]
    assert tj.dtype == np.float64
    np.testing.assert_array_equal(tj, [0.65, 0.65, 0.65, 0.0])
    # float32 would drop it: the reason the comparison is float64
    assert float(np.float32(13) / np.float32(20)) < 0.65


def test_confusion_counts_and_other_scores():
    pred = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    gt = torch.tensor([[[1, 0, 1, 0]], [[0, 0, 0, 0]]])
    counts = confusion_counts(pred, gt)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [[1, 1, 1, 1], [0, 0, 0, 4]])
    s = scores_from_counts(counts)
    np.testing.assert_allclose(s["sensitivity"], [0.5, 1.0])
    np.testing.assert_allclose(s["specificity"], [0.5, 1.0])
    np.testing.assert_allclose(s["accuracy"], [0.5, 1.0])


@pytest.mark.parametrize("empty,expected", [("one", 1.0), ("zero", 0.0), ("nan", math.nan)])
def test_empty_policies(empty, expected):
    counts = np.array(
        [[0, 0, 0, 64], [0, 1, 0, 63], [4, 0, 0, 60]]
    )  # empty/empty, FP only, perfect
    s = scores_from_counts(counts, empty=empty)
    for key in ("dice", "iou", "thresholded_jaccard"):
        np.testing.assert_equal(s[key], [expected, 0.0, 1.0])
    # sensitivity is 0/0 whenever the ground truth is empty (smp zero_division rule)
    np.testing.assert_equal(s["sensitivity"], [expected, expected, 1.0])
    meter = SegmentationMetrics(empty=empty, boundary=False)
    logits = torch.full((3, 1, 8, 8), -3.0)
    logits[1, 0, 0, 0] = 3.0
    logits[2, 0, :2, :2] = 3.0
    mask = torch.zeros(3, 8, 8, dtype=torch.long)
    mask[2, :2, :2] = 1
    meter.update(logits, mask)
    mean = meter.compute()["per_image"]["dice"]
    want = {"one": 2 / 3, "zero": 1 / 3, "nan": 0.5}[empty]  # NaN is left out of the mean
    assert mean == pytest.approx(want)


def test_aggregation_example_macro_vs_micro():
    perfect = _block(2, 6, 2, 6)  # 16-pixel lesion
    missed = _mask([(4, 4)])
    gt = torch.stack([perfect, missed, _mask()])
    pred = torch.stack([perfect, _mask(), _mask()])
    meter = SegmentationMetrics(boundary=False)
    meter.update(pred[:, None].float() * 10 - 5, gt)
    result = meter.compute()
    assert round(result["per_image"]["dice"], 4) == 0.6667
    assert round(result["global"]["dice"], 4) == 0.9697
    assert result["global"]["iou"] == pytest.approx(16 / 17)
    assert result["n_images"] == 3


def _square_and_blob():
    """8x8 square (rows/cols 2..9) in a 32x32 image; the prediction adds a 2-pixel blob at (22, 20),
    (22, 21), 17.03 and 17.69 px from the square's corner (9, 9)."""
    gt = torch.zeros(32, 32, dtype=torch.long)
    gt[2:10, 2:10] = 1
    pred = gt.clone()
    pred[22, 20:22] = 1
    return pred, gt


def test_hd95_definitions_protocol_example():
    pred, gt = _square_and_blob()
    assert round(hd95(pred, gt, "monai"), 4) == 9.3662
    assert hd95(pred, gt, "medpy") == 0.0
    assert round(hausdorff_distance(pred, gt), 4) == 17.6918 == round(math.sqrt(313), 4)
    assert round(hausdorff_distance(pred, gt, definition="medpy"), 4) == 17.6918
    assert round(assd(pred, gt), 4) == 0.5986  # pooled mean: (sqrt(290) + sqrt(313)) / 58
    assert assd(pred, gt, "medpy") == pytest.approx((math.sqrt(290) + math.sqrt(313)) / 30 / 2)
    assert hd95(gt, pred) == hd95(pred, gt)  # symmetric


def test_boundary_metrics_match_monai():
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(0)
    pred, gt = _square_and_blob()
    preds, gts = [pred], [gt]
    for _ in range(6):  # random blobs, some touching the image border
        p, g = (torch.zeros(32, 32, dtype=torch.long) for _ in range(2))
        for m in (p, g):
            for _ in range(rng.integers(1, 4)):
                r, c = rng.integers(0, 32), rng.integers(0, 32)
                m[
                    max(r - 6, 0) : r + rng.integers(1, 9), max(c - 5, 0) : c + rng.integers(1, 9)
                ] = 1
        preds.append(p)
        gts.append(g)
    p, g = torch.stack(preds), torch.stack(gts)
    ours_hd95, ours_assd = hd95(p, g), assd(p, g)
    monai_hd95 = compute_hausdorff_distance(p[:, None], g[:, None], percentile=95)[:, 0]
    monai_assd = compute_average_surface_distance(p[:, None], g[:, None], symmetric=True)[:, 0]
    np.testing.assert_allclose(ours_hd95, monai_hd95.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours_assd, monai_assd.numpy(), rtol=1e-5)
    monai_hd = compute_hausdorff_distance(p[:, None], g[:, None])[:, 0]
    np.testing.assert_allclose(hausdorff_distance(p, g), monai_hd.numpy(), rtol=1e-5)


def test_boundary_nan_when_a_mask_is_empty_and_excluded_count():
    pred, gt = _square_and_blob()
    assert math.isnan(hd95(pred, torch.zeros_like(gt)))
    assert math.isnan(assd(torch.zeros_like(pred), gt))
    meter = SegmentationMetrics()
    logits = torch.stack([pred, torch.zeros_like(pred), pred])[:, None].float() * 8 - 4
    mask = torch.stack([gt, gt, torch.zeros_like(gt)])
    meter.update(logits, mask, ids=["a", "b", "c"])
    result = meter.compute()
    assert result["boundary_excluded"] == 2
    assert (
        round(result["per_image"]["hd95"], 4) == 9.3662
    )  # mean over the one image with both masks
    assert result["definitions"]["hd95"] == "monai: max of directed 95th percentiles, pixels"
    medpy = SegmentationMetrics(hd95_definition="medpy")
    medpy.update(logits, mask)
    assert medpy.compute()["per_image"]["hd95"] == 0.0


def test_random_masks_match_monai_and_smp():
    import segmentation_models_pytorch as smp
    from monai.metrics import DiceMetric, MeanIoU

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 1, 16, 16, generator=g) + torch.linspace(-3, 3, 12).view(12, 1, 1, 1)
    mask = (torch.rand(12, 16, 16, generator=g) < torch.linspace(0, 0.8, 12).view(12, 1, 1)).long()
    mask[0] = 0
    logits[0] = -10.0  # one empty/empty image
    pred = binarize(logits)
    ours = scores_from_counts(confusion_counts(pred, mask))
    # MONAI on thresholded input; ignore_empty=False is the "one" policy
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)
    np.testing.assert_allclose(ours["dice"], dice(pred[:, None], mask[:, None])[:, 0], rtol=1e-6)
    np.testing.assert_allclose(ours["iou"], iou(pred[:, None], mask[:, None])[:, 0], rtol=1e-6)
    # smp: same counts; zero_division=1 is the "one" policy
    tp, fp, fn, tn = smp.metrics.get_stats(pred[:, None], mask[:, None], mode="binary")
    smp_counts = torch.cat([tp, fp, fn, tn], dim=1).numpy()
    np.testing.assert_array_equal(confusion_counts(pred, mask), smp_counts)
    stats = (tp, fp, fn, tn)
    for name, fn_ in [("iou", smp.metrics.iou_score), ("dice", smp.metrics.f1_score)]:
        np.testing.assert_allclose(ours[name], fn_(*stats, reduction="none")[:, 0], rtol=1e-6)
    for name in ("sensitivity", "specificity", "accuracy"):
        smp_v = getattr(smp.metrics, name)(*stats, reduction="none")[:, 0]
        np.testing.assert_allclose(ours[name], smp_v, rtol=1e-6)
    meter = SegmentationMetrics(boundary=False)
    meter.update(logits, mask)
    micro = smp.metrics.f1_score(*stats, reduction="micro")
    assert meter.compute()["global"]["dice"] == pytest.approx(float(micro), rel=1e-6)


def test_binarize_rules():
    x = torch.randn(2, 1, 5, 5)
    assert torch.equal(binarize(x), (torch.sigmoid(x) > 0.5).long()[:, 0])
    two = torch.randn(2, 3, 5, 5)
    assert torch.equal(binarize(two), (two.argmax(1) == 1).long())
    assert torch.equal(binarize(two, foreground=2), (two.argmax(1) == 2).long())
    with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
        binarize(torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="foreground class"):
        binarize(two, foreground=3)


def test_multiclass_logits_use_class_one():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :4] = 1
    mask[0, 6:] = 2  # e.g. a marker label: not lesion
    logits = torch.zeros(1, 3, 8, 8)
    logits[0, 1, :4] = 5.0
    logits[0, 2, 6:] = 5.0
    meter = SegmentationMetrics(boundary=False)
    meter.update(logits, mask)
    assert meter.compute()["per_image"]["dice"] == 1.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="threshold first"):
        confusion_counts(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="> 128"):
        confusion_counts(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="same shape"):
        confusion_counts(
            torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="empty policy"):
        scores_from_counts(np.zeros((1, 4), np.int64), empty="ignore")
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        scores_from_counts(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="definition"):
        hd95(torch.ones(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.long), "scipy")
    meter = SegmentationMetrics()
    with pytest.raises(ValueError, match="no images"):
        meter.compute()
    with pytest.raises(ValueError, match="mask size"):
        meter.update(torch.zeros(1, 1, 8, 8), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or inf"):
        meter.update(torch.full((1, 1, 4, 4), math.nan), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels in \[0, 1\]"):
        meter.update(torch.zeros(1, 2, 4, 4), torch.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match="3 ids"):
        meter.update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), ids="abc")
    with pytest.raises(ValueError, match="hd95_definition"):
        SegmentationMetrics(hd95_definition="max")


def _batches():
    g = torch.Generator().manual_seed(1)
    for b in range(3):
        logits = torch.randn(4, 1, 12, 12, generator=g)
        mask = (torch.rand(4, 12, 12, generator=g) > 0.6).long()
        ids = [f"img{b}{i}" for i in range(4)]
        meta = [{"group": ["x", "y"][i % 2], "ita": torch.tensor(float(i))} for i in range(4)]
        yield logits, mask, ids, meta


def test_rows_state_and_merge_are_exact():
    whole = SegmentationMetrics()
    parts = [SegmentationMetrics() for _ in range(3)]
    for (logits, mask, ids, meta), part in zip(_batches(), parts, strict=True):
        whole.update(logits, mask, ids, meta)
        part.update(logits, mask, ids, meta)
    merged = SegmentationMetrics().merge(*(p.state() for p in parts))
    _assert_same(merged, whole)
    rows = merged.rows()
    assert len(rows) == 12 and rows[0]["id"] == "img00" and rows[0]["group"] == "x"
    assert rows[0]["ita"] == 0.0 and isinstance(rows[0]["ita"], float)  # tensors become numbers
    assert {"tp", "fp", "fn", "tn", *METRICS.names()} - {"global_dice", "global_iou"} <= set(
        rows[0]
    )
    # a padded distributed sampler repeats images: refused unless dropped explicitly
    padded = SegmentationMetrics().merge(parts[0], parts[0].state())
    with pytest.raises(ValueError, match="duplicate image ids"):
        padded.compute()
    dedup = SegmentationMetrics().merge(parts[0], parts[0], drop_duplicates=True)
    assert dedup.compute()["n_images"] == 4
    with pytest.raises(ValueError, match="settings"):
        SegmentationMetrics(empty="nan").merge(parts[0])
    whole.reset()
    with pytest.raises(ValueError, match="no images"):
        whole.rows()


def _assert_same(a, b):
    ra, rb = a.compute(), b.compute()
    for section in ("per_image", "global"):
        for k in ra[section]:
            assert ra[section][k] == rb[section][k] or math.isnan(rb[section][k]), k
    assert (ra["n_images"], ra["boundary_excluded"]) == (rb["n_images"], rb["boundary_excluded"])
    assert a.rows() == b.rows()


def test_metric_registry_and_selection():
    meter = SegmentationMetrics(boundary=False)
    for logits, mask, ids, meta in _batches():
        meter.update(logits, mask, ids, meta)
    result = meter.compute()
    assert metric_value(result, "dice") == result["per_image"]["dice"]
    assert metric_value(result, "global_dice") == result["global"]["dice"]
    assert metric_value(result, "thresholded_jaccard") == result["per_image"]["thresholded_jaccard"]
    assert higher_is_better("dice") and not higher_is_better("hd95")
    with pytest.raises(ValueError, match="Did you mean 'dice'.*accuracy, assd, dice, global_dice"):
        metric_value(result, "dise")


def test_group_report_hand_example():
    rows = (
        [{"dice": v, "tone": "light"} for v in (0.8, 0.9)]
        + [{"dice": 0.6, "tone": "dark"}]
        + [{"dice": 0.7, "tone": "tan"} for _ in range(3)]
        + [{"dice": 0.1, "tone": None}, {"dice": math.nan, "tone": "tan"}]
    )
    rep = group_report(rows, "tone", n_boot=1000, seed=0)
    g = rep["groups"]
    assert list(g) == ["dark", "light", "tan"]
    assert (g["light"]["n"], g["dark"]["n"], g["tan"]["n"]) == (2, 1, 3)
    assert g["light"]["mean"] == pytest.approx(0.85) and g["tan"]["mean"] == pytest.approx(0.7)
    # resample means of {0.8, 0.9} are 0.8, 0.85, 0.9 with p = 1/4, 1/2, 1/4
    assert (g["light"]["ci_low"], g["light"]["ci_high"]) == pytest.approx((0.8, 0.9))
    assert (g["tan"]["ci_low"], g["tan"]["ci_high"]) == pytest.approx((0.7, 0.7))
    assert math.isnan(g["dark"]["ci_low"]) and math.isnan(g["dark"]["ci_high"])
    assert rep["worst_group"] == "dark" and rep["worst_value"] == pytest.approx(0.6)
    assert rep["gap"] == pytest.approx(0.25)
    assert rep["nar"] == pytest.approx(0.25 / ((0.85 + 0.6 + 0.7) / 3))
    assert rep["n_missing"] == 2
    assert group_report(rows, "tone", seed=0) == rep  # deterministic in the seed
    ordered = group_report(rows, "tone", order=["light", "tan", "dark"])
    assert list(ordered["groups"]) == ["light", "tan", "dark"]
    tagged = [{"dice": 0.5, "tags": ["hair", "low_contrast"]}, {"dice": 0.9, "tags": ["hair"]}]
    tagged.append({"dice": 0.7, "tags": []})
    tag_rep = group_report(tagged, "tags", n_boot=10)
    assert {k: v["n"] for k, v in tag_rep["groups"].items()} == {"hair": 2, "low_contrast": 1}
    assert tag_rep["groups"]["hair"]["mean"] == pytest.approx(0.7) and tag_rep["n_missing"] == 1
    hd = group_report([{"hd95": v, "k": k} for v, k in [(1.0, "a"), (5.0, "b")]], "k", "hd95")
    assert hd["worst_group"] == "b"  # larger distance is worse
    text = markdown_table(rep)
    assert "| dark | 1 | 0.6000 | [n/a, n/a] |" in text and "NAR: 0.3488" in text
    with pytest.raises(ValueError, match="no row has both"):
        group_report(rows, "fitzpatrick")
    with pytest.raises(ValueError, match="ci must be"):
        group_report(rows, "tone", ci=95)


def test_markdown_table_of_metrics():
    pred, gt = _square_and_blob()
    meter = SegmentationMetrics()
    meter.update(pred[None, None].float() * 2 - 1, gt[None])
    text = markdown_table(meter.compute())
    assert "| hd95 (px, mean of 1 images) | 9.3662 |" in text
    assert "| global dice (micro, pooled pixels) |" in text
    assert "- global: micro: counts pooled over all pixels" in text
    with pytest.raises(ValueError, match="markdown_table expects"):
        markdown_table({"dice": 1.0})


def test_boundary_not_computed_is_not_reported_as_excluded():
    from segmentation.reporting.tables import markdown_table

    meter = SegmentationMetrics(boundary=False)
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, 2:5, 2:5] = 1
    meter.update((mask[:, None].float() * 2 - 1), mask)
    result = meter.compute()
    assert result["boundary_excluded"] is None
    table = markdown_table(result)
    assert "hd95 (not computed)" in table and "boundary excluded" not in table
