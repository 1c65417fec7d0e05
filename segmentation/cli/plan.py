"""Plan an experiment from its training data (nnU-Net's 2-D rules, ``segmentation.planning``).

    python tools/plan.py --cfg experiments/nnunet2d.yaml [--set section.key=value ...] [--out DIR]

Reads the training split once, prints the plan (input size, stages, strides and kernels, batch
size, normalisation; which settings it fills and which the experiment states) and writes
``DIR/plan.json`` (default ``runs/<config name>-plan-<time>``), which also holds the planned
config under ``"config"``. ``train.plan: auto`` runs the same step at the start of training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segmentation.cli.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cfg", required=True, help="experiment YAML")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (YAML syntax), repeatable",
    )
    parser.add_argument(
        "--out", help="run folder for plan.json (default runs/<config>-plan-<time>)"
    )
    args = parser.parse_args(argv)

    from segmentation.config import load_config
    from segmentation.planning import format_plan, plan_config

    planned, plan = plan_config(load_config(args.cfg, args.set))
    print(format_plan(plan))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/{Path(args.cfg).stem}-plan-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps({**plan, "config": planned.raw}, indent=2))
    print(f"wrote {out / 'plan.json'}")
    return 0
