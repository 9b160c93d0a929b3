"""The image embedder `model.vision_embed_tokens`: CLIP tower, HD feature layout, separators, MLP projector.

Parameter names follow the official checkpoint (docs/RECIPE.md §2.3): `img_processor.vision_model.*` (CLIP),
`img_projection.{0,2}`, `glb_GN`, `sub_GN`, and `wte`, which *is* the decoder's `embed_tokens` module (shared,
as in the official code, so freezing this embedder freezes the token embedding too, the recipe's behaviour).

Features follow docs/RECIPE.md §2.9: the CLIP hidden state after layer `num_layers + layer_idx` (penultimate for -2,
computed by running only the layers needed; the last layer and `post_layernorm` stay as parameters for checkpoint
compatibility but, as in the official forward, never influence the output), CLS dropped, 2x2 patch merge with
channel order (row offset, column offset, channel), a `sub_GN` column after every row, then `glb_GN`, then the
global view's rows, per image in order; GELU MLP projector; features written at the negative-id positions.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings

from .config import Phi3VConfig


class ClipVisionTransformer(nn.Module):
    """transformers' CLIP vision blocks under the official names (`embeddings`, `pre_layrnorm`, `encoder`,
    `post_layernorm`). transformers 5 flattened `CLIPVisionModel`, so the blocks are assembled here to keep the
    checkpoint's `img_processor.vision_model.` prefix."""

    def __init__(self, vision_config):
        super().__init__()
        self.config = vision_config
        self.embeddings = CLIPVisionEmbeddings(vision_config)
        self.pre_layrnorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.encoder = CLIPEncoder(vision_config)
        self.post_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)

    def hidden_state(self, pixel_values: torch.Tensor, num_layers: int) -> torch.Tensor:
        """Hidden state after the first `num_layers` encoder layers (== `hidden_states[num_layers]`)."""
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers[:num_layers]:
            hidden = layer(hidden, None)
        return hidden


class ClipImageProcessor(nn.Module):
    """Holder that gives the tower the official `img_processor.vision_model.` prefix."""

    def __init__(self, vision_config):
        super().__init__()
        self.vision_model = ClipVisionTransformer(vision_config)


class Phi3VImageEmbedding(nn.Module):
    def __init__(self, config: Phi3VConfig, wte: nn.Embedding):
        super().__init__()
        vision_config = config.vision_config()
        self.wte = wte
        self.img_processor = ClipImageProcessor(vision_config)
        dim = int(config.img_processor["image_dim_out"])
        if dim != vision_config.hidden_size:
            raise ValueError(
                f"config.img_processor.image_dim_out={dim} differs from the CLIP hidden size "
                f"{vision_config.hidden_size}; they must match"
            )
        self.image_dim_out = dim
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, dim * 4))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, dim * 4))
        self.img_projection = nn.Sequential(
            nn.Linear(dim * 4, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )
        self.vocab_size = config.vocab_size
        self.crop_size = vision_config.image_size
        self.grid = vision_config.image_size // vision_config.patch_size  # 24 for ViT-L/14-336
        if self.grid % 2:
            raise ValueError(f"the CLIP patch grid ({self.grid}) must be even for the 2x2 merge")
        self.num_layers_used = vision_config.num_hidden_layers + 1 + config.layer_idx
        if not 1 <= self.num_layers_used <= vision_config.num_hidden_layers:
            raise ValueError(f"config.img_processor.layer_idx={config.layer_idx} is out of range")
        if config.img_processor.get("type_feature", "patch") != "patch":
            raise ValueError("config.img_processor.type_feature: only 'patch' (CLS dropped) is implemented")

    # ------------------------------------------------------------------ features
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(num_images, crops, 3, S, S) -> (num_images, crops, grid*grid, C): every crop slot goes through CLIP."""
        n_img, n_crop = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1)
        if flat.shape[-2:] != (self.crop_size, self.crop_size):
            raise ValueError(f"pixel_values crops must be {self.crop_size}x{self.crop_size}, got {tuple(flat.shape[-2:])}")
        vm = self.img_processor.vision_model
        flat = flat.to(vm.embeddings.patch_embedding.weight.dtype)
        hidden = vm.hidden_state(flat, self.num_layers_used)[:, 1:]
        return hidden.reshape(n_img, n_crop, hidden.shape[1], hidden.shape[2])

    def _merge_2x2(self, feats: torch.Tensor, h_crop: int, w_crop: int) -> torch.Tensor:
        """(k, grid*grid, C) crops of one image -> (h_crop*g, w_crop*g, 4C) with g = grid/2."""
        g, c = self.grid // 2, feats.shape[-1]
        x = feats.reshape(-1, g, 2, g, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, g, g, 4 * c)
        x = x.reshape(h_crop, w_crop, g, g, 4 * c).permute(0, 2, 1, 3, 4)
        return x.reshape(h_crop * g, w_crop * g, 4 * c)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """Append `sub_GN` after every row and flatten: (H, W, D) -> (H*(W+1), D)."""
        rows = grid.shape[0]
        newline = self.sub_GN.reshape(1, 1, -1).expand(rows, 1, -1).to(grid.dtype)
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])

    def hd_feature_transform(self, feats: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """sub_glb layout for every image, concatenated in order: (total_image_tokens, 4C)."""
        out = []
        for i in range(feats.shape[0]):
            h, w = self.precomputed[1][i] if self.precomputed is not None else (int(v) for v in image_sizes[i])
            h_crop, w_crop = h // self.crop_size, w // self.crop_size
            glb = self._with_newlines(self._merge_2x2(feats[i, :1], 1, 1))
            sub = self._with_newlines(self._merge_2x2(feats[i, 1 : 1 + h_crop * w_crop], h_crop, w_crop))
            out += [sub, self.glb_GN.reshape(1, -1).to(sub.dtype), glb]
        return torch.cat(out, dim=0)

    # ------------------------------------------------------------------ forward
    # (positions of the image placeholders, image sizes as (h, w) ints), given ahead by the memory estimator, whose
    # fake tensors have no values to look these up in (training_core/estimate); None: read from the inputs
    precomputed: tuple[tuple[torch.Tensor, torch.Tensor], list[tuple[int, int]]] | None = None

    def forward(self, input_ids: torch.Tensor, pixel_values=None, image_sizes=None) -> torch.Tensor:
        if self.precomputed is not None:
            positions = self.precomputed[0]
        else:
            positions = torch.nonzero((input_ids < 0) & (input_ids > -1_000_000), as_tuple=True)
        hidden = self.wte(input_ids.clamp(0, self.vocab_size))
        if pixel_values is None or positions[0].numel() == 0:
            return hidden
        if image_sizes is None:
            raise ValueError("pixel_values were given without image_sizes")
        feats = self.hd_feature_transform(self.image_features(pixel_values), image_sizes)
        projector_dtype = self.img_projection[0].bias.dtype  # the bias: 4-bit weights are stored as bytes
        projected = self.img_projection(feats.to(projector_dtype))
        if projected.shape[0] != positions[0].numel():
            raise ValueError(
                f"the prompt has {positions[0].numel()} image placeholder tokens but the images give "
                f"{projected.shape[0]} features: the placeholders must come from the processor with the same "
                "num_crops and images"
            )
        if not torch.is_grad_enabled():  # written in place, as the official code does: under grad mode off (e.g.
            # the 2024-06 recipe's frozen tower) a token embedding made to require grad stays the tensor that does
            return hidden.index_put_(positions, projected.to(hidden.dtype), accumulate=False)
        return hidden.index_put(positions, projected.to(hidden.dtype), accumulate=False)
