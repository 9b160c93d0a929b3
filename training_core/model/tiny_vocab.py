"""The tiny byte-level tokenizer's special tokens and vocabulary size (`tokenizer.py` builds the tokenizer): plain
numbers, so the tiny preset (`presets.py`) states its vocabulary without importing tokenizers or transformers."""

from __future__ import annotations

HEAD = ["<unk>", "<s>", "</s>"]
CHAT_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]

TINY_SPECIAL_IDS = {tok: i for i, tok in enumerate(HEAD)}
TINY_SPECIAL_IDS.update({tok: len(HEAD) + 256 + i for i, tok in enumerate(CHAT_SPECIALS)})
# Embedding rows: the tokens above, padded to a multiple of 16 like the real model's 32064.
TINY_VOCAB_SIZE = 272
