"""The transformers captioning path on a tiny, randomly initialised vision-language model built from a
config (a LLaVA: tiny CLIP vision tower + tiny Llama) and saved to a folder, with a tokenizer trained
here, so that the real loading, batching and generation code runs offline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fashionblip2.annotation.backends import Request, TransformersCaptioner

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "a red dress with long sleeves and a round neckline",
        "describe the skirt in detail",
        "the blue shirt is made of cotton",
        "ASSISTANT: a black leather jacket",
    ] * 20
    raw.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            initializer_range=0.5,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy then drops
    )
    folder = tmp_path_factory.mktemp("tiny-vlm")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_batched_generation_from_a_local_folder(tiny_vlm, tmp_path):
    paths = []
    for i, colour in enumerate([(200, 20, 20), (20, 20, 200), (20, 160, 20)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 56), colour).save(p)
        paths.append(str(p))
    requests = [Request({"messages": [{"role": "user", "content": "Describe the dress."}]}, {"path": p}) for p in paths]

    def captions(batch_size: int) -> list[str]:
        out: dict[int, str] = {}
        captioner = TransformersCaptioner(tiny_vlm, max_new_tokens=8, batch_size=batch_size, device="cpu")
        captioner.generate(requests, lambda i, text, err: out.__setitem__(i, text))
        return [out[i] for i in range(len(requests))]

    batched, single = captions(2), captions(1)
    assert batched == single  # left padding: a batch gives what one-by-one greedy decoding gives
    assert all(isinstance(t, str) for t in batched) and any(t for t in batched)
    assert TransformersCaptioner(tiny_vlm, device="cpu").model == tiny_vlm.rstrip("/").rsplit("/", 1)[1]
