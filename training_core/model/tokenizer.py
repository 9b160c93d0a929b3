"""A tiny tokenizer for the `tiny` preset, built locally (no download), saved like a real checkpoint's.

Byte-level (every UTF-8 byte one token, so any text round-trips), with the Phi-3 special tokens and chat template
and Llama's convention of a BOS at the start of every encoded text (`add_special_tokens=False` omits it). The real
checkpoints' tokenizer is loaded from their directory with `AutoTokenizer`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .tiny_vocab import CHAT_SPECIALS, HEAD, TINY_SPECIAL_IDS

# The Phi-3 chat template (docs/RECIPE.md §2.2): no BOS in the template, the tokenizer adds it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}"
)

_BYTE_CHARS = [bytes_to_unicode()[b] for b in range(256)]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(HEAD + _BYTE_CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in HEAD + CHAT_SPECIALS])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", TINY_SPECIAL_IDS["<s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|system|>", "<|end|>", "<|user|>", "<|assistant|>"],
        padding_side="right",
    )
    tok.chat_template = CHAT_TEMPLATE
    for token, idx in TINY_SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(token) == idx, (token, idx)
    return tok


def save_tiny_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    tok = build_tiny_tokenizer()
    tok.save_pretrained(str(directory))
    return tok
