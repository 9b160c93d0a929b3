import json

import pytest
import torch

from training_core.model import PRESETS, Phi3VConfig, Phi3VForCausalLM, build_config, build_model
from training_core.model.rope_factors import PHI35_VISION_LONG, PHI35_VISION_SHORT


def official_layout() -> dict[str, tuple[int, ...]]:
    """The checkpoint's parameter names and shapes, written out from docs/RECIPE.md §2.3."""
    shapes = {
        "model.embed_tokens.weight": (32064, 3072),
        "model.norm.weight": (3072,),
        "lm_head.weight": (32064, 3072),
    }
    for i in range(32):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.qkv_proj.weight"] = (9216, 3072)
        shapes[p + "self_attn.o_proj.weight"] = (3072, 3072)
        shapes[p + "mlp.gate_up_proj.weight"] = (16384, 3072)
        shapes[p + "mlp.down_proj.weight"] = (3072, 8192)
        shapes[p + "input_layernorm.weight"] = (3072,)
        shapes[p + "post_attention_layernorm.weight"] = (3072,)
    v = "model.vision_embed_tokens."
    c = v + "img_processor.vision_model."
    shapes[c + "embeddings.class_embedding"] = (1024,)
    shapes[c + "embeddings.patch_embedding.weight"] = (1024, 3, 14, 14)
    shapes[c + "embeddings.position_embedding.weight"] = (577, 1024)
    for norm in ("pre_layrnorm", "post_layernorm"):
        shapes[c + norm + ".weight"] = (1024,)
        shapes[c + norm + ".bias"] = (1024,)
    for i in range(24):
        p = f"{c}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (1024, 1024)
            shapes[p + f"self_attn.{proj}.bias"] = (1024,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[p + norm + ".weight"] = (1024,)
            shapes[p + norm + ".bias"] = (1024,)
        shapes[p + "mlp.fc1.weight"] = (4096, 1024)
        shapes[p + "mlp.fc1.bias"] = (4096,)
        shapes[p + "mlp.fc2.weight"] = (1024, 4096)
        shapes[p + "mlp.fc2.bias"] = (1024,)
    shapes[v + "img_projection.0.weight"] = (3072, 4096)
    shapes[v + "img_projection.0.bias"] = (3072,)
    shapes[v + "img_projection.2.weight"] = (3072, 3072)
    shapes[v + "img_projection.2.bias"] = (3072,)
    shapes[v + "glb_GN"] = (1, 1, 4096)
    shapes[v + "sub_GN"] = (1, 1, 1, 4096)
    return shapes


@pytest.fixture(scope="module")
def meta_phi35():
    with torch.device("meta"):
        return Phi3VForCausalLM(build_config("phi-3.5-vision"))


def test_phi35_preset_has_the_official_names_shapes_and_count(meta_phi35):
    params = {name: tuple(p.shape) for name, p in meta_phi35.named_parameters()}
    assert params == official_layout()
    assert sum(p.numel() for p in meta_phi35.parameters()) == 4_146_621_440


def test_wte_is_the_token_embedding_module(meta_phi35):
    model = meta_phi35.model
    assert model.vision_embed_tokens.wte is model.embed_tokens
    # both names appear in the live state_dict (one tensor), as in the official code
    state = meta_phi35.state_dict(keep_vars=True)
    assert state["model.vision_embed_tokens.wte.weight"] is state["model.embed_tokens.weight"]


def test_phi35_preset_values_are_the_official_ones():
    cfg = build_config("phi-3.5-vision")
    assert cfg.model_type == "phi3_v"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (3072, 32, 32, 32)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.hidden_act) == (8192, 32064, "silu")
    assert (cfg.max_position_embeddings, cfg.original_max_position_embeddings) == (131072, 4096)
    assert cfg.sliding_window == 262144 and cfg.tie_word_embeddings is False
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 32000)
    rope = cfg.rope_parameters
    assert rope["rope_type"] == "longrope" and rope["rope_theta"] == 10000.0
    assert rope["short_factor"] == PHI35_VISION_SHORT and rope["long_factor"] == PHI35_VISION_LONG
    assert rope["short_factor"][:3] == [1.08, 1.1, pytest.approx(1.13)] and rope["short_factor"][-1] == pytest.approx(9.0)
    assert rope["long_factor"][:4] == pytest.approx([1.08, 1.11, 1.14, 1.34]) and rope["long_factor"][-1] == pytest.approx(64.84)
    assert cfg.img_processor["num_img_tokens"] == 144 and cfg.img_processor["image_dim_out"] == 1024
    assert cfg.embd_layer["hd_transform_order"] == "sub_glb"
    assert cfg.crop_size == 336 and cfg.layer_idx == -2


def test_phi3_vision_128k_preset_says_what_is_unconfirmed():
    from training_core.model import UNCONFIRMED

    cfg = build_config("phi-3-vision-128k")
    assert cfg.rope_parameters["long_factor"][0] == pytest.approx(1.03)
    assert UNCONFIRMED["phi-3-vision-128k"], "the 128k preset must list what was not confirmed"
    assert set(UNCONFIRMED) == set(PRESETS)


def test_official_config_json_is_read(tmp_path):
    """An official-style config.json (rope type "su", remote-code auto_map, flash attention) loads natively."""
    official = {
        "architectures": ["Phi3VForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig"},
        "model_type": "phi3_v",
        "_attn_implementation": "flash_attention_2",
        **{k: v for k, v in PRESETS["phi-3.5-vision"].items() if k != "architectures"},
        "torch_dtype": "bfloat16",
        "transformers_version": "4.38.1",
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    cfg = Phi3VConfig.from_pretrained(tmp_path)
    assert cfg.rope_parameters["rope_type"] == "longrope"
    assert cfg.rope_parameters["original_max_position_embeddings"] == 4096
    assert cfg.img_processor["model_name"] == "openai/clip-vit-large-patch14-336"
    assert cfg.vision_config().num_hidden_layers == 24


def test_overrides_and_errors():
    assert build_config("tiny", num_hidden_layers=3).num_hidden_layers == 3
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        build_config("nope")
    with pytest.raises(ValueError, match="hd_transform_order"):
        build_config("tiny", embd_layer={"hd_transform_order": "glb_sub"})
    with pytest.raises(ValueError, match="vision_config"):
        build_config("tiny", img_processor={"model_name": "some/other-clip", "image_dim_out": 32}).vision_config()


def test_flash_attention_without_package_is_a_clear_error(tiny_config):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ValueError, match="flash-attn package.*gpu extra.*sdpa"):
        build_model(tiny_config, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="choose one of"):
        build_model(tiny_config, attn_implementation="magic")


def test_random_build_materialises_in_target_dtype_with_fp32_rope(tiny_config):
    model = build_model(tiny_config, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    expected_inv_freq, _ = type(model.model.rotary_emb).compute_default_rope_parameters(tiny_config)
    assert not torch.equal(model.model.rotary_emb.inv_freq, expected_inv_freq)  # longrope, not plain rope
    pos_ids = model.model.vision_embed_tokens.img_processor.vision_model.embeddings.position_ids
    assert pos_ids.tolist() == [list(range(17))]
    assert torch.isfinite(torch.cat([p.float().flatten() for p in model.parameters()])).all()
    assert model.config._attn_implementation == "sdpa"
    vision_cfg = model.model.vision_embed_tokens.img_processor.vision_model.config
    assert vision_cfg._attn_implementation == "sdpa"


def test_transformers_releases_before_5_24_are_refused_with_the_fix():
    from training_core.model.compat import transformers_problem

    assert transformers_problem("5.24.0") is None and transformers_problem("5.30.1") is None
    for old in ("5.17.0", "5.23.0", "4.57.6", "6.0.0"):
        assert "pip install 'transformers>=5.24,<6'" in transformers_problem(old), old
    assert transformers_problem() is None  # the installed one
