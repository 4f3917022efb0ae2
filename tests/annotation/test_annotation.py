import json

import pandas as pd
import pytest
import yaml

from fashionblip2.annotation.backends import MetadataCaptioner, Request, RulesDiffer, garment_colours
from fashionblip2.annotation.cache import ResultCache, file_digest, request_key
from fashionblip2.annotation.lexicon import find_attributes, names_a_difference
from fashionblip2.annotation.prompts import PromptTemplate
from fashionblip2.annotation.runner import Prices, annotate, estimate_cost
from fashionblip2.annotation.stages import caption_requests, make_backend, modification_requests
from fashionblip2.annotation.validation import check_caption, check_modification
from fashionblip2.common.issues import BadInputError
from fashionblip2.config import resolved_sources
from fashionblip2.sources.manifest import build_manifest
from tests.conftest import REPO, source_settings


def test_cache_keys_and_values(tmp_path):
    a = request_key("openai", "m", {"messages": [{"role": "user", "content": "x"}], "temperature": 0.2})
    b = request_key("openai", "m", {"temperature": 0.2, "messages": [{"role": "user", "content": "x"}]})
    assert a == b and a != request_key("openai", "other", {"messages": [], "temperature": 0.2})
    cache = ResultCache(tmp_path)
    assert cache.get(a) is None and a not in cache
    cache.put(a, {"text": "hello"})
    assert a in cache and cache.get(a) == {"text": "hello"} and (tmp_path / a[:2] / f"{a}.json").exists()


def test_an_image_is_keyed_by_its_content_not_its_path(tmp_path):
    (tmp_path / "a.png").write_bytes(b"same bytes")
    (tmp_path / "moved.png").write_bytes(b"same bytes")
    assert file_digest(tmp_path / "a.png") == file_digest(tmp_path / "moved.png")


def test_prompt_files_render_and_complain(tmp_path):
    template = PromptTemplate.load(REPO / "prompts/modification.yaml")
    assert template.fields == ["category", "reference_caption", "target_caption"]
    messages = template.render(category="dress", reference_caption="A red dress.", target_caption="A blue dress.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-1]["content"].endswith("Target: A blue dress.")
    with pytest.raises(BadInputError, match="no value for placeholder"):
        template.render(category="dress")
    (tmp_path / "bad.yaml").write_text("- role: narrator\n  content: hi\n")
    with pytest.raises(BadInputError, match="bad.yaml: message 0 needs a role"):
        PromptTemplate.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty text"),
        ("   ", "empty text"),
        (None, "empty text"),
        ("I'm sorry, I cannot help with that.", "refusal"),
        ("The dress is red " + "and very red " * 30, "too long"),
        ("In the image the dress is red.", "mentions the image or picture"),
        ("This picture shows a longer skirt.", "mentions the image or picture"),
        ("It looks nicer.", "names no difference"),
        ("The dress is red instead of blue.", None),
        ("Make it longer.", None),
    ],
)
def test_modification_texts_are_checked(text, reason):
    got = check_modification(text, 40)
    assert (got is None) if reason is None else got.startswith(reason)


def test_captions_may_be_long_descriptions_but_not_refusals():
    assert check_caption("A red dress. " * 10, 150) is None
    assert check_caption("As an AI, I am unable to describe people.", 150) == "refusal"


def test_the_lexicon_reads_noisy_product_texts():
    assert find_attributes("chic navy breton stripe 3/4 sleeve turtleneck chiffon longline tee") == {
        "colour": "navy",
        "pattern": "stripes",
        "sleeve": "elbow",
        "neckline": "turtleneck",
        "length": "long",
        "fabric": "chiffon",
        "garment": "top",
    }
    assert find_attributes("jet black slim-fit leather jeans")["colour"] == "black"
    assert names_a_difference("is shorter") and not names_a_difference("looks great")


def stage_settings(stage: str, **overrides) -> dict:
    """annotation.<stage> of the default config, with overrides: what the annotate script receives."""
    return {**yaml.safe_load((REPO / "config.yaml").read_text())["annotation"][stage], **overrides}


def test_prompts_name_categories_readably_and_backends_keep_the_raw_one():
    pairs = pd.DataFrame({"reference_id": ["a", "c"], "target_id": ["b", "d"], "category": ["toptee", "t_shirt"]})
    captions = {"a": "A red top.", "b": "A blue top.", "c": "A tee.", "d": "A tee."}
    template = PromptTemplate.load(REPO / "prompts/modification.yaml")
    toptee, tee = modification_requests(pairs, captions, template, stage_settings("modification", backend="openai"))
    prompt = json.dumps(toptee.keyed["messages"])
    assert "Category: top or t-shirt" in prompt and "toptee" not in prompt
    assert "Category: t shirt" in json.dumps(tee.keyed["messages"])
    assert toptee.extra["category"] == "toptee"  # the offline differ reads the dataset's own name
    images = pd.DataFrame({"image_id": ["x"], "path": [str(REPO / "prompts/caption.yaml")], "category": ["toptee"],
                           "product_text": [""], "attributes": [""]})  # fmt: skip
    (request,) = caption_requests(
        images, PromptTemplate.load(REPO / "prompts/caption.yaml"), stage_settings("caption", backend="openai")
    )
    assert "the top or t-shirt shown" in request.keyed["messages"][-1]["content"]


def test_offline_backends_on_the_tiny_world(tiny_world):
    world, truth_path = tiny_world
    images = build_manifest(resolved_sources(source_settings(fashion200k="synthetic"), world), progress=False).images
    truth = pd.read_parquet(truth_path).set_index("path")
    template = PromptTemplate.load(REPO / "prompts/caption.yaml")
    requests = caption_requests(images, template, stage_settings("caption"))
    captions: dict[int, str] = {}
    MetadataCaptioner().generate(requests, lambda i, text, err: captions.__setitem__(i, text))
    assert len(captions) == len(images) and all(check_caption(c, 150) is None for c in captions.values())
    # The colour read from the pixels is the true one for most solid garments.
    solid = [
        (i, row)
        for i, row in enumerate(images.itertuples())
        if truth.loc[str(row.path).split("/world/")[1], "pattern"] == "solid"
    ]
    right = sum(truth.loc[str(r.path).split("/world/")[1], "colour"] in captions[i] for i, r in solid)
    assert right >= 0.6 * len(solid)

    diffs: dict[int, tuple] = {}
    pair = Request(
        {},
        {
            "reference_caption": "A loose red dress with a floral pattern. It is midi.",
            "target_caption": "A blue dress in a solid colour. It is mini.",
            "category": "dress",
        },
    )
    same = Request({}, {"reference_caption": "A red dress.", "target_caption": "A red dress.", "category": "dress"})
    RulesDiffer().generate([pair, same], lambda i, text, err: diffs.__setitem__(i, (text, err)))
    assert diffs[0] == ("The dress is blue instead of red, has no pattern and is shorter, mini.", None)
    assert diffs[1] == (None, "no attribute difference between the two captions")
    assert check_modification(diffs[0][0], 60) is None


def test_garment_colours_ignore_the_background(tmp_path):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (250, 250, 250))
    ImageDraw.Draw(img).rectangle([16, 10, 48, 60], fill=(40, 90, 200))
    img.save(tmp_path / "g.png")
    assert garment_colours(str(tmp_path / "g.png"))[0] == "blue"


class CountingBackend:
    """Answers from a script of replies, counting calls: to test the runner's cache and retry."""

    name = "counting"
    model = "v1"

    def __init__(self, replies):
        self.replies = replies
        self.calls = []

    def generate(self, requests, on_result):
        for i, r in enumerate(requests):
            self.calls.append(r.keyed["id"])
            reply = self.replies[r.keyed["id"]].pop(0)
            on_result(
                i,
                reply if not isinstance(reply, Exception) else None,
                str(reply) if isinstance(reply, Exception) else None,
            )


def test_runner_retries_once_caches_only_accepted_answers_and_reruns_only_failures(tmp_path):
    replies = {
        "a": ["The skirt is longer."],
        "b": ["It is nice.", "The skirt is red."],  # rejected, then accepted
        "c": [RuntimeError("HTTP 500"), "It is nice."],  # failed twice
        "d": ["In the picture it is red.", "In the picture it is blue."],  # rejected twice
    }
    backend = CountingBackend({k: list(v) for k, v in replies.items()})
    requests = [Request({"id": k}) for k in "abcd"]
    cache = ResultCache(tmp_path)
    check = lambda t: check_modification(t, 40)  # noqa: E731
    out = annotate(requests, backend, cache, check, progress=False)
    assert [o.status for o in out] == ["ok", "ok", "failed", "failed"]
    assert out[2].reason == "names no difference" and out[3].reason == "mentions the image or picture"
    assert backend.calls == ["a", "b", "c", "d", "b", "c", "d"]
    # A rerun asks only for the failures.
    backend.replies = {"c": ["The skirt is shorter."], "d": ["The skirt is blue."]}
    backend.calls = []
    out = annotate(requests, backend, cache, check, progress=False)
    assert backend.calls == ["c", "d"] and [o.status for o in out] == ["ok"] * 4
    assert [o.cached for o in out] == [True, True, False, False]


def test_cost_estimate_counts_only_uncached_requests(tmp_path):
    backend = CountingBackend({})
    backend.name = "openai"  # priced at the list price (the offline backends cost nothing)
    cache = ResultCache(tmp_path)
    requests = [Request({"id": str(i), "messages": [{"role": "user", "content": "x" * 400}]}) for i in range(10)]
    cache.put(request_key(backend.name, backend.model, requests[0].keyed), {"text": "t"})
    est = estimate_cost(requests, cache, backend, 100, Prices(1.0, 2.0, 85), with_image=True)
    assert est["requests"] == 9 and est["output_tokens_at_most"] == 900
    assert est["input_tokens"] == 9 * (len(json.dumps(requests[1].keyed["messages"])) // 4 + 85)
    assert est["cost_usd_at_most"] == round(est["input_tokens"] / 1e6 + 2 * 900 / 1e6, 4)
    backend.name = "openai-batch"  # the same questions through the Batch API: half the price
    batch = estimate_cost(requests, cache, backend, 100, Prices(1.0, 2.0, 85), with_image=True)
    # (Its cache keys differ by backend, so the tenth question is not cached for it.)
    assert batch["requests"] == 10 and batch["output_tokens_at_most"] == 1000
    assert batch["cost_usd_at_most"] == round((batch["input_tokens"] / 1e6 + 2 * 1000 / 1e6) / 2, 4)


def test_unknown_backends_are_refused():
    with pytest.raises(BadInputError, match="annotation.caption.backend 'rules'"):
        make_backend("caption", {"backend": "rules"})
    with pytest.raises(BadInputError, match="is not a folder"):
        make_backend("caption", stage_settings("caption", backend="transformers", model_path="/nonexistent/vlm"))
