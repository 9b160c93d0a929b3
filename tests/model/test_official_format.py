"""What we write is what the official format's readers expect (issue 14): config.json in the official layout, and
a save -> load round trip through our loader that changes no logit."""

import json

import pytest
import torch

from training_core.model import PRESETS, Phi3VConfig, Phi3VForCausalLM, build_config, build_model
from training_core.model.rope_factors import PHI35_VISION_LONG, PHI35_VISION_SHORT

# The official config.json's values (docs/RECIPE.md §2.1) that a reader of the official format needs to rebuild the model.
OFFICIAL_PHI35 = {
    "model_type": "phi3_v",
    "architectures": ["Phi3VForCausalLM"],
    "rope_theta": 10000.0,
    "original_max_position_embeddings": 4096,
    "max_position_embeddings": 131072,
    "sliding_window": 262144,
    "hidden_size": 3072,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 8192,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
    "img_processor": {"name": "clip_vision_model", "model_name": "openai/clip-vit-large-patch14-336",
                      "image_dim_out": 1024, "num_img_tokens": 144},
    "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                   "use_hd_transform": True, "with_learnable_separator": True},
}


def test_saved_config_is_in_the_official_layout(tmp_path):
    build_config("phi-3.5-vision").save_pretrained(str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())
    for key, value in OFFICIAL_PHI35.items():
        assert written[key] == value, key
    # exactly the three keys the official config class accepts, type "su", 48 factors each (head_dim / 2)
    rope = written["rope_scaling"]
    assert set(rope) == {"type", "short_factor", "long_factor"} and rope["type"] == "su"
    assert rope["long_factor"] == pytest.approx(PHI35_VISION_LONG) and len(rope["long_factor"]) == 48
    assert rope["short_factor"] == pytest.approx(PHI35_VISION_SHORT) and len(rope["short_factor"]) == 48
    assert rope["long_factor"][:4] == pytest.approx([1.08, 1.11, 1.14, 1.34]) and rope["long_factor"][-1] == pytest.approx(64.84)
    assert "rope_parameters" not in written and "auto_map" not in written


def test_no_dangling_auto_map_after_loading_an_official_directory(tmp_path):
    official = {"auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                             "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
                **PRESETS["phi-3.5-vision"], "model_type": "phi3_v"}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "config.json").write_text(json.dumps(official))
    Phi3VConfig.from_pretrained(tmp_path / "in").save_pretrained(str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in written  # configuration_phi3_v.py is not in the directory we write
    for entry in written.get("auto_map", {}).values():
        assert (tmp_path / "out" / f"{entry.split('.')[0]}.py").exists()


def test_both_layouts_read_back_to_the_same_config(tmp_path):
    config = build_config("tiny")
    config.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["rope_scaling"]["type"] == "su"
    again = Phi3VConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
    assert again.rope_parameters["rope_type"] == "longrope"
    # the transformers-5 layout (what earlier versions of this harness wrote) still reads the same
    (tmp_path / "v5").mkdir()
    (tmp_path / "v5" / "config.json").write_text(config.to_json_string(use_diff=False))
    assert "rope_parameters" in json.loads((tmp_path / "v5" / "config.json").read_text())
    assert Phi3VConfig.from_pretrained(tmp_path / "v5").to_dict() == config.to_dict()


@pytest.mark.parametrize("with_image", [False, True])
def test_save_then_load_changes_no_logit(tmp_path, tiny_config, tiny_processor, make_image, with_image):
    torch.manual_seed(0)
    model = build_model(tiny_config, attn_implementation="eager").eval()
    model.save_pretrained(str(tmp_path))
    loaded = Phi3VForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    if with_image:
        inputs = tiny_processor(tiny_processor.chat_prompt("<|image_1|>\nWhat is written?"), [make_image(90, 60)])
    else:
        inputs = tiny_processor(tiny_processor.chat_prompt("the quick brown fox"))
    # past original_max_position_embeddings too: the long LongRoPE factors must survive the round trip
    positions = torch.arange(inputs["input_ids"].shape[1]).unsqueeze(0) + (4090 if not with_image else 0)
    with torch.no_grad():
        a = model(**inputs, position_ids=positions).logits
        b = loaded(**inputs, position_ids=positions).logits
    assert torch.equal(a, b), (a - b).abs().max()


def _generate(model, prompt, new, **options):
    out = model.generate(prompt, max_new_tokens=new, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, pad_token_id=0, **options)
    return out.sequences[0, prompt.shape[1]:], torch.stack(out.scores)[:, 0]


def test_generation_across_4096_positions_is_a_documented_choice(tiny_config):
    """`official`: the cache is kept when positions cross original_max_position_embeddings, as the official code
    keeps it (plain cached decoding, step by step); `recompute`: cached generation equals cache-free generation."""
    torch.manual_seed(0)
    model = build_model(tiny_config, attn_implementation="eager").eval()
    prompt = torch.randint(3, 250, (1, 4090), generator=torch.Generator().manual_seed(1))
    new = 12  # positions 4090..4101: the crossing is at new token 7 (position 4096)
    assert Phi3VForCausalLM.longrope_generation == "official"  # the default reproduces the official outputs
    with torch.no_grad():
        _, free = _generate(model, prompt, new, use_cache=False)
        official_tokens, official = _generate(model, prompt, new)
        model.longrope_generation = "recompute"
        _, recompute = _generate(model, prompt, new)
        # the official code's decoding: one forward over the prompt, then one token at a time on the same cache
        out = model(prompt, use_cache=True)
        cache, manual = out.cache, [out.logits[0, -1]]
        for step, token in enumerate(official_tokens[:-1].tolist()):
            out = model(torch.tensor([[token]]), cache=cache, use_cache=True,
                        position_ids=torch.tensor([[prompt.shape[1] + step]]))
            cache = out.cache
            manual.append(out.logits[0, -1])
    crossing = 4096 - prompt.shape[1] + 1  # the first score computed with a position past 4096 in the input
    assert torch.allclose(recompute, free, atol=1e-5, rtol=0), (recompute - free).abs().max()
    assert torch.allclose(official[:crossing], free[:crossing], atol=1e-5, rtol=0)
    assert (official[crossing:] - free[crossing:]).abs().max() > 1e-4  # the measured effect on the tiny preset
    assert torch.allclose(official, torch.stack(manual), atol=1e-5, rtol=0)
    model.longrope_generation = "other"
    with pytest.raises(ValueError, match="longrope_generation='other'"):
        _generate(model, prompt[:, :10], 1)


def test_a_config_that_does_not_belong_to_its_weights_is_named_before_the_model_is_built(tmp_path):
    """Issue 24 (14): a vocabulary size edited in config.json ended as transformers' size-mismatch RuntimeError;
    a million layers would be built before anything noticed."""
    from training_core.model.build import save_tiny_model_dir
    from training_core.model.weights import WeightsError

    directory = save_tiny_model_dir(tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    vocab = config["vocab_size"]
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": vocab + 10}))
    with pytest.raises(WeightsError) as exc:
        build_model(None, weights=directory)
    said = str(exc.value)
    assert said.startswith(f"{directory / 'config.json'} does not belong to the weights beside it")
    assert (f"model.embed_tokens.weight is [{vocab}, {config['hidden_size']}] in model.safetensors, the config "
            f"makes it [{vocab + 10}, {config['hidden_size']}]") in said
    (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1_000_000}))
    with pytest.raises(WeightsError, match="num_hidden_layers 1000000 is outside 1 .. 1024"):
        build_model(None, weights=directory)
    # the checkpoint's own config loads, also naming flash_attention_2 as the official config.json does (the shape
    # check builds its model without asking for flash-attn, which a CPU machine does not have)
    (directory / "config.json").write_text(json.dumps({**config, "_attn_implementation": "flash_attention_2"}))
    assert build_model(None, weights=directory, attn_implementation="sdpa").config.vocab_size == vocab


@pytest.mark.parametrize("shards", [1, 2])
def test_a_checkpoint_saved_without_safetensors_loads_and_is_checked_the_same(tmp_path, shards):
    """Issue 31 (5): `pytorch_model.bin` (and its sharded form with an index), as save_pretrained(safe_serialization=
    False) and older Trainers write, loaded before the shape check existed and loads again: shapes read weights-only
    onto the meta device, the same config check, the same weights; a pickle that is not plain tensors is refused."""
    from training_core.model.build import save_tiny_model_dir
    from training_core.model.weights import WeightsError

    directory = save_tiny_model_dir(tmp_path / "ckpt")
    reference = build_model(None, weights=directory).state_dict()
    state = {k: v.clone() for k, v in reference.items() if k != "model.vision_embed_tokens.wte.weight"}
    for path in directory.glob("*.safetensors*"):
        path.unlink()
    names = sorted(state)
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        parts = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
        for file, keys in parts.items():
            torch.save({k: state[k] for k in keys}, directory / file)
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: file for file, keys in parts.items() for k in keys}}))
    loaded = build_model(None, weights=directory).state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 10}))
    with pytest.raises(WeightsError, match="does not belong to the weights beside it"):
        build_model(None, weights=directory)
    (directory / "config.json").write_text(json.dumps(config))

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    for path in directory.glob("pytorch_model*.bin"):
        torch.save({"x": Payload()}, path)
    with pytest.raises(WeightsError, match="not a torch weights file that loads weights-only"):
        build_model(None, weights=directory)
