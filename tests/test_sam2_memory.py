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
    assert len(net.memory) == 0  # evaluation never writes to the bank
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
