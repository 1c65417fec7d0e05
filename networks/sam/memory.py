"""Similarity-sampled memory bank of Medical SAM 2 and the SAM 2 memory modules it feeds.

Zhu et al., "Medical SAM 2: Segment Medical Images as Video via Segment Anything Model 2"
(arXiv 2408.00874, 2024; repository ``SuperMedIntel/Medical-SAM2``) treat a set of unordered 2-D
images as a video: a bank of up to 16 past memories is kept; for each new image, memories are drawn
with probability weighted by the similarity of their image embedding to the current one, the
current embedding attends to them through SAM 2's memory attention, and when the bank is full the
new memory replaces the most similar stored entry so the bank stays diverse.

The memory modules are the ``sam2`` package's (Ravi et al., "SAM 2: Segment Anything in Images and
Videos", ICLR 2025), built in code with the hyper-parameters of the released ``sam2.1`` configs and
named as in ``SAM2Base`` so official checkpoints load into them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.transformer import RoPEAttention


class MemoryBank:
    """A bank of at most ``capacity`` memories, sampled and replaced by cosine similarity.

    Each entry is a ``key`` (pooled image embedding ``[C]``) plus arbitrary tensors (here the
    memory features ``[C_mem, h, w]`` and their position encoding). Entries are stored detached.
    The bank is run-time state, not part of the module's ``state_dict``.

    Args:
        capacity: maximum number of entries (Medical SAM 2: 16).
        temperature: sampling probabilities are ``softmax(cosine / temperature)``.
    """

    def __init__(self, capacity: int, *, temperature: float = 1.0) -> None:
        if capacity < 1:
            raise ValueError(f"MemoryBank capacity must be >= 1, got {capacity}; use 16.")
        if temperature <= 0:
            raise ValueError(f"MemoryBank temperature must be > 0, got {temperature}.")
        self.capacity = capacity
        self.temperature = temperature
        self.keys: list[torch.Tensor] = []
        self.entries: list[tuple[torch.Tensor, ...]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def reset(self) -> None:
        """Empty the bank (e.g. between training and evaluation, or datasets)."""
        self.keys.clear()
        self.entries.clear()

    def similarity(self, key: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``[len(self)]`` of ``key [C]`` to every stored key."""
        if not self.keys:
            return key.new_zeros(0)
        return F.cosine_similarity(torch.stack(self.keys), key[None].to(self.keys[0]), dim=1)

    def weights(self, key: torch.Tensor) -> torch.Tensor:
        """Sampling probabilities ``[len(self)]``: ``softmax(similarity / temperature)``."""
        return torch.softmax(self.similarity(key) / self.temperature, dim=0)

    def sample(
        self, key: torch.Tensor, num: int, generator: torch.Generator | None = None
    ) -> list[int]:
        """Indices of ``min(num, len(self))`` distinct entries drawn by similarity weights."""
        if not self.keys or num < 1:
            return []
        probs = self.weights(key).float().cpu()
        picked = torch.multinomial(
            probs, min(num, len(self)), replacement=False, generator=generator
        )
        return picked.tolist()

    def update(self, key: torch.Tensor, *entry: torch.Tensor) -> int:
        """Store a memory (when full: over the entry most similar to ``key``); return its slot."""
        key = key.detach()
        entry = tuple(t.detach() for t in entry)
        if len(self) < self.capacity:
            self.keys.append(key)
            self.entries.append(entry)
            return len(self) - 1
        slot = int(self.similarity(key).argmax())
        self.keys[slot], self.entries[slot] = key, entry
        return slot


def build_sam2_memory(
    *,
    d_model: int = 256,
    mem_dim: int = 64,
    num_layers: int = 4,
    dim_feedforward: int = 2048,
    grid: int = 64,
) -> tuple[MemoryAttention, MemoryEncoder]:
    """SAM 2.1's ``memory_attention`` and ``memory_encoder`` (Hiera-T/S/B+/L share them)."""

    def rope(**kwargs) -> RoPEAttention:
        return RoPEAttention(
            rope_theta=10000.0,
            feat_sizes=[grid, grid],
            embedding_dim=d_model,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            **kwargs,
        )

    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=rope(rope_k_repeat=True, kv_in_dim=mem_dim),
        d_model=d_model,
        dim_feedforward=dim_feedforward,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=rope(),
    )
    attention = MemoryAttention(
        d_model=d_model, pos_enc_at_input=True, layer=layer, num_layers=num_layers
    )
    encoder = MemoryEncoder(
        out_dim=mem_dim,
        mask_downsampler=MaskDownSampler(
            embed_dim=d_model, kernel_size=3, stride=2, padding=1, total_stride=16
        ),
        fuser=Fuser(
            CXBlock(dim=d_model, kernel_size=7, padding=3, layer_scale_init_value=1e-6),
            num_layers=2,
        ),
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem_dim, normalize=True),
        in_dim=d_model,
    )
    return attention, encoder
