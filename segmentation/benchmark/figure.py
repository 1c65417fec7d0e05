"""The main benchmark figure: Dice (mean over seeds, std as error bar) against training compute.

One marker shape per network family (the network's module), filled for the methods and hollow for
the SAM-family pipeline checks; x is the counted training compute of a run in TMAC (log scale).
Written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

_MARKERS = "osD^vP*Xh<>p"


def figure_title(protocol: dict) -> str:
    """The main suite's title, or the ablation folder's (``--configs``) so nobody mistakes it."""
    suite = "main benchmark"
    if not protocol["configs"].startswith("experiments/synthetic/"):
        suite = f"ablation {protocol['configs'].removesuffix('/*.yaml')}"
    return f"dermseg {suite}: synthetic data, {protocol['image_size']} px, {protocol['cpu']}"


def plot_main(result: dict, path: str | Path) -> Path:
    """Write the figure of ``result`` (``benchmarks/synthetic.json``) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"].values()
            if r.get("train_tmac") and r["dice_mean"] is not None]  # fmt: skip
    families = sorted({r["family"] for r in rows})
    marker = {f: _MARKERS[i % len(_MARKERS)] for i, f in enumerate(families)}
    colour = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    labelled = set()
    for row in rows:
        fam = row["family"]
        hollow = row["block"] != "methods"
        ax.errorbar(
            row["train_tmac"], row["dice_mean"], yerr=row["dice_std"] or 0.0, fmt=marker[fam],
            color=colour[fam], mfc="none" if hollow else colour[fam], ms=7, capsize=3,
            label=None if fam in labelled else fam + (" (pipeline check)" if hollow else ""),
        )  # fmt: skip
        labelled.add(fam)
        ax.annotate(row["name"], (row["train_tmac"], row["dice_mean"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    p = result["protocol"]
    ax.set_xscale("log")
    ax.set_xlabel("training compute per run (TMAC, counted; log scale)")
    ax.set_ylabel(f"test per-image Dice (mean +- std over seeds {p['seeds']})")
    ax.set_title(figure_title(p))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no point hidden
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
