"""Print (or write into README.md) the table of registered networks with their parameter counts.

    python tools/networks_table.py                  # markdown table to stdout
    python tools/networks_table.py --write-readme   # replace the table between the README markers

Counts are for 3 input channels and 1 class, built with random weights (nothing is downloaded).
Networks that need a local weight file to be built (``segdt_taesd``) or an optional package that is
not installed (``sam3_*`` without the ``[sam3]`` extra) are listed without counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmentation.cli.errors import cli_main

ROOT = Path(__file__).resolve().parents[2]

START, END = "<!-- networks:start -->", "<!-- networks:end -->"


def table() -> str:
    import networks

    lines = [
        "| registered name | class | parameters (M) | trainable (M) |",
        "|---|---|---:|---:|",
    ]
    for name in networks.list_networks():
        try:
            model = networks.build_network(name, in_channels=3, num_classes=1)
        except (ValueError, FileNotFoundError) as err:
            lines.append(f"| `{name}` | - | needs a weight file ({str(err).split(';')[0]}) | |")
            continue
        except ImportError as err:  # an optional extra; --write-readme needs every extra installed
            lines.append(f"| `{name}` | - | needs an optional package ({err}) | |")
            continue
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lines.append(
            f"| `{name}` | `{type(model).__name__}` | {total / 1e6:.2f} | {trainable / 1e6:.2f} |"
        )
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    text = table()
    if not args.write_readme:
        print(text)
        return 0
    from segmentation.errors import UserError
    from segmentation.reporting.tables import replace_between_markers

    readme = ROOT / "README.md"
    content = readme.read_text()
    try:
        new = replace_between_markers(content, START, END, text)
    except ValueError as err:
        raise UserError(f"{readme}: {err.args[0]}") from None
    if new != content:
        readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
