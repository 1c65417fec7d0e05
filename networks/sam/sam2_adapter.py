"""Med-SA adapters on SAM 2's Hiera image encoder, single-image mode.

Ravi et al., "SAM 2: Segment Anything in Images and Videos", ICLR 2025 (``facebookresearch/sam2``);
adapter recipe of Wu et al., "Medical SAM Adapter", Medical Image Analysis 2025, as used on SAM 2 by
Zhu et al., "Medical SAM 2" (arXiv 2408.00874, ``SuperMedIntel/Medical-SAM2``).

The ``sam2`` package's modules (``Hiera``, ``FpnNeck``, ``ImageEncoder``, ``PromptEncoder``,
``MaskDecoder``) are built in code - no hydra config - with the hyper-parameters of the released
``sam2.1_hiera_t`` / ``sam2.1_hiera_s`` configs. The forward pass is ``SAM2ImagePredictor``'s:
image encoder, the decoder's ``conv_s0``/``conv_s1`` on the two high-resolution levels,
``no_mem_embed`` added to the lowest-resolution level, then the SAM decoder. Module names follow
``SAM2Base`` so the official checkpoint's ``model`` dict loads directly (video-memory modules are
reported as unexpected-and-allowed). Per Hiera block: an attention-output adapter with its own
residual and a parallel MLP adapter scaled by 0.5, widths ``dim -> dim / 4 -> dim``.

Optional (``memory_bank=N``): Medical SAM 2's similarity-sampled memory bank, see
:mod:`networks.sam.memory`. The bank is run-time state, handled as in Medical SAM 2's
``train_sam`` / ``validation_sam`` (``func_2d/function.py``):

* every forward pass, in training *and* evaluation, conditions each image on memories sampled from
  the bank and then adds each image's memory (its features and the network's own predicted mask,
  never the ground truth) once the whole batch is segmented - images of one batch do not see each
  other;
* :meth:`SAM2Adapter.reset_state` empties the bank and re-seeds its sampler.
  :func:`segmentation.evaluation.evaluate.evaluate_model` calls it at the start and at the end of
  every pass, so each evaluation (the Trainer's validation included) starts from an empty bank
  filled in evaluation order, training memories never reach validation, and validation memories
  never reach training. A model rebuilt from a checkpoint therefore predicts exactly like the live
  model. The result depends on the evaluation order and batch size (deterministic for a given
  split and ``eval.batch_size``); under DDP each rank fills its own bank from its shard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import Hiera, MultiScaleAttention, do_pool
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from sam2.modeling.sam2_utils import MLP
from torch import nn

from networks.common import check_input_shape
from networks.kernels.global_attention import global_attention
from networks.registry import NETWORKS
from networks.sam.blocks import (
    BottleneckAdapter,
    ParallelAdapted,
    encode_prompts,
    unused_single_mask_parameters,
)
from networks.sam.memory import MemoryBank, build_sam2_memory
from networks.sam.prompts import PromptedSegmenter
from networks.sam.sam_adapter import check_sam_io

# Keys of the official SAM 2 checkpoint that single-image segmentation does not use.
SAM2_VIDEO_KEYS = (
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "mask_downsample.",
    "memory_attention.",
    "memory_encoder.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
)


class HieraAdaptedAttention(MultiScaleAttention):
    """Hiera attention via dermseg's dispatcher (``"native"``: the package's SDPA), then adapter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention_backend == "native":
            return self.adapter(super().forward(x))
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)
        if self.q_pool:  # query pooling at stage transitions
            q = do_pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
        out = global_attention(q, k, v, backend=self.attention_backend)
        return self.adapter(self.proj(out.transpose(1, 2).reshape(b, h, w, -1)))


class HieraAdaptedMLP(ParallelAdapted, MLP):
    """SAM 2 ``MLP`` with a parallel adapter: ``mlp(x) + adapter_scale * adapter(x)``."""


def adapt_hiera(
    trunk: Hiera,
    *,
    adapter_ratio: float,
    mlp_adapter: bool,
    mlp_adapter_scale: float,
    adapter_init: str,
    attention_backend: str,
) -> None:
    """Inject Med-SA adapters into every ``MultiScaleBlock`` of a Hiera trunk (in place)."""
    for block in trunk.blocks:
        dim = block.dim_out
        block.attn.__class__ = HieraAdaptedAttention
        block.attn.attention_backend = attention_backend
        block.attn.adapter = BottleneckAdapter(dim, int(dim * adapter_ratio), init=adapter_init)
        if mlp_adapter:
            block.mlp.__class__ = HieraAdaptedMLP
            block.mlp.adapter_scale = mlp_adapter_scale
            block.mlp.adapter = BottleneckAdapter(
                dim, int(dim * adapter_ratio), skip=False, init=adapter_init
            )


def build_sam2_parts(
    *,
    embed_dim: int = 96,
    num_heads: int = 1,
    stages: Sequence[int] = (1, 2, 7, 2),
    global_att_blocks: Sequence[int] = (5, 7, 9),
    window_spec: Sequence[int] = (8, 4, 14, 7),
    window_pos_embed_bkg_spatial_size: Sequence[int] = (7, 7),
    d_model: int = 256,
    image_size: int = 1024,
) -> tuple[ImageEncoder, PromptEncoder, MaskDecoder]:
    """SAM 2 image encoder and SAM heads as ``SAM2Base`` builds them (defaults: Hiera-T, 2.1)."""
    trunk = Hiera(
        embed_dim=embed_dim,
        num_heads=num_heads,
        stages=tuple(stages),
        global_att_blocks=tuple(global_att_blocks),
        window_spec=tuple(window_spec),
        window_pos_embed_bkg_spatial_size=tuple(window_pos_embed_bkg_spatial_size),
    )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=d_model, normalize=True),
        d_model=d_model,
        backbone_channel_list=list(trunk.channel_list),
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
    )
    grid = image_size // 16  # SAM2Base.backbone_stride
    prompt_encoder = PromptEncoder(
        embed_dim=d_model,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=d_model, mlp_dim=2048, num_heads=8),
        transformer_dim=d_model,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        use_high_res_features=True,
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
    )
    return ImageEncoder(trunk=trunk, neck=neck, scalp=1), prompt_encoder, mask_decoder


class SAM2Adapter(PromptedSegmenter):
    """Med-SA adapters on SAM 2 (Hiera), single image; same contract as ``SAMAdapter``.

    Args:
        in_channels: must be 3.
        num_classes: must be 1.
        embed_dim, num_heads, stages, global_att_blocks, window_spec,
            window_pos_embed_bkg_spatial_size: Hiera settings (defaults: Hiera-T of SAM 2.1).
        d_model: FPN / prompt width (256).
        image_size: the resolution the weights belong to (1024); inputs need H, W % 32 == 0.
        adapter_ratio, mlp_adapter, mlp_adapter_scale, adapter_init: as in ``SAMAdapter``.
        prompt, prompt_source, box_jitter: see ``PromptedSegmenter``.
        checkpoint: local official SAM 2 / 2.1 checkpoint (``{"model": state_dict}``).
        attention_backend: ``"native"`` (the package's SDPA) or a dispatcher backend.
        memory_bank: 0 (default) = single-image SAM 2, exactly as without this option; N > 0 =
            Medical SAM 2 memory bank of capacity N (paper: 16). Each image embedding is then
            conditioned by SAM 2's ``memory_attention`` on up to ``memory_samples`` memories drawn
            by similarity (instead of adding ``no_mem_embed``); after every forward pass (training
            and evaluation) each image's memory (``memory_encoder`` on its features and predicted
            mask) is added detached. The bank is run-time state, not saved in ``state_dict``;
            :meth:`reset_state` empties it (see the module docstring for evaluation). Needs
            square inputs (SAM 2's RoPE memory attention assumes a square grid).
        memory_samples: memories drawn per image (default 4).
        memory_seed: seed of the bank's own ``torch.Generator`` (global RNG untouched), restored
            by :meth:`reset_state`.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 1,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (1, 2, 7, 2),
        global_att_blocks: Sequence[int] = (5, 7, 9),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: Sequence[int] = (7, 7),
        d_model: int = 256,
        image_size: int = 1024,
        adapter_ratio: float = 0.25,
        mlp_adapter: bool = True,
        mlp_adapter_scale: float = 0.5,
        adapter_init: str = "zero",
        prompt: str = "none",
        prompt_source: str = "oracle",
        box_jitter: float = 0.1,
        checkpoint: str | None = None,
        attention_backend: str = "auto",
        memory_bank: int = 0,
        memory_samples: int = 4,
        memory_seed: int = 0,
    ) -> None:
        super().__init__(prompt=prompt, prompt_source=prompt_source, box_jitter=box_jitter)
        check_sam_io(type(self).__name__, in_channels, num_classes)
        self.image_encoder, self.sam_prompt_encoder, self.sam_mask_decoder = build_sam2_parts(
            embed_dim=embed_dim,
            num_heads=num_heads,
            stages=stages,
            global_att_blocks=global_att_blocks,
            window_spec=window_spec,
            window_pos_embed_bkg_spatial_size=window_pos_embed_bkg_spatial_size,
            d_model=d_model,
            image_size=image_size,
        )
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d_model))
        adapt_hiera(
            self.image_encoder.trunk,
            adapter_ratio=adapter_ratio,
            mlp_adapter=mlp_adapter,
            mlp_adapter_scale=mlp_adapter_scale,
            adapter_init=adapter_init,
            attention_backend=attention_backend,
        )
        if memory_bank < 0 or memory_samples < 1:
            raise ValueError(
                f"memory_bank must be >= 0 (0 = off) and memory_samples >= 1, got {memory_bank} "
                f"and {memory_samples}; e.g. memory_bank=16, memory_samples=4."
            )
        self.memory: MemoryBank | None = None
        if memory_bank:
            self.memory = MemoryBank(memory_bank)
            self.memory_samples = memory_samples
            self.memory_seed = memory_seed
            self.memory_generator = torch.Generator().manual_seed(memory_seed)
            self.memory_attention, self.memory_encoder = build_sam2_memory(
                d_model=d_model, grid=image_size // 16
            )
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.load_pretrained_and_freeze(checkpoint)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Train adapters, the mask decoder (minus unused heads) and the memory attention.

        ``no_mem_embed`` stays frozen; so does the memory encoder, whose entries are stored
        detached (it never gets a gradient).
        """
        unused = unused_single_mask_parameters(self.sam_mask_decoder)
        return (
            "image_encoder.",
            "sam_prompt_encoder.",
            "no_mem_embed",
            "memory_encoder.",
        ) + tuple(f"sam_mask_decoder.{n}" for n in unused)

    def checkpoint_unused_keys(self) -> tuple[str, ...]:
        """The video-memory modules of the official checkpoint (when the bank is off)."""
        return SAM2_VIDEO_KEYS

    def reset_state(self) -> None:
        """Empty the memory bank and re-seed its sampler (no-op without a bank).

        Called by ``evaluate_model`` at the start and end of every evaluation pass.
        """
        self._pending = []
        if self.memory is not None:
            self.memory.reset()
            self.memory_generator.manual_seed(self.memory_seed)

    def image_features(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``SAM2Base.forward_image`` + ``SAM2ImagePredictor.set_image`` for a batch.

        Returns the image embedding ``[B, C, H/16, W/16]`` and the two high-resolution features
        ``[B, C/8, H/4, W/4]``, ``[B, C/4, H/8, W/8]``.
        """
        out = self.image_encoder(image)
        fpn = out["backbone_fpn"]
        high_res = [self.sam_mask_decoder.conv_s0(fpn[0]), self.sam_mask_decoder.conv_s1(fpn[1])]
        b, c, h, w = fpn[-1].shape
        tokens = fpn[-1].flatten(2).permute(2, 0, 1)  # (HW, B, C)
        if self.memory is None:
            tokens = tokens + self.no_mem_embed
        else:
            tokens = self.condition_on_memory(fpn[-1], out["vision_pos_enc"][-1])
        return tokens.permute(1, 2, 0).reshape(b, c, h, w), high_res

    def condition_on_memory(self, feats: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Tokens ``(HW, B, C)`` of ``feats [B, C, h, w]`` attended to sampled bank memories.

        Images for which the bank holds no memory of their size get ``no_mem_embed`` added, as in
        ``SAM2Base`` for a frame without memory. Their raw features are kept for the update.
        """
        self._pending = [(f, f.mean((1, 2))) for f in feats.detach()]
        out = []
        for i in range(feats.shape[0]):
            cur = feats[i : i + 1].flatten(2).permute(2, 0, 1)  # (HW, 1, C)
            picked = [
                j
                for j in self.memory.sample(
                    self._pending[i][1], self.memory_samples, self.memory_generator
                )
                if self.memory.entries[j][0].shape[-2:] == feats.shape[-2:]
            ]
            if not picked:
                out.append(cur + self.no_mem_embed)
                continue
            mem, mem_pos = (
                torch.cat([self.memory.entries[j][k].flatten(1).T for j in picked])[:, None]
                for k in (0, 1)
            )  # (M*HW, 1, C_mem)
            cur_pos = pos[i : i + 1].flatten(2).permute(2, 0, 1)
            out.append(self.memory_attention(cur, mem, cur_pos, mem_pos))
        return torch.cat(out, 1)

    @torch.no_grad()
    def update_memory(self, logits: torch.Tensor) -> None:
        """Add each image's memory (features + predicted mask ``[B, 1, H, W]``) to the bank."""
        for (feats, key), mask in zip(self._pending, logits.detach(), strict=True):
            # SAM2Base._encode_new_memory: scaled sigmoid of the high-resolution mask logits
            mask_in = torch.sigmoid(mask[None]) * 20.0 - 10.0
            enc = self.memory_encoder(feats[None], mask_in, skip_mask_sigmoid=True)
            self.memory.update(key, enc["vision_features"][0], enc["vision_pos_enc"][0][0])
        self._pending = []

    def segment(self, image, points, boxes) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` for ``image [B, 3, H, W]``; prompts in pixel coordinates."""
        check_input_shape(image, 32, type(self).__name__)
        if self.memory is not None and image.shape[-1] != image.shape[-2]:
            raise ValueError(
                f"{type(self).__name__} with memory_bank needs square inputs (SAM 2's RoPE memory "
                f"attention assumes a square grid), got {tuple(image.shape[-2:])}; crop or pad."
            )
        embedding, high_res = self.image_features(image)
        if boxes is not None:  # SAM2ImagePredictor passes a box as two labelled corner points
            corners = boxes.reshape(-1, 2, 2)
            labels = torch.tensor([[2, 3]], device=boxes.device).expand(corners.shape[0], -1)
            points = (
                (corners, labels)
                if points is None
                else (torch.cat([corners, points[0]], 1), torch.cat([labels, points[1]], 1))
            )
        b = image.shape[0]
        sparse, dense, image_pe = encode_prompts(
            self.sam_prompt_encoder,
            points=points,
            boxes=None,
            batch_size=b,
            input_hw=tuple(image.shape[-2:]),
            grid_hw=tuple(embedding.shape[-2:]),
        )
        low_res = torch.cat(
            [
                self.sam_mask_decoder(
                    image_embeddings=embedding[i : i + 1],
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse[i : i + 1],
                    dense_prompt_embeddings=dense[i : i + 1],
                    multimask_output=False,
                    repeat_image=False,
                    high_res_features=[f[i : i + 1] for f in high_res],
                )[0]
                for i in range(b)
            ]
        )
        logits = F.interpolate(low_res, size=image.shape[-2:], mode="bilinear", align_corners=False)
        if self.memory is not None:  # Medical SAM 2 fills the bank in evaluation too
            self.update_memory(logits)
        return logits


HIERA_SMALL = dict(stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13))
# Small Hiera for CPU tests and the CI benchmark (not a pretrained configuration).
TINY_SAM2 = dict(
    embed_dim=16,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(3,),
    window_spec=(8, 4, 4, 2),
    window_pos_embed_bkg_spatial_size=(4, 4),
    d_model=64,
    image_size=128,
)

NETWORKS.register("sam2_adapter", SAM2Adapter)
NETWORKS.register("sam2_adapter_small", SAM2Adapter, **HIERA_SMALL)
NETWORKS.register("sam2_adapter_tiny", SAM2Adapter, **TINY_SAM2)
