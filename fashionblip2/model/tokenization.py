"""Tokenisers for the Q-Former's text path.

The paper's BLIP-2 reads text with BERT's uncased WordPiece tokenizer (a local folder holding
``bert-base-uncased`` or the BLIP-2 checkpoint's tokenizer). The embedded default builds a small
uncased word-level vocabulary from the workflow's own training texts, so nothing is downloaded.
Both give ``[CLS] text [SEP]`` with ``[PAD]`` padding: the Q-Former's text path reads position 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_word_level(texts: Iterable[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A BERT-style uncased word-level tokenizer: the ``vocab_size`` most frequent words of ``texts``
    (BERT's normaliser and pre-tokeniser; other words map to [UNK]).

    Word-level rather than WordPiece because the ``tokenizers`` WordPiece trainer breaks ties in a
    run-dependent order (measured: four runs on the same texts gave four vocabularies), and the
    same config must give the same files. Ties here are broken alphabetically.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    words = sorted(counts, key=lambda w: (-counts[w], w))[: max(0, vocab_size - len(SPECIAL_TOKENS))]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces, punctuation attached
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def load_tokenizer(path: str | os.PathLike[str]):
    """A tokenizer saved in Hugging Face format in a local folder (never downloaded)."""
    if not (Path(path) / "tokenizer_config.json").exists() and not (Path(path) / "vocab.txt").exists():
        raise FileNotFoundError(f"{path}: no tokenizer here (expected tokenizer_config.json or vocab.txt)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask, padded to the longest text of the batch, cut at ``max_length``."""
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
