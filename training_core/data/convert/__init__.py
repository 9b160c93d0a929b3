"""Converters to the conversation-format jsonl: UCF-101 videos (as the recipe's converter) and the Hugging Face
layouts of DocVQA, Hateful Memes and NLVR2."""

from .hf import convert_hf
from .ucf101 import convert_ucf101, ucf101_prompt

__all__ = ["convert_hf", "convert_ucf101", "ucf101_prompt"]
