"""SAM 3 (networks/sam/sam3_adapter.py): parity with sam3's builder, the official key layout,
identity adapters, the three fine-tuning strategies, the five prompt kinds and their labels."""

import pytest
import torch

import networks
from networks.sam.prompts import PromptedSegmenter
from networks.sam.sam3_adapter import TINY_SAM3, SAM3Adapter
from networks.sam.sam3_blocks import bpe_vocabulary, build_official_sam3, build_small_sam3

PROMPT_KINDS = ["text", "box", "point", "exemplar", "none"]
FULL_SIZE_PARAMETERS = 840_509_750  # sam3 0.1.4 build_sam3_image_model (README, module docstring)


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return SAM3Adapter(architecture=TINY_SAM3, **kwargs)


def batch(size=128):
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, size, size, dtype=torch.long)
    mask[0, 20:60, 30:90] = 1
    mask[1, 70:110, 10:50] = 1
    return torch.randn(2, 3, size, size, generator=gen), mask


def bce(logits, mask):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], mask.float())


def test_full_size_equals_the_sam3_builder_image_model():
    with torch.device("meta"):
        official = build_official_sam3(bpe_vocabulary())
        net = SAM3Adapter(finetune="decoder")
    assert sum(p.numel() for p in official.parameters()) == FULL_SIZE_PARAMETERS
    assert sum(p.numel() for p in net.parameters()) == FULL_SIZE_PARAMETERS
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {f"detector.{k}": tuple(v.shape) for k, v in official.state_dict().items()}
    assert ours == theirs  # the official checkpoint's detector.* layout, shapes included
    with torch.device("meta"):
        adapted = SAM3Adapter(finetune="adapter")
    extra = sum(p.numel() for n, p in adapted.named_parameters() if ".adapter." in n)
    assert sum(p.numel() for p in adapted.parameters()) == FULL_SIZE_PARAMETERS + extra


def test_tiny_is_built_from_the_same_classes_as_the_full_model():
    def structure(model):
        return {(name.split(".")[0], type(m).__name__) for name, m in model.named_modules() if name}

    with torch.device("meta"):
        official = build_official_sam3(bpe_vocabulary())
    small = build_small_sam3(bpe_path=bpe_vocabulary(), **TINY_SAM3)
    assert structure(small) == structure(official)


def test_official_layout_loads_with_no_missing_keys(tmp_path):
    source = tiny(seed=1, finetune="decoder").eval()
    state = dict(source.state_dict())  # detector.* keys, as in sam3.pt
    state["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)  # video parts of sam3.pt
    state["detector.backbone.vision_backbone.sam2_convs.0.conv_1x1.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "sam3.pt")

    net = tiny(seed=2, finetune="decoder", checkpoint=str(tmp_path / "sam3.pt")).eval()
    assert net.load_report["missing"] == []
    assert sorted(net.load_report["unexpected"]) == sorted(
        [
            "tracker.maskmem_tpos_enc",
            "detector.backbone.vision_backbone.sam2_convs.0.conv_1x1.weight",
        ]
    )
    x, _ = batch()
    with torch.no_grad():
        assert torch.equal(net(x), source(x))

    # adapters are the only new keys; RoPE tables (computed buffers) may be absent from a file
    del state["detector.backbone.vision_backbone.trunk.blocks.0.attn.freqs_cis"]
    torch.save(state, tmp_path / "sam3_no_rope.pt")
    adapted = tiny(seed=2, finetune="adapter", checkpoint=str(tmp_path / "sam3_no_rope.pt"))
    assert set(adapted.load_report["missing"]) == {
        k for k in adapted.state_dict() if ".adapter." in k
    } | {"detector.backbone.vision_backbone.trunk.blocks.0.attn.freqs_cis"}


@pytest.mark.parametrize("prompt", ["text", "box", "exemplar"])
def test_adapters_start_as_the_identity(prompt):
    frozen = tiny(finetune="decoder", prompt=prompt).eval()
    adapted = tiny(finetune="adapter", prompt=prompt).eval()
    missing, unexpected = adapted.load_state_dict(frozen.state_dict(), strict=False)
    assert not unexpected and missing and all(".adapter." in k for k in missing)
    x, mask = batch()
    with torch.no_grad():
        assert torch.equal(adapted(x, prompt_mask=mask), frozen(x, prompt_mask=mask))


def test_finetune_strategies_train_the_documented_parameters():
    decoder, adapter, full = (tiny(finetune=f) for f in ("decoder", "adapter", "full"))

    def trainable(net):
        return {n for n, p in net.named_parameters() if p.requires_grad}

    assert trainable(decoder) and all(
        n.startswith("detector.segmentation_head.") for n in trainable(decoder)
    )
    adapters = {n for n in trainable(adapter) if ".adapter." in n}
    assert adapters and trainable(adapter) == trainable(decoder) | adapters
    assert trainable(decoder) < trainable(full)
    assert any(n.startswith("detector.backbone.vision_backbone.trunk.") for n in trainable(full))
    assert not any(n.startswith("detector.transformer.decoder.") for n in trainable(full))


@pytest.mark.parametrize("prompt", PROMPT_KINDS)
def test_full_finetuning_trains_every_parameter_on_the_path(prompt):
    net = tiny(finetune="full", prompt=prompt).train()
    x, mask = batch()
    loss, logs = net.compute_loss({"image": x, "mask": mask}, bce)
    loss.backward()
    for name, p in net.named_parameters():
        if p.requires_grad:  # nonzero: an unused branch would get an all-zero gradient
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{prompt}: {name} is trainable but unused"
    assert logs["oracle_prompt"] == float(prompt not in ("text", "none"))


def test_official_activation_checkpointing_trains():
    """The full model's builder turns activation checkpointing on; train through it (tiny)."""
    net = tiny(finetune="full", prompt="box")
    net.detector = build_small_sam3(
        bpe_path=bpe_vocabulary(), activation_checkpointing=True, **TINY_SAM3
    )
    net.freeze()
    net.train()
    x, mask = batch()
    loss, _ = net.compute_loss({"image": x, "mask": mask}, bce)
    loss.backward()
    trunk = net.detector.backbone.vision_backbone.trunk
    assert trunk.use_act_checkpoint and torch.isfinite(trunk.pos_embed.grad).all()


@pytest.mark.parametrize("prompt", PROMPT_KINDS)
def test_every_prompt_kind_gives_logits_at_any_input_size(prompt):
    net = tiny(prompt=prompt).eval()
    x = torch.randn(1, 3, 90, 150)
    mask = torch.zeros(1, 90, 150, dtype=torch.long)
    mask[0, 30:60, 40:100] = 1
    with torch.no_grad():
        out = net.predict(x, prompt_mask=mask)
    assert out.shape == (1, 1, 90, 150) and torch.isfinite(out).all()


def test_prompts_are_labelled_and_oracle_prompts_need_a_mask():
    text = tiny(prompt="text", text="pigmented skin lesion")
    assert text.prompt_source == "none"
    assert text.prompt_description == 'text prompt "pigmented skin lesion" (automatic)'
    assert tiny(prompt="none").prompt_description == "no prompt (automatic)"
    for kind in ("box", "point", "exemplar"):
        net = tiny(prompt=kind)
        assert net.prompt_source == "oracle"
        assert net.prompt_description == f"oracle prompt ({kind} from ground truth)"
        with pytest.raises(ValueError, match="needs a mask to sample the prompt"):
            net.predict(batch()[0])
    assert isinstance(text, PromptedSegmenter)


def test_text_changes_the_prediction():
    net = tiny(prompt="text", text="skin lesion").eval()
    x, _ = batch()
    with torch.no_grad():
        a = net(x)
        net.text = "ruler marking"
        assert not torch.equal(a, net(x))


def test_tokenizer_vocabulary_from_open_clip_matches_sam3():
    from sam3.model.tokenizer_ve import SimpleTokenizer

    path = bpe_vocabulary()
    assert path.endswith("open_clip/bpe_simple_vocab_16e6.txt.gz")
    tokenizer = SimpleTokenizer(bpe_path=path)
    net = tiny()
    assert tokenizer.vocab_size == net.detector.backbone.language_backbone.encoder.vocab_size
    tokens = tokenizer(["skin lesion"], context_length=8)[0].tolist()
    end = tokens.index(tokenizer.eot_token_id)
    assert tokens[0] == tokenizer.sot_token_id and end > 1
    assert tokenizer.decode(tokens[1:end]).strip() == "skin lesion"


def test_constructor_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="finetune 'adpater' unknown"):
        tiny(finetune="adpater")
    with pytest.raises(ValueError, match="prompt 'mask' unknown"):
        tiny(prompt="mask")
    with pytest.raises(ValueError, match="in_channels=3"):
        networks.build_network("sam3_adapter_tiny", in_channels=4, num_classes=1)
    with pytest.raises(ValueError, match="non-empty noun phrase"):
        tiny(text=" ")
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6"):
        tiny(bpe_path=str(tmp_path / "missing.txt.gz"))


@pytest.mark.parametrize("finetune, prompt", [("decoder", "exemplar"), ("full", "text")])
def test_trains_and_evaluates_through_the_shared_loop(tmp_path, finetune, prompt):
    """Trainer + checkpoint (with the parameter counts) + the evaluate CLI; oracle labels."""
    import json

    from conftest import tiny_config

    from segmentation.cli import evaluate
    from segmentation.config import validate
    from segmentation.training.build import run_training

    raw = dict(tiny_config(steps=2, image_panel_every=2).raw)  # the panel predicts too
    raw["model"] = {"name": "sam3_adapter_tiny", "finetune": finetune, "prompt": prompt}
    run = tmp_path / "run"
    run_training(validate(raw), run)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    net = tiny(finetune=finetune, prompt=prompt)
    counts = {
        "total": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }
    assert ckpt["parameters"] == counts
    assert json.loads((run / "metrics.json").read_text())["parameters"] == counts
    out = tmp_path / "test"
    argv = ["--ckpt", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--no-boundary"]
    assert evaluate.main(argv) == 0
    label = json.loads((out / "metrics.json").read_text())["prompt"]
    oracle = prompt not in ("text", "none")
    assert label == (
        "oracle prompt (exemplar from ground truth)" if oracle else net.prompt_description
    )
