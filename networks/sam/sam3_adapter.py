"""SAM 3 for lesion segmentation: concept prompts (text, image exemplar), boxes and points, and
three fine-tuning strategies.

Carion et al., "SAM 3: Segment Anything with Concepts", arXiv 2511.16719, 2025 - Meta's reference
implementation is the ``sam3`` package (``facebookresearch/sam3``, installed by the ``[sam3]``
extra). The study reproduced here is Xu et al., "Adapting Segment Anything Model 3 for
Concept-Driven Lesion Segmentation in Medical Images: An Experimental Study", arXiv 2603.25945,
2026 (box vs text vs image-exemplar prompts; partial module tuning vs adapters vs full-model
optimisation); the adapters are Med-SA's (Wu et al., Medical Image Analysis 2025).

The image model is ``sam3``'s own: the full size comes from
``sam3.model_builder.build_sam3_image_model(load_from_HF=False)`` - 840,509,750 parameters -
and the ``_tiny`` variant assembles the same component classes with small widths
(:mod:`networks.sam.sam3_blocks`). It sits under ``self.detector``, so the state-dict keys are
those of the official ``sam3.pt`` (``detector.*``; its ``tracker.*`` keys and the SAM 2 neck
``detector.backbone.vision_backbone.sam2_convs.*`` are reported unused). Weights load only from a
local file (``checkpoint``), with the missing/unexpected-key report in ``load_report``.

One forward (our composition of SAM 3's modules; ``Sam3Image.forward`` is never called): the image
is renormalised to SAM 3's ``(x - 0.5) / 0.5`` and resized to the model's square resolution
(1008 px full size, as ``Sam3Processor`` does); the ViT + neck give three feature levels; the
prompt tokens are the text encoder's output for the phrase (``prompt="text"``) or for SAM 3's
``"visual"`` placeholder (every other kind, as ``Sam3Processor`` does without text), followed by
the geometry encoder's tokens; the fusion encoder conditions the image features on them; the
segmentation head's prompt cross-attention, pixel decoder and **semantic-segmentation head** give
the lesion logits, resized back to the input. The semantic head is the SAM 3 output that is
trained (BCE + Dice in ``sam3.train``) against the union of the concept's instance masks - a
binary lesion mask. The DETR decoder, its scores and the instance-mask predictor are built (the
checkpoint holds them) but not run, and stay frozen.

Prompts (``prompt``): ``"text"`` (the phrase ``text``, default ``"skin lesion"``; automatic, never
an oracle), ``"none"`` (only the placeholder; automatic), ``"box"`` (the lesion's bounding box as a
positive geometric box), ``"point"`` (one point) and ``"exemplar"``: an image-exemplar concept
prompt - the lesion's bounding box is cut out of the image, resized to the model resolution and
encoded on its own by the backbone and the geometry encoder (a positive box over the whole crop);
those tokens join the prompt, so the model is shown what the lesion looks like but not where it
is. Box, point and exemplar come from the ground truth at evaluation: **oracle prompts**, labelled
as such (``prompt_source``/``prompt_description``) like every SAM network's.

Fine-tuning (``finetune``): ``"decoder"`` trains only the segmentation head (prompt
cross-attention, pixel decoder, semantic head: partial module tuning); ``"adapter"`` adds Med-SA
bottleneck adapters to every ViT block (attention-output adapter with residual, parallel MLP
adapter x 0.5; zero-initialised up-projection, so the adapted model starts equal to SAM 3) and
trains them with the head; ``"full"`` trains every parameter on the forward path. Parameters no
gradient reaches are frozen in every mode (:func:`~networks.sam.sam3_blocks.unused_parameters`).
Full size (1008 px), trainable of 840.51 M: decoder 1.45 M; adapter 35.08 M (33.64 M of adapters,
874.15 M in all); full 822.11 M with text or no prompt, 822.24 M with a point, 825.39 M with a box
or an exemplar (the geometry encoder's point or box branch). ``_tiny``: 1.04 M parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType

import torch
import torch.nn.functional as F

from networks.common import check_input_shape
from networks.registry import NETWORKS
from networks.sam.prompts import PromptedSegmenter
from networks.sam.sam_adapter import check_sam_io

FINETUNE = ("decoder", "adapter", "full")
# dermseg's data pipeline normalises images with the ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sam3_blocks() -> ModuleType:
    """:mod:`networks.sam.sam3_blocks`, imported on first use: ``sam3`` is an optional extra."""
    try:
        from networks.sam import sam3_blocks as blocks
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"SAM 3 needs the optional dependencies of dermseg's [sam3] extra (missing module "
            f"'{error.name}'): pip install -e '.[sam3]'."
        ) from error
    return blocks


class SAM3Adapter(PromptedSegmenter):
    """SAM 3 lesion segmenter with concept/geometric prompts and three fine-tuning strategies.

    Args:
        in_channels: must be 3.
        num_classes: must be 1.
        architecture: ``None`` for the full SAM 3 of ``sam3``'s builder; otherwise the widths of
            :func:`networks.sam.sam3_blocks.build_small_sam3` (see ``TINY_SAM3``).
        finetune: ``"decoder"``, ``"adapter"`` or ``"full"`` (module docstring).
        prompt: ``"text"``, ``"box"``, ``"point"``, ``"exemplar"`` or ``"none"``.
        text: the noun phrase of ``prompt="text"``.
        prompt_source, box_jitter: see :class:`~networks.sam.prompts.PromptedSegmenter` (the
            exemplar's box is sampled and jittered like a box prompt).
        adapter_ratio, mlp_adapter, mlp_adapter_scale, adapter_init: Med-SA adapter settings
            (``finetune="adapter"`` only), as in :class:`~networks.sam.sam_adapter.SAMAdapter`.
        checkpoint: local official SAM 3 checkpoint (``sam3.pt``, keys ``detector.*`` and
            ``tracker.*``); the key report is kept in ``load_report``.
        bpe_path: the tokenizer's ``bpe_simple_vocab_16e6.txt.gz``; ``None`` takes the copy
            that ``open-clip-torch`` ships (the ``sam3`` wheel has none).
        input_mean, input_std: the normalisation of the input images (dermseg: ImageNet); they
            are converted to SAM 3's ``(x - 0.5) / 0.5``.
    """

    prompt_kinds = ("text", "box", "point", "exemplar", "none")
    automatic_prompts = ("text", "none")

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 1,
        architecture: Mapping | None = None,
        finetune: str = "adapter",
        prompt: str = "text",
        text: str = "skin lesion",
        prompt_source: str = "oracle",
        box_jitter: float = 0.1,
        adapter_ratio: float = 0.25,
        mlp_adapter: bool = True,
        mlp_adapter_scale: float = 0.5,
        adapter_init: str = "zero",
        checkpoint: str | None = None,
        bpe_path: str | None = None,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(prompt=prompt, prompt_source=prompt_source, box_jitter=box_jitter)
        check_sam_io(type(self).__name__, in_channels, num_classes)
        if finetune not in FINETUNE:
            raise ValueError(f"finetune '{finetune}' unknown; choose one of {FINETUNE}.")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text must be a non-empty noun phrase, got {text!r}.")
        self.finetune, self.text = finetune, text.strip()
        blocks = sam3_blocks()
        bpe = blocks.bpe_vocabulary(bpe_path)
        if architecture is None:
            self.detector = blocks.build_official_sam3(bpe)
        else:
            self.detector = blocks.build_small_sam3(bpe_path=bpe, **architecture)
        trunk = self.detector.backbone.vision_backbone.trunk
        self.patch_size = trunk.patch_embed.proj.kernel_size[0]
        # RoPE tables are built for one token grid: the model runs at one square resolution.
        self.image_size = trunk.blocks[trunk.full_attn_ids[0]].attn.input_size[0] * self.patch_size
        if finetune == "adapter":
            blocks.adapt_sam3_vit(
                trunk,
                adapter_ratio=adapter_ratio,
                mlp_adapter=mlp_adapter,
                mlp_adapter_scale=mlp_adapter_scale,
                adapter_init=adapter_init,
            )
        # x_sam3 = (x * std + mean - 0.5) / 0.5, as one scale and shift
        std, mean = torch.tensor(input_std), torch.tensor(input_mean)
        self.register_buffer("input_scale", (2 * std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", (2 * mean - 1).view(1, 3, 1, 1), persistent=False)
        self.load_pretrained_and_freeze(checkpoint)

    # ------------------------------------------------------------------ freezing and weights
    def frozen_prefixes(self) -> tuple[str, ...]:
        """decoder/adapter: all but the segmentation head (adapters train); full: only unused."""
        unused = tuple(
            f"detector.{p}" for p in sam3_blocks().unused_parameters(self.detector, self.prompt)
        )
        if self.finetune == "full":
            return unused
        rest = ("backbone.", "geometry_encoder.", "transformer.", "dot_prod_scoring.")
        return tuple(f"detector.{p}" for p in rest) + unused

    def checkpoint_new_keys(self) -> tuple[str, ...]:
        """Adapters, and the RoPE tables (buffers computed at construction, in case a file
        lacks them)."""
        rope = tuple(k for k in self.state_dict() if k.endswith(".attn.freqs_cis"))
        return super().checkpoint_new_keys() + rope

    def checkpoint_unused_keys(self) -> tuple[str, ...]:
        """The video tracker and the SAM 2 neck of the official checkpoint."""
        return ("tracker.", "detector.backbone.vision_backbone.sam2_convs.")

    def _apply(self, fn, recurse=True):
        # SAM 3 caches position encodings in plain dicts, which .to() would not move: drop them.
        for module in self.modules():
            if isinstance(getattr(module, "cache", None), dict):
                module.cache.clear()
        return super()._apply(fn, recurse)

    @property
    def prompt_description(self) -> str:
        if self.prompt == "text":
            return f'text prompt "{self.text}" (automatic)'
        return super().prompt_description

    # ------------------------------------------------------------------ forward
    def check_input_shape(self, x: torch.Tensor) -> None:
        """Any ``[B, 3, H, W]`` works: images are resized to the model resolution and back."""
        check_input_shape(x, 1, type(self).__name__)
        check_sam_io(type(self).__name__, x.shape[1], 1)

    def to_model_input(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in the input normalisation -> SAM 3's, at the model resolution."""
        x = image * self.input_scale + self.input_shift
        size = (self.image_size, self.image_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def exemplar_crops(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The box ``[B, 4]`` (x0, y0, x1, y1, inclusive pixels) of each image, cut out and
        prepared like a model input: ``[B, 3, S, S]``."""
        crops = [
            self.to_model_input(image[i : i + 1, :, y0 : y1 + 1, x0 : x1 + 1])
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist())
        ]
        return torch.cat(crops)

    def segment(self, image, points, boxes) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` for ``image [B, 3, H, W]``; prompts in pixel coordinates."""
        self.check_input_shape(image)
        blocks = sam3_blocks()
        b, device, hw = image.shape[0], image.device, tuple(image.shape[-2:])
        x = self.to_model_input(image)
        exemplar = self.prompt == "exemplar"
        if exemplar:  # one backbone pass for images and exemplar crops
            x = torch.cat([x, self.exemplar_crops(image, boxes)])
        vision = self.detector.backbone.forward_image(x)
        fpn, pos = vision["backbone_fpn"], vision["vision_pos_enc"]  # 3 levels, fine to coarse
        grid = tuple(fpn[-1].shape[-2:])
        feats, feat_pos = (t[-1].flatten(2).permute(2, 0, 1) for t in (fpn, pos))  # (HW, B', C)

        phrase = self.text if self.prompt == "text" else "visual"  # Sam3Processor's placeholder
        language = self.detector.backbone.forward_text([phrase], device=device)
        prompt = [language["language_features"].expand(-1, b, -1)]  # (L, B, C)
        prompt_mask = [language["language_mask"].expand(b, -1)]  # (B, L), True = padding
        geometry = self.detector.geometry_encoder
        on_image = blocks.geometric_prompt(
            points=points,
            boxes=boxes if self.prompt == "box" else None,
            image_hw=hw,
            batch_size=b,
            device=device,
        )
        requests = [(on_image, feats[:, :b], feat_pos[:, :b])]
        if exemplar:  # a positive box over each whole crop, encoded on the crop's features
            whole = torch.tensor([[0, 0, self.image_size - 1, self.image_size - 1]], device=device)
            crop_prompt = blocks.geometric_prompt(
                boxes=whole.expand(b, -1).float(),
                image_hw=(self.image_size, self.image_size),
                batch_size=b,
                device=device,
            )
            requests.append((crop_prompt, feats[:, b:], feat_pos[:, b:]))
        with blocks.CudaFree():  # box encoding pins memory, which needs CUDA
            for geo_prompt, img, img_pos in requests:
                tokens, mask = geometry(geo_prompt, [img], [grid], [img_pos])
                prompt.append(tokens)
                prompt_mask.append(mask)
        prompt, prompt_mask = torch.cat(prompt), torch.cat(prompt_mask, dim=1)

        memory = self.detector.transformer.encoder(
            src=[feats[:, :b]],
            src_key_padding_mask=None,
            src_pos=[feat_pos[:, :b]],
            prompt=prompt,
            prompt_pos=torch.zeros_like(prompt),
            prompt_key_padding_mask=prompt_mask,
            feat_sizes=[grid],
        )["memory"]  # (HW, B, C)
        # UniversalSegmentationHead, semantic output only (instance masks need the decoder).
        head = self.detector.segmentation_head
        attended, _ = head.cross_attend_prompt(
            query=head.cross_attn_norm(memory),
            key=prompt,
            value=prompt,
            key_padding_mask=prompt_mask,
        )
        memory = memory + attended
        levels = [level[:b] for level in fpn[:-1]]
        levels.append(memory.permute(1, 2, 0).reshape(b, -1, *grid))
        logits = head.semantic_seg_head(head.pixel_decoder(levels))  # (B, 1, 4 gh, 4 gw)
        return F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)


# Same component classes as SAM 3 at CPU-test widths (not a pretrained configuration).
TINY_SAM3 = dict(
    image_size=112,
    patch_size=14,
    pretrain_image_size=56,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=4,
    global_att_blocks=(1,),
    d_model=32,
    num_attention_heads=4,
    dim_feedforward=64,
    text_width=16,
    text_heads=2,
    text_layers=1,
    fusion_layers=1,
    decoder_layers=1,
    geometry_layers=1,
    num_queries=8,
)

NETWORKS.register("sam3_adapter", SAM3Adapter)
NETWORKS.register("sam3_adapter_tiny", SAM3Adapter, architecture=TINY_SAM3)
