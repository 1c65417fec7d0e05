"""Evaluate a checkpoint: ``python tools/evaluate.py --ckpt RUN/checkpoints/best.pt --split test
--out DIR``.

Needs only the checkpoint (the experiment config is inside). Writes ``DIR/metrics.json``,
``DIR/per_image.csv``
(one row per image with its metadata) and ``DIR/metrics.md``. ``--set data.key=value`` changes the
data (e.g. the
root folder of a real dataset, or another dataset for external testing).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path


def write_rows(rows: list[dict], path: Path) -> None:
    """Per-image rows as CSV (columns: union of the rows' keys, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def postprocess_and_robustness(
    model, dataset, config, device, post_steps, kinds, *, boundary=True, max_images=None
) -> dict:
    """The optional evaluations: ``postprocessed`` metrics and ``robustness`` results."""
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model
    from segmentation.evaluation.postprocess import postprocessed_predictor
    from segmentation.evaluation.robustness import evaluate_adversarial, evaluate_corruptions
    from segmentation.losses import BCEDiceLoss

    extra: dict = {}
    if post_steps:
        metrics, _ = evaluate_model(
            model,
            dataset,
            device=device,
            eval_config=config.eval,
            boundary=boundary,
            collate_fn=collate,
            predictor=postprocessed_predictor(post_steps),
        )
        extra["postprocessed"] = {"steps": post_steps, **metrics}
    common = dict(
        device=device,
        eval_config=config.eval,
        seed=config.train.seed,
        max_images=max_images,
        collate_fn=collate,
    )
    robustness = {}
    if "corruptions" in kinds:
        image_size = config.raw["data"].get("image_size")
        robustness["corruptions"] = evaluate_corruptions(
            model, dataset, image_size=image_size, **common
        )
    if "adversarial" in kinds:
        # the attacked loss is Dice + BCE whatever the run trained with (Paschali et al. 2018)
        loss_fn = BCEDiceLoss()
        robustness["adversarial"] = evaluate_adversarial(model, dataset, loss_fn=loss_fn, **common)
    if robustness:
        extra["robustness"] = robustness
    return extra


def extra_tables(extra: dict, out: Path) -> str:
    """Markdown for :func:`postprocess_and_robustness`; writes ``out/robustness.png``."""
    from segmentation.evaluation.robustness import degradation_plot, robustness_tables
    from segmentation.reporting.tables import markdown_table

    text = ""
    if "postprocessed" in extra:
        post = {k: v for k, v in extra["postprocessed"].items() if k != "steps"}
        steps = ", ".join(extra["postprocessed"]["steps"])
        text += f"\n\n## With post-processing ({steps})\n\n{markdown_table(post)}"
    if "robustness" in extra:
        degradation_plot(extra["robustness"], out / "robustness.png")
        text += f"\n\n## Robustness\n\n{robustness_tables(extra['robustness'])}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint file (best.pt or last.pt)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. data.root=/data/isic2018",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-boundary", action="store_true", help="skip HD95/ASSD (faster)")
    parser.add_argument(
        "--groups",
        action="append",
        default=[],
        choices=["ita", "fitzpatrick", "contrast", "tags"],
        help="fairness report per group (repeatable): Dice per ITA bin, Fitzpatrick group (DDI),\n"
        "lesion-skin contrast or synthetic difficulty tag; see segmentation/evaluation/fairness.py",
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per group")
    parser.add_argument(
        "--contrast-bins",
        default="10,20",
        metavar="LOW,HIGH",
        help="Delta E edges of the low/medium/high contrast groups (default 10,20)",
    )
    parser.add_argument(
        "--report", metavar="DIR", help="also write DIR/report.md with PNG figures (and curves)"
    )
    parser.add_argument(
        "--postprocess",
        metavar="STEPS",
        help="label-free post-processing, e.g. lcc,fill_holes (steps: lcc, fill_holes, opening);\n"
        "metrics are reported without and with it (metrics.json 'postprocessed')",
    )
    parser.add_argument(
        "--robustness",
        metavar="KINDS",
        help="corruptions and/or adversarial (comma-separated): metrics.json 'robustness',\n"
        "tables in metrics.md and OUT/robustness.png; see segmentation/evaluation/robustness.py",
    )
    parser.add_argument(
        "--sampling-steps",
        metavar="K,K,...",
        help="sampling networks (SegDT): Dice and ms/image of predict(steps=K) for each K,\n"
        "e.g. 1,2,4,8 (metrics.json 'sampling_steps', a table in metrics.md)",
    )
    parser.add_argument(
        "--robustness-images", type=int, metavar="N", help="robustness on the first N images only"
    )
    args = parser.parse_args(argv)
    from segmentation.evaluation.postprocess import parse_steps
    from segmentation.evaluation.robustness import parse_kinds

    try:
        post_steps, kinds = parse_steps(args.postprocess), parse_kinds(args.robustness)
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2

    from segmentation.checkpoint import load_checkpoint, model_from_checkpoint
    from segmentation.config import ConfigError, apply_override, validate
    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model, sampling_sweep
    from segmentation.evaluation.fairness import (
        GROUP_TITLES,
        add_skin_tone,
        check_groupings,
        fairness_reports,
    )
    from segmentation.reporting.tables import markdown_table
    from segmentation.training.build import build_dataset, resolve_device

    try:
        ckpt = load_checkpoint(args.ckpt)
        raw = ckpt["config"]
        for assignment in args.set:
            apply_override(raw, assignment)
        config = validate(raw, source=f"{args.ckpt} (config inside the checkpoint)")
        dataset = build_dataset(config, args.split, train=False)
        contrast_bins = tuple(float(v) for v in args.contrast_bins.split(","))
        if len(contrast_bins) != 2:
            raise ValueError(f"--contrast-bins takes two numbers, got '{args.contrast_bins}'.")
        if args.groups:
            check_groupings(args.groups, dataset.load(0)[2] if hasattr(dataset, "load") else {})
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = model_from_checkpoint(ckpt)
    device = resolve_device(config.train.device)
    model.to(device)
    metrics, rows = evaluate_model(
        model,
        dataset,
        device=device,
        eval_config=config.eval,
        boundary=not args.no_boundary,
        collate_fn=collate,
        num_workers=config.train.num_workers,
    )
    # skin tone from the raw image and GT mask, after prediction (evaluation/fairness.py)
    rows = add_skin_tone(rows, dataset, contrast_bins=contrast_bins)
    groups = fairness_reports(rows, args.groups, n_boot=args.n_boot) if args.groups else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = postprocess_and_robustness(
        model,
        dataset,
        config,
        device,
        post_steps,
        kinds,
        boundary=not args.no_boundary,
        max_images=args.robustness_images,
    )
    if args.sampling_steps:
        sweep = sampling_sweep(
            model,
            dataset,
            [int(k) for k in args.sampling_steps.split(",")],
            device=device,
            eval_config=config.eval,
            boundary=False,
            collate_fn=collate,
        )
        extra["sampling_steps"] = sweep
    payload = {
        "checkpoint": str(args.ckpt),
        "step": ckpt["step"],
        "split": args.split,
        "network": ckpt["model_spec"]["name"],
        "command": shlex.join(["python", "tools/evaluate.py", *(argv or sys.argv[1:])]),
        **metrics,
        **extra,
        **({"groups": groups} if groups else {}),
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    write_rows(rows, out / "per_image.csv")
    table = markdown_table(metrics) + extra_tables(extra, out)
    if "sampling_steps" in extra:
        table += (
            "\n\n## Sampling steps\n\n| K | Dice | IoU | global Dice | ms/image |\n"
            "|---|---|---|---|---|\n"
        )
        table += "\n".join(
            f"| {r['steps']} | {r['dice']:.4f} | {r['iou']:.4f} | {r['global_dice']:.4f} | "
            f"{r['ms_per_image']:.1f} |"
            for r in extra["sampling_steps"]
        )
    for column, group_table in groups.items():
        title = GROUP_TITLES.get(column, column)
        table += f"\n\n## Dice by {title}\n\n{markdown_table(group_table)}"
    (out / "metrics.md").write_text(f"# {payload['network']} on {args.split}\n\n{table}\n")
    print(table)
    if args.report:
        from segmentation.reporting.figures import write_report

        report = write_report(
            args.report,
            metrics=payload,
            rows=rows,
            title=f"{payload['network']} on {args.split}",
            header={k: payload[k] for k in ("checkpoint", "step", "split", "command")},
            model=model,
            dataset=dataset,
            device=device,
            run_dir=Path(args.ckpt).resolve().parent.parent,  # RUN/checkpoints/best.pt
        )
        if "robustness" in extra:  # the degradation plot joins the report
            from segmentation.evaluation.robustness import degradation_plot, robustness_tables

            degradation_plot(extra["robustness"], Path(report).parent / "robustness.png")
            with open(report, "a") as f:
                f.write(f"\n## Robustness\n\n{robustness_tables(extra['robustness'])}\n\n")
                f.write("![Dice under corruptions and attacks](robustness.png)\n")
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
