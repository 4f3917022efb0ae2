#!/usr/bin/env python
"""An InternVL (transformers' own ``internvl`` format) with random weights, its tokenizer and its
processor, built offline from a config: nothing is downloaded.

Two sizes:

- ``paper``: about 8 B parameters, shaped like InternVL3-8B-hf (the transformers-format release
  of the captioner the paper preset names): InternViT-300M at 448 px (24 layers x 1024, patch 14,
  pixel shuffle 0.5, so 256 image tokens a tile) and a Qwen2-7B-shaped language model (28 layers x
  3584, 28 heads, 4 key-value heads, MLP 18944, vocabulary 151,674);
- ``tiny``: about 1.7 M parameters, for CPU dry runs and tests.

The tokenizer is a word-level vocabulary of fashion words (the single-word forms of the project's
lexicon), so that a random model's greedy output is a list of attribute words: the workflow's
validators and the rules differ accept it, and a whole `snakemake all` can run on it. For the
paper size the vocabulary is padded with filler words up to the model's 151,674 entries, so
every id the model can emit decodes.

    python benchmarks/random_internvl.py --size tiny --out data/models/tiny-internvl
    python benchmarks/random_internvl.py --size tiny --workflow --out /tmp/tiny-internvl  # for snakemake all

The folder loads with ``AutoProcessor`` and ``AutoModelForImageTextToText`` (what the project's
``transformers`` caption backend does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# Special tokens of InternVL3's chat format; the processor finds the image tokens by these
# attribute names on the tokenizer (start_image_token, context_image_token, ...).
SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
# InternVL3's template in word-level form (tokens separated by spaces, since the vocabulary is
# word-level): a user turn with the image placeholder, then the assistant's turn is opened.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|> ' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<IMG_CONTEXT> ' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ ' <|im_end|> ' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|> assistant ' }}{% endif %}"
)
FUNCTION_WORDS = ["a", "an", "the", "with", "and", "in", "of", "is", "it", "has"]

# Shapes. Image tokens per tile = (image_size / patch)^2 * downsample^2.
SIZES: dict[str, dict[str, Any]] = {
    "paper": {
        "vision": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "image_size": 448,
            "patch_size": 14,
            "attention_bias": True,
        },
        "text": {
            "hidden_size": 3584,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "intermediate_size": 18944,
            "max_position_embeddings": 32768,
            "rope_theta": 1_000_000.0,
            "rms_norm_eps": 1e-6,
        },
        "vocab_size": 151_674,
        "image_seq_length": 256,
        "initializer_range": 0.02,
    },
    "tiny": {
        "vision": {
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "image_size": 56,
            "patch_size": 14,
        },
        "text": {
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 512,
            "max_position_embeddings": 1024,
        },
        "vocab_size": None,  # the word list's size
        "image_seq_length": 4,
        "initializer_range": 0.02,
    },
}
# The workflow's tiny captioner: weights drawn wide, so that the image changes the greedy words
# (at 0.02 every image gets the same caption, and the rules differ then finds no difference).
WORKFLOW_INITIALIZER_RANGE = 0.5


def fashion_words() -> list[str]:
    """The single-word surface forms of the fashion lexicon, and a few function words."""
    from fashionblip2.annotation.lexicon import LEXICON

    forms = {f for values in LEXICON.values() for fs in values.values() for f in fs if " " not in f}
    return FUNCTION_WORDS + sorted(forms - set(FUNCTION_WORDS))


def build_tokenizer(vocab_size: int | None = None):
    """A word-level fast tokenizer: fashion words, filler words up to ``vocab_size``, then InternVL's
    special tokens (so ``len(tokenizer) == vocab_size`` when it is given)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = fashion_words()
    if vocab_size is not None:
        if vocab_size < len(words) + len(SPECIAL):
            raise ValueError(f"vocab_size {vocab_size} is below the {len(words) + len(SPECIAL)} words and specials")
        words += [f"w{i}" for i in range(vocab_size - len(words) - len(SPECIAL))]
    vocab = {w: i for i, w in enumerate(words + SPECIAL)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=IMAGE_TOKENS,
    )


def build_processor(tokenizer, size: str):
    """InternVL's processor: the Got-OCR2 image processor (448 px tiles for paper, tiling on, as
    InternVL3-8B-hf's processor runs it) and the tokenizer with InternVL's chat template."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    spec = SIZES[size]
    side = spec["vision"]["image_size"]
    image_processor = GotOcr2ImageProcessor(
        size={"height": side, "width": side},
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
        # InternVL's normalisation (ImageNet mean and std).
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=spec["image_seq_length"],
        chat_template=CHAT_TEMPLATE,
    )


def internvl_config(size: str, tokenizer, initializer_range: float | None = None):
    from transformers import InternVLConfig

    spec = SIZES[size]
    init = spec["initializer_range"] if initializer_range is None else initializer_range
    return InternVLConfig(
        vision_config={**spec["vision"], "initializer_range": init},
        text_config={
            "model_type": "qwen2",
            **spec["text"],
            "vocab_size": len(tokenizer),
            "tie_word_embeddings": False,
            "initializer_range": init,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=spec["image_seq_length"],
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


def build(
    size: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    initializer_range: float | None = None,
):
    """(model, processor): the model on ``device`` in ``dtype``, in eval mode, with random weights."""
    from transformers import InternVLForConditionalGeneration

    tokenizer = build_tokenizer(SIZES[size]["vocab_size"])
    processor = build_processor(tokenizer, size)
    config = internvl_config(size, tokenizer, initializer_range)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights are made in the final dtype: 8 B fp32 would be 32 GB
    try:
        with torch.device(device):
            model = InternVLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def make_workflow_captioner(model, processor) -> None:
    """Generation defaults for the workflow's tiny captioner, kept in generation_config.json (the
    backend passes only max_new_tokens and do_sample=False): at least 8 words, and never a special
    token, so that every caption is a non-empty list of fashion words."""
    tokenizer = processor.tokenizer
    model.generation_config.min_new_tokens = 8
    never = [t for t in SPECIAL if t != tokenizer.eos_token]
    model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(never)


def save(folder: str | Path, model, processor) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_workflow_model(folder: str | Path, seed: int = 0) -> Path:
    """The tiny captioner that scripts/gpu_check.sh runs `snakemake all` with (same seed, same weights)."""
    model, processor = build("tiny", seed=seed, initializer_range=WORKFLOW_INITIALIZER_RANGE)
    make_workflow_captioner(model, processor)
    return save(folder, model, processor)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--workflow", action="store_true", help="the workflow's tiny captioner (image-dependent words)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16 for paper: 16 GB, not 32"
    )
    args = parser.parse_args()
    if args.workflow:
        if args.size != "tiny":
            parser.error("--workflow builds the tiny captioner only")
        folder = build_workflow_model(args.out, args.seed)
    else:
        model, processor = build(args.size, seed=args.seed, dtype=getattr(torch, args.dtype))
        folder = save(args.out, model, processor)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
