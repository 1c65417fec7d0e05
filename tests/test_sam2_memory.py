"""Medical SAM 2 memory bank: the bank itself and its use in ``SAM2Adapter(memory_bank=N)``."""

import pytest
import torch

from networks import build_network
from networks.sam.memory import MemoryBank


def _masks(b=2, size=128):
    mask = torch.zeros(b, size, size, dtype=torch.long)
    mask[:, 32:96, 40:100] = 1
    return mask


def test_bank_capacity_is_never_exceeded():
    bank = MemoryBank(3)
    gen = torch.Generator().manual_seed(0)
    for step in range(10):
        bank.update(torch.randn(8, generator=gen), torch.full((2, 4, 4), float(step)))
        assert len(bank) == min(step + 1, 3)
    assert all(not k.requires_grad for k in bank.keys)
    bank.reset()
    assert len(bank) == 0 and bank.sample(torch.randn(8), 2) == []
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        MemoryBank(0)


def test_full_bank_replaces_the_most_similar_entry():
    bank = MemoryBank(3)
    for i in range(3):
        bank.update(torch.eye(4)[i], torch.tensor([float(i)]))
    new_key = torch.tensor([0.1, 1.0, 0.2, 0.0])  # closest to entry 1
    assert bank.update(new_key, torch.tensor([9.0])) == 1
    assert torch.equal(bank.keys[1], new_key) and bank.entries[1][0].item() == 9.0
    assert [e[0].item() for e in bank.entries] == [0.0, 9.0, 2.0]  # the others are untouched
    assert bank.update(torch.tensor([0.0, 0.0, 1.0, 0.1]), torch.tensor([7.0])) == 2


def test_sampling_weights_follow_similarity_and_are_seeded():
    bank = MemoryBank(4, temperature=0.5)
    keys = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])]
    keys.append(torch.tensor([-1.0, 0.0]))
    for k in keys:
        bank.update(k, k)
    query = torch.tensor([1.0, 0.2])
    cos = torch.stack([torch.nn.functional.cosine_similarity(k, query, dim=0) for k in keys])
    weights = bank.weights(query)
    torch.testing.assert_close(weights, torch.softmax(cos / 0.5, 0))
    assert weights.argsort(descending=True).tolist() == [0, 1, 2, 3]
    draws = [bank.sample(query, 1, torch.Generator().manual_seed(s))[0] for s in range(400)]
    counts = torch.bincount(torch.tensor(draws), minlength=4).float() / 400
    assert counts.argsort(descending=True).tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(counts, weights, atol=0.07, rtol=0)
    a = bank.sample(query, 2, torch.Generator().manual_seed(5))
    assert a == bank.sample(query, 2, torch.Generator().manual_seed(5)) and len(set(a)) == 2


def _pair(**kwargs):
    torch.manual_seed(0)
    plain = build_network("sam2_adapter_tiny", adapter_init="released", **kwargs)
    memory = build_network("sam2_adapter_tiny", adapter_init="released", memory_bank=4, **kwargs)
    memory.load_state_dict(plain.state_dict(), strict=False)  # same SAM 2 / adapter weights
    return plain, memory


def test_memory_adapter_trains_and_changes_output_once_bank_is_filled():
    plain, net = _pair()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = plain.eval()(x)
        torch.testing.assert_close(net.eval()(x), ref, rtol=0, atol=0)  # empty bank: no change
    assert len(net.memory) == 2  # evaluation fills the bank too (Medical SAM 2)
    net.reset_state()
    assert len(net.memory) == 0
    batch = {"image": x, "mask": _masks()}
    for step in range(2):
        net.train().zero_grad()
        loss, _ = net.compute_loss(batch, lambda lg, m: lg.square().mean())
        loss.backward()
        assert len(net.memory) == min(2 * (step + 1), 4)
    for name, param in net.memory_attention.named_parameters():  # conditioned on step 2
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"memory_attention.{name} got an all-zero gradient"
    assert all(not p.requires_grad for p in net.memory_encoder.parameters())
    with torch.no_grad():
        out = net.eval()(x)
    assert out.shape == (2, 1, 128, 128) and torch.isfinite(out).all()
    assert (out - ref).abs().max() > 1e-4
    with pytest.raises(ValueError, match="square inputs.*\\(128, 96\\)"):
        net(torch.randn(1, 3, 128, 96))


def test_memory_bank_zero_is_the_plain_adapter():
    torch.manual_seed(0)
    default = build_network("sam2_adapter_tiny", adapter_init="released")
    torch.manual_seed(0)
    off = build_network("sam2_adapter_tiny", adapter_init="released", memory_bank=0)
    assert off.memory is None and list(off.state_dict()) == list(default.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(off.eval()(x), default.eval()(x))
    with pytest.raises(ValueError, match="memory_bank must be >= 0"):
        build_network("sam2_adapter_tiny", memory_bank=-1)


def _eval_set():
    from conftest import tiny_config

    from segmentation.training.build import build_dataset

    config = tiny_config(
        data={"name": "synthetic", "image_size": 64, "n_train": 4, "n_val": 6, "n_test": 6}
    )
    return config, build_dataset(config, "test", train=False)


def _test_logits(net, config, dataset):
    """Logits of every test image through ``evaluate_model`` (batch 2, evaluation order)."""
    from dataclasses import replace

    from segmentation.data import collate
    from segmentation.evaluation.evaluate import evaluate_model, predict_logits

    seen, bank_sizes = [], []

    def predictor(model, image):
        bank_sizes.append(len(net.memory or ()))
        seen.append(predict_logits(model, image))
        return seen[-1]

    eval_config = replace(config.eval, batch_size=2)
    metrics, _ = evaluate_model(
        net,
        dataset,
        device=torch.device("cpu"),
        eval_config=eval_config,
        collate_fn=collate,
        predictor=predictor,
    )
    return torch.cat(seen), bank_sizes, metrics


def test_rebuilt_model_predicts_like_the_live_one_and_training_memories_do_not_leak():
    from segmentation.checkpoint import model_from_checkpoint

    config, dataset = _eval_set()
    kwargs = {"adapter_init": "released", "memory_bank": 4}
    torch.manual_seed(0)
    live = build_network("sam2_adapter_tiny", **kwargs)
    optimizer = torch.optim.AdamW([p for p in live.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # training fills the bank with training memories
        batch = {"image": torch.randn(2, 3, 64, 64, generator=gen), "mask": _masks(2, 64)}
        loss, _ = live.train().compute_loss(batch, lambda lg, m: (lg - m[:, None]).square().mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert len(live.memory) == 4
    ckpt = {
        "model_spec": {"name": "sam2_adapter_tiny", "kwargs": kwargs},
        "model": live.state_dict(),
    }
    rebuilt = model_from_checkpoint(ckpt)
    assert len(rebuilt.memory) == 0
    live_logits, live_sizes, live_metrics = _test_logits(live, config, dataset)
    rebuilt_logits, rebuilt_sizes, rebuilt_metrics = _test_logits(rebuilt, config, dataset)
    # Each pass starts from an empty bank and fills it with the network's own predictions, in
    # evaluation order, one batch after the other; nothing is left behind for training.
    assert live_sizes == rebuilt_sizes == [0, 2, 4]
    assert len(live.memory) == len(rebuilt.memory) == 0
    torch.testing.assert_close(live_logits, rebuilt_logits, rtol=0, atol=1e-6)
    assert live_metrics["per_image"] == rebuilt_metrics["per_image"]
    # The trained memory attention really runs at test time: batches 2 and 3 differ from the
    # no-memory prediction of the same weights.
    plain = build_network("sam2_adapter_tiny", adapter_init="released")
    plain.load_state_dict(live.state_dict(), strict=False)
    plain_logits, _, _ = _test_logits(plain.eval(), config, dataset)
    torch.testing.assert_close(plain_logits[:2], live_logits[:2], rtol=0, atol=1e-6)
    assert (plain_logits[2:] - live_logits[2:]).abs().max() > 1e-3
    # A second pass repeats the first exactly (the bank's sampler is re-seeded too).
    again, _, _ = _test_logits(live, config, dataset)
    torch.testing.assert_close(again, live_logits, rtol=0, atol=0)
