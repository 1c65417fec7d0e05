"""The README's two set-up commands are what CI runs (a fresh machine must be able to follow
them)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them():
    install, tests = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    install_part = install.split(" && python tools/train.py")[0]
    assert install_part in ci, f".ci/run does not install as the README says: {install_part}"
    assert "python tools/train.py --cfg experiments/att_swinunet.yaml" in install
    test_command = tests.split("&&")[-1].strip()
    assert test_command in ci, f".ci/run does not run the README's test command: {test_command}"
    assert (ROOT / "experiments" / "att_swinunet.yaml").is_file()


def test_readme_links_every_document_in_docs():
    text = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", text))
    docs = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert docs, "docs/ has no markdown files"
    assert docs <= linked, f"README.md does not link {sorted(docs - linked)}"


def test_networks_table_lists_a_network_whose_optional_package_is_missing(monkeypatch):
    """`tools/networks_table.py` works without the optional extras: such rows say what they need."""
    import networks
    from segmentation.cli import networks_table

    monkeypatch.setattr(networks, "list_networks", lambda: ["unet_tiny", "sam3_adapter"])
    real = networks.build_network

    def build(name, **kwargs):
        if name == "sam3_adapter":
            raise ImportError("No module named 'sam3'")
        return real(name, **kwargs)

    monkeypatch.setattr(networks, "build_network", build)
    lines = networks_table.table().splitlines()
    assert lines[2].startswith("| `unet_tiny` | `UNet` |")
    needs = "needs an optional package (No module named 'sam3')"
    assert lines[3] == f"| `sam3_adapter` | - | {needs} | |"


def test_readme_ablation_sentence_and_docs_table_match_the_ablation_json():
    """The spatial-fusion numbers in prose come from benchmarks/ablation_spatial_fusion.json."""
    import json

    result = json.loads((ROOT / "benchmarks" / "ablation_spatial_fusion.json").read_text())
    rows = result["rows"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    docs = (ROOT / "docs" / "benchmark.md").read_text()
    for fusion, name in (("sum", "att_swinunet_cross_spatial"),
                         ("mean", "att_swinunet_cross_spatial_mean"),
                         ("gated", "att_swinunet_cross_spatial_gated")):  # fmt: skip
        row = rows[name]
        assert f"`{fusion}` {row['dice_mean']:.3f} +- {row['dice_std']:.3f}" in readme, fusion
        assert f"{row['dice_mean']:.4f} +- {row['dice_std']:.4f}" in docs, fusion
        seeds = " / ".join(f"{s['dice']:.4f}" for s in row["per_seed"])
        assert seeds in docs, fusion
        delta = row["delta_vs_unet"]
        if delta is None:
            continue
        lo, hi = delta["ci95"]
        verdict = "no difference"  # the prose's reading must be the JSON's
        if delta["significant"]:
            verdict = "significantly " + ("lower" if delta["mean"] < 0 else "higher")
        assert (
            f"delta {delta['mean']:+.3f}" in readme
            and f"[{lo:+.3f}, {hi:+.3f}]: {verdict}" in readme
        )
        assert f"{delta['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]" in docs
