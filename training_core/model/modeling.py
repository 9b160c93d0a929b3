"""`Phi3VForCausalLM`: Phi-3(.5)-vision on transformers 5.x, with no remote code.

The decoder is transformers' Phi-3 (`Phi3Model`: fused `qkv_proj`/`gate_up_proj`, RMSNorm, LongRoPE, eager /
sdpa / flash_attention_2); `model.vision_embed_tokens` (see `vision.py`) turns the processor's negative
placeholder ids plus `pixel_values`/`image_sizes` into input embeddings. Parameter names and shapes equal the
official checkpoint, so `from_pretrained(dir)` loads the official safetensors unchanged and `save_pretrained`
writes the official key set (the shared `wte` alias is not written twice).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention, CLIPVisionEmbeddings
from transformers.models.phi3.modeling_phi3 import Phi3Model, Phi3PreTrainedModel

from .config import Phi3VConfig
from .vision import Phi3VImageEmbedding

WTE_ALIAS = "model.vision_embed_tokens.wte.weight"


class Phi3VPreTrainedModel(Phi3PreTrainedModel):
    config_class = Phi3VConfig
    config: Phi3VConfig
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    _keys_to_ignore_on_save = [WTE_ALIAS]

    def _init_weights(self, module):
        super()._init_weights(module)
        vision = self.config.vision_config()
        factor = vision.initializer_factor
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, mean=0.0, std=module.embed_dim**-0.5 * factor)
            init.normal_(module.patch_embedding.weight, std=vision.initializer_range * factor)
            init.normal_(module.position_embedding.weight, std=vision.initializer_range * factor)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, CLIPAttention):
            in_std = (module.embed_dim**-0.5) * ((2 * vision.num_hidden_layers) ** -0.5) * factor
            for proj, std in ((module.q_proj, in_std), (module.k_proj, in_std), (module.v_proj, in_std),
                              (module.out_proj, (module.embed_dim**-0.5) * factor)):
                init.normal_(proj.weight, std=std)
        elif isinstance(module, CLIPMLP):
            hidden = vision.hidden_size
            init.normal_(module.fc1.weight, std=(2 * hidden) ** -0.5 * factor)
            init.normal_(module.fc2.weight, std=(hidden**-0.5) * ((2 * vision.num_hidden_layers) ** -0.5) * factor)
        elif isinstance(module, Phi3VImageEmbedding):
            init.zeros_(module.glb_GN)
            init.zeros_(module.sub_GN)

    def mark_tied_weights_as_initialized(self, loading_info):
        """`wte` is the same module as `embed_tokens` (module sharing, as in the official code): once the checkpoint's
        `model.embed_tokens.weight` is loaded, the alias is loaded too and must not count as missing (nor be
        re-initialised)."""
        super().mark_tied_weights_as_initialized(loading_info)
        loading_info.missing_keys = {
            key
            for key in loading_info.missing_keys
            if key not in (WTE_ALIAS, "model.embed_tokens.weight")
            or not getattr(self.get_parameter_or_buffer(key), "_is_hf_initialized", False)
        }


class Phi3VModel(Phi3VPreTrainedModel, Phi3Model):
    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config, wte=self.embed_tokens)
        self.post_init()

    def forward(self, input_ids=None, pixel_values=None, image_sizes=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.vision_embed_tokens(input_ids, pixel_values, image_sizes)
        return super().forward(inputs_embeds=inputs_embeds, **kwargs)


class Phi3VForCausalLM(Phi3VPreTrainedModel, GenerationMixin):
    base_model_prefix = "model"

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value
        self.model.vision_embed_tokens.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        out = super().set_attn_implementation(attn_implementation, *args, **kwargs)
        self._sync_vision_attention()
        return out

    def unused_parameter_names(self) -> set[str]:
        """Parameters no output depends on: CLIP's layers after the feature layer and its `post_layernorm`, kept for
        the checkpoint's layout (the official forward never uses them either)."""
        embedder = self.model.vision_embed_tokens
        vision = embedder.img_processor.vision_model
        prefix = "model.vision_embed_tokens.img_processor.vision_model."
        names = {f"{prefix}encoder.layers.{i}.{n}" for i, layer in enumerate(vision.encoder.layers)
                 if i >= embedder.num_layers_used for n, _ in layer.named_parameters()}
        return names | {f"{prefix}post_layernorm.{n}" for n, _ in vision.post_layernorm.named_parameters()}

    def _sync_vision_attention(self) -> None:
        """CLIP attention reads its own config's implementation: keep it equal to the decoder's."""
        vision_config = self.model.vision_embed_tokens.img_processor.vision_model.config
        vision_config._attn_implementation = self.config._attn_implementation

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:, :]
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )

    # How cached generation crosses original_max_position_embeddings (4096), where LongRoPE switches from the short
    # to the long factors: "official" keeps the cache, as the official remote code does (the keys cached before the
    # switch stay rotated with the short factors), so generation reproduces the official outputs; "recompute" drops
    # the cache once at the crossing (transformers' Phi-3 does this), so cached generation equals cache-free
    # generation. Set per model (`model.longrope_generation = "recompute"`) or per cell (RunSpec.longrope_generation).
    LONGROPE_GENERATION = ("official", "recompute")
    longrope_generation: str = "official"

    def prepare_inputs_for_generation(self, input_ids, cache=None, **kwargs):
        if self.longrope_generation not in self.LONGROPE_GENERATION:
            raise ValueError(f"longrope_generation={self.longrope_generation!r}: choose one of {self.LONGROPE_GENERATION}")
        limit = self.config.original_max_position_embeddings
        if (self.longrope_generation == "recompute" and cache is not None and input_ids.shape[1] >= limit + 1
                and cache.get_seq_length() <= limit):
            cache = None
            kwargs["next_sequence_length"] = None
        return super().prepare_inputs_for_generation(input_ids, cache=cache, **kwargs)


def _register_auto_classes() -> None:
    """Let transformers' Auto classes resolve model_type "phi3_v" to this native implementation, never remote code.
    Done where the classes are defined, so whatever holds the model class has the registration too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register("phi3_v", Phi3VConfig)
        AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM)
    except ValueError:  # already registered (module reloaded)
        pass


_register_auto_classes()
