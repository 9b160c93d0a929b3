import pytest
import torch
from safetensors import safe_open

from training_core.model import build_model

ANSWER = "yes"


def _batch(processor, image, question="<|image_1|>\nIs it red?"):
    return processor(processor.chat_prompt(question), [image])


def _train_batch(processor, tokenizer, image):
    """The recipe's training example: prompt masked with -100, answer + <|end|>\\n<|endoftext|> supervised."""
    prompt = _batch(processor, image)
    answer = tokenizer(f"{ANSWER}<|end|>\n<|endoftext|>", add_special_tokens=False, return_tensors="pt").input_ids
    input_ids = torch.cat([prompt["input_ids"], answer], dim=1)
    labels = torch.cat([torch.full_like(prompt["input_ids"], -100), answer], dim=1)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "pixel_values": prompt["pixel_values"],
        "image_sizes": prompt["image_sizes"],
    }, prompt


def test_eager_and_sdpa_agree_forward_and_backward(tiny_config, tiny_processor, tiny_tokenizer, make_image):
    batch, _ = _train_batch(tiny_processor, tiny_tokenizer, make_image(80, 60))
    results = {}
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = build_model(tiny_config, attn_implementation=attn)
        assert model.model.vision_embed_tokens.img_processor.vision_model.config._attn_implementation == attn
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[attn] = (out.logits.detach(), out.loss.detach(), grads)
    (l_e, loss_e, g_e), (l_s, loss_s, g_s) = results["eager"], results["sdpa"]
    torch.testing.assert_close(l_e, l_s, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_e, loss_s, rtol=1e-5, atol=1e-6)
    assert g_e.keys() == g_s.keys() and len(g_e) > 50
    for name in g_e:
        torch.testing.assert_close(g_e[name], g_s[name], rtol=1e-3, atol=1e-5, msg=name)


def test_images_reach_the_language_model(tiny_model, tiny_processor, tiny_tokenizer, make_image):
    batch, _ = _train_batch(tiny_processor, tiny_tokenizer, make_image(80, 60, seed=0))
    loss_a = tiny_model(**batch).loss
    other, _ = _train_batch(tiny_processor, tiny_tokenizer, make_image(80, 60, seed=5))
    loss_b = tiny_model(**{**batch, "pixel_values": other["pixel_values"]}).loss
    assert batch["input_ids"].equal(other["input_ids"])
    assert abs(loss_a.item() - loss_b.item()) > 1e-4
    # gradients reach CLIP, the projector and both separators through the image positions
    loss_a.backward()
    vision = tiny_model.model.vision_embed_tokens
    for param in (vision.glb_GN, vision.sub_GN, vision.img_projection[0].weight,
                  vision.img_processor.vision_model.encoder.layers[0].mlp.fc1.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    # the last CLIP layer and post_layernorm are never used (penultimate-layer features)
    unused = vision.img_processor.vision_model.encoder.layers[-1].mlp.fc1.weight
    assert unused.grad is None


def _reference_layout(feats, h_crop, w_crop, glb_gn, sub_gn):
    """Token-by-token construction of the sub_glb layout (docs/RECIPE.md §2.9), independent of the model's reshapes."""
    n_patch, c = feats.shape[1], feats.shape[2]
    side = int(n_patch**0.5)
    g = side // 2

    def merged(crop, r, col):  # merged token at (r, col) of one crop: [p(0,0), p(0,1), p(1,0), p(1,1)]
        parts = [crop[(2 * r + dr) * side + 2 * col + dc] for dr in (0, 1) for dc in (0, 1)]
        return torch.cat(parts)

    def grid(crops, rows, cols):
        out = []
        for r in range(rows * g):
            for col in range(cols * g):
                out.append(merged(crops[(r // g) * cols + col // g], r % g, col % g))
            out.append(sub_gn.reshape(-1))
        return out

    tokens = grid(feats[1 : 1 + h_crop * w_crop], h_crop, w_crop) + [glb_gn.reshape(-1)] + grid(feats[:1], 1, 1)
    assert all(t.shape == (4 * c,) for t in tokens)
    return torch.stack(tokens)


def test_hd_feature_layout_matches_token_by_token_reference(tiny_model):
    vision = tiny_model.model.vision_embed_tokens
    with torch.no_grad():
        vision.glb_GN.normal_()
        vision.sub_GN.normal_()
    torch.manual_seed(3)
    feats = torch.randn(2, 5, 16, 32)  # 2 images, num_crops 4 (+ global), 4x4 patches, width 32
    sizes = torch.tensor([[56 * 2, 56 * 2], [56, 56 * 3]])
    out = vision.hd_feature_transform(feats, sizes)
    expected = torch.cat([
        _reference_layout(feats[0], 2, 2, vision.glb_GN, vision.sub_GN),
        _reference_layout(feats[1], 1, 3, vision.glb_GN, vision.sub_GN),
    ])
    torch.testing.assert_close(out, expected.detach())


def test_image_features_fill_placeholders_in_order(tiny_model, tiny_processor, make_image):
    batch = tiny_processor("<|image_1|>a<|image_2|>b", [make_image(56, 56), make_image(112, 56, seed=1)])
    vision = tiny_model.model.vision_embed_tokens
    with torch.no_grad():
        embeds = vision(batch["input_ids"], batch["pixel_values"], batch["image_sizes"])
        feats = vision.hd_feature_transform(vision.image_features(batch["pixel_values"]), batch["image_sizes"])
        projected = vision.img_projection(feats)
    mask = batch["input_ids"][0] < 0
    torch.testing.assert_close(embeds[0, mask], projected)
    torch.testing.assert_close(embeds[0, ~mask], tiny_model.model.embed_tokens(batch["input_ids"][0, ~mask]))


def test_save_and_from_pretrained_reproduce_logits(tmp_path, tiny_model, tiny_processor, make_image):
    batch = _batch(tiny_processor, make_image(90, 70))
    tiny_model.eval()
    with torch.no_grad():
        logits = tiny_model(**batch).logits
    tiny_model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == {name for name, _ in tiny_model.named_parameters()}  # the official key set, no `wte` alias
    assert "model.vision_embed_tokens.wte.weight" not in saved
    loaded = build_model(None, weights=tmp_path, attn_implementation="eager").eval()
    assert loaded.model.vision_embed_tokens.wte is loaded.model.embed_tokens
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, logits, rtol=0, atol=0)


def test_checkpoint_that_also_stores_the_alias_loads(tmp_path, tiny_model, tiny_processor, make_image):
    """Some exports write both `model.embed_tokens.weight` and the `wte` alias: both layouts must load."""
    from safetensors.torch import save_file

    tiny_model.save_pretrained(tmp_path)
    state = {k: v.clone().contiguous() for k, v in tiny_model.state_dict().items()}
    assert "model.vision_embed_tokens.wte.weight" in state
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = build_model(None, weights=tmp_path)
    torch.testing.assert_close(loaded.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight, rtol=0, atol=0)


def test_missing_checkpoint_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        build_model(None, weights=tmp_path / "nowhere")


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, tiny_processor, tiny_tokenizer, make_image):
    batch, _ = _train_batch(tiny_processor, tiny_tokenizer, make_image(80, 60))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_config).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.layers[0].gradient_checkpointing
            assert model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers[0].gradient_checkpointing
        model(**batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_freezing_the_image_embedder_freezes_the_token_embedding(tiny_model):
    """The recipe's `vision_embed_tokens.requires_grad_(False)` also freezes `embed_tokens` (shared `wte`)."""
    tiny_model.model.vision_embed_tokens.requires_grad_(False)
    assert not tiny_model.model.embed_tokens.weight.requires_grad
    assert tiny_model.lm_head.weight.requires_grad


def test_loss_falls_then_generation_answers_and_stops_at_eos(tiny_model, tiny_processor, tiny_tokenizer, make_image):
    image = make_image(80, 60)
    batch, prompt = _train_batch(tiny_processor, tiny_tokenizer, image)
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=1e-7)
    losses = []
    tiny_model.train()
    for _ in range(25):
        loss = tiny_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    tiny_model.eval()
    eos = tiny_tokenizer.eos_token_id
    max_new = 20
    with torch.no_grad():
        out = tiny_model.generate(**prompt, max_new_tokens=max_new, do_sample=False, eos_token_id=eos)
        no_cache = tiny_model.generate(**prompt, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                                       use_cache=False)
    new = out[0, prompt["input_ids"].shape[1]:].tolist()
    assert new[-1] == eos and len(new) < max_new  # stopped at <|endoftext|>, not at the length limit
    assert tiny_processor.decode(new) == ANSWER + "\n"  # "<|end|>" is special and skipped; "\n" is text
    assert out.tolist() == no_cache.tolist()  # the KV cache path (image features on the first step) agrees


def test_tiny_model_dir_loads_like_a_real_checkpoint(tmp_path, make_image):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from training_core.model import Phi3VForCausalLM, Phi3VProcessor, save_tiny_model_dir

    directory = save_tiny_model_dir(tmp_path / "tiny", num_crops=4)
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in directory.iterdir()
    }
    processor = Phi3VProcessor.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token == "<s>" and tokenizer.chat_template
    assert AutoConfig.from_pretrained(directory).model_type == "phi3_v"
    auto = AutoModelForCausalLM.from_pretrained(directory)  # native class, no remote code
    assert isinstance(auto, Phi3VForCausalLM)
    loaded = build_model(None, weights=directory, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.model.rotary_emb.inv_freq.dtype == torch.float32
    batch = processor(processor.chat_prompt("<|image_1|>\nhi"), [make_image(60, 60)])
    with torch.no_grad():
        ref = auto.eval()(**batch).logits
        low = loaded.eval()(**batch).logits
    torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=0.1)


def test_generation_computes_image_features_once(tiny_model, tiny_processor, tiny_tokenizer, make_image, monkeypatch):
    vision = tiny_model.model.vision_embed_tokens
    calls = []
    original = vision.image_features
    monkeypatch.setattr(vision, "image_features", lambda pv: calls.append(pv.shape) or original(pv))
    prompt = _batch(tiny_processor, make_image(80, 60))
    tiny_model.eval()
    with torch.no_grad():
        out = tiny_model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                  eos_token_id=tiny_tokenizer.eos_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 6
    assert len(calls) == 1  # prefill only; decoding steps reuse the KV cache


def test_longrope_scaling_matches_the_fact_sheet(tiny_model):
    # cos/sin are multiplied by sqrt(1 + ln(131072/4096) / ln(4096)) ~ 1.1902 (docs/RECIPE.md §2.9)
    assert tiny_model.model.rotary_emb.attention_scaling == pytest.approx(1.1902, abs=1e-4)
    rotary = tiny_model.model.rotary_emb
    x = torch.zeros(1, 1, 16)
    short_cos, _ = rotary(x, torch.tensor([[10]]))
    long_cos, _ = rotary(x, torch.tensor([[10, 5000]]))  # a sequence past 4096 switches to the long factors
    assert not torch.allclose(short_cos[0, 0], long_cos[0, 0])
