"""`Phi3VConfig`: the official `phi3_v` config.json, read natively on transformers 5.x.

It is transformers' `Phi3Config` (decoder sizes, LongRoPE: the official rope type "su" is read as "longrope")
plus the two vision blocks of the official file:

- `img_processor`: `{name, model_name, image_dim_out, num_img_tokens}` and optionally `layer_idx` (default -2,
  the penultimate CLIP layer) and `type_feature` (default "patch", CLS dropped). The official file names
  `openai/clip-vit-large-patch14-336`, whose architecture the remote code hard-codes (`CLIP_VIT_L14_336`). Any
  other tower (the tiny preset's) is described by an explicit `vision_config` dict inside `img_processor`.
- `embd_layer`: `{embedding_cls, hd_transform_order, projection_cls, use_hd_transform, with_learnable_separator}`;
  only the official combination (image / sub_glb / mlp / HD / learnable separators) is implemented, anything else
  is rejected with a clear error.
"""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig
from transformers.models.phi3.configuration_phi3 import Phi3Config

from .presets import CLIP_L14_336_NAME, CLIP_VIT_L14_336

DEFAULT_IMG_PROCESSOR: dict[str, Any] = {
    "name": "clip_vision_model",
    "model_name": CLIP_L14_336_NAME,
    "image_dim_out": 1024,
    "num_img_tokens": 144,
}

DEFAULT_EMBD_LAYER: dict[str, Any] = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}


@strict
class Phi3VConfig(Phi3Config):
    model_type = "phi3_v"

    img_processor: dict | None = None
    embd_layer: dict | None = None

    def __post_init__(self, **kwargs):
        self.img_processor = {**DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        self.embd_layer = {**DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        for source in (kwargs.get("rope_scaling"), self.rope_parameters):
            _su_to_longrope(source)
        super().__post_init__(**kwargs)
        _check_embd_layer(self.embd_layer)

    # ----- the official file layout -----
    def official_dict(self) -> dict[str, Any]:
        """config.json as the official remote code and the tools that read its format (vLLM, the official
        processor) expect it: transformers-5's `rope_parameters` block written back as `rope_theta`,
        `original_max_position_embeddings` and `rope_scaling {type: "su", short_factor, long_factor}` (the only
        form the official config class accepts: exactly those three keys), `sliding_window`, `embd_layer`,
        `img_processor` always present, and no `auto_map` (the official .py files are not in a directory we
        write, so an `auto_map` would point at missing files)."""
        out = self.to_diff_dict()
        full = self.to_dict()
        rope = full.get("rope_parameters") or {}
        out.pop("rope_parameters", None)
        out.pop("auto_map", None)
        out["rope_theta"] = float(rope.get("rope_theta", 10000.0))
        out["original_max_position_embeddings"] = int(
            rope.get("original_max_position_embeddings") or full.get("original_max_position_embeddings"))
        if rope.get("rope_type") == "longrope":
            out["rope_scaling"] = {"type": "su", "long_factor": list(rope["long_factor"]),
                                   "short_factor": list(rope["short_factor"])}
        else:
            out["rope_scaling"] = None
        for key in ("architectures", "model_type", "max_position_embeddings", "sliding_window", "embd_layer",
                    "img_processor", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "intermediate_size", "vocab_size", "rms_norm_eps", "tie_word_embeddings",
                    "bos_token_id", "eos_token_id", "pad_token_id"):
            out[key] = full.get(key)
        if full.get("dtype") is not None:  # the official code (transformers 4.x) reads `torch_dtype`
            out["torch_dtype"] = str(full["dtype"]).removeprefix("torch.")
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        """What `save_pretrained` writes: the official layout (`official_dict`); our loader reads both layouts."""
        if not use_diff:
            return super().to_json_string(use_diff=False)
        return json.dumps(self._encode_special_floats(self.official_dict()), indent=2, sort_keys=True) + "\n"

    # ----- derived vision facts (not serialised; computed from the two official blocks) -----
    def vision_config(self) -> CLIPVisionConfig:
        """The CLIP tower's config: the hard-coded ViT-L/14-336 or the explicit `img_processor.vision_config`."""
        explicit = self.img_processor.get("vision_config")
        if explicit is None:
            if self.img_processor.get("model_name") != CLIP_L14_336_NAME:
                raise ValueError(
                    f"config.img_processor.model_name={self.img_processor.get('model_name')!r}: only "
                    f"{CLIP_L14_336_NAME!r} is known by name; describe any other tower with an explicit "
                    "img_processor.vision_config dict (hidden_size, image_size, patch_size, ...)"
                )
            explicit = CLIP_VIT_L14_336
        vision = CLIPVisionConfig(**explicit)
        vision._attn_implementation = self._attn_implementation
        return vision

    @property
    def layer_idx(self) -> int:
        return int(self.img_processor.get("layer_idx", -2))

    @property
    def crop_size(self) -> int:
        return int((self.img_processor.get("vision_config") or CLIP_VIT_L14_336)["image_size"])

    @property
    def patch_size(self) -> int:
        return int((self.img_processor.get("vision_config") or CLIP_VIT_L14_336)["patch_size"])


def _su_to_longrope(rope: dict | None) -> None:
    """The official files say `"type": "su"` (LongRoPE's first name); transformers 5 calls it "longrope"."""
    if not rope:
        return
    for key in ("type", "rope_type"):
        if rope.get(key) == "su":
            rope[key] = "longrope"


def _check_embd_layer(embd: dict) -> None:
    expected = {
        "embedding_cls": "image",
        "hd_transform_order": "sub_glb",
        "projection_cls": "mlp",
        "use_hd_transform": True,
        "with_learnable_separator": True,
    }
    for key, value in expected.items():
        if embd.get(key) != value:
            raise ValueError(
                f"config.embd_layer.{key}={embd.get(key)!r} is not supported: this implementation covers the "
                f"official Phi-3(.5)-vision layout ({key}={value!r})"
            )
