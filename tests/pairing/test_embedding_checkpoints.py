"""CLIP checkpoints as users download them: a weights file or an open_clip Hub-style folder, and OpenAI's
weights (trained with QuickGELU) recognised when the architecture lacks it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from open_clip.model import convert_weights_to_lp
from PIL import Image
from safetensors.torch import save_file

from fashionblip2.common.issues import BadInputError
from fashionblip2.pairing.embedding import (
    HUB_WEIGHT_FILES,
    embed_images,
    load_image_encoder,
    quickgelu_evidence,
    resolve_pretrained,
    warn_if_quickgelu_mismatch,
)

LOGGER = "fashionblip2.pairing.embedding"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (50, 70), (200, 0, 0)).save(path)
    return str(path)


def _tiny_state_dict(openai_storage: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    model, _ = load_image_encoder("FACap-tiny-ViT", None, "cpu")
    if openai_storage:
        # What OpenAI's release holds: linear/conv/attention weights and both projections in float16,
        # the layer norms and embeddings in float32 (open_clip builds its models from it the same way).
        convert_weights_to_lp(model, torch.float16)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_openai_stored_weights_in_a_gelu_architecture_warn_naming_the_setting(tmp_path, caplog, image):
    weights = tmp_path / "openai.pt"
    torch.save(_tiny_state_dict(openai_storage=True), weights)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model, preprocess = load_image_encoder("FACap-tiny-ViT", weights, "cpu")
    (message,) = _warnings(caplog)
    assert "embedding.model 'FACap-tiny-ViT'" in message and "QuickGELU" in message and "float16" in message
    assert embed_images([image], model, preprocess, progress=False).vectors.shape == (1, 64)  # it still loads


def test_no_warning_for_quickgelu_architectures_or_open_clip_saved_weights(tmp_path, caplog):
    openai = tmp_path / "openai.pt"
    torch.save(_tiny_state_dict(openai_storage=True), openai)
    plain = tmp_path / "plain.pt"
    torch.save(_tiny_state_dict(openai_storage=False), plain)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        warn_if_quickgelu_mismatch("ViT-L-14-quickgelu", openai)
        load_image_encoder("FACap-tiny-ViT", plain, "cpu")  # one dtype throughout: as open_clip saves
    assert _warnings(caplog) == []


def test_openai_torchscript_entries_and_hub_configs_count_as_evidence(tmp_path):
    jit_like = tmp_path / "jit_state_dict.pt"
    torch.save({**_tiny_state_dict(False), "input_resolution": torch.tensor(224)}, jit_like)
    assert "input_resolution" in quickgelu_evidence(jit_like)
    folder = tmp_path / "hub"
    folder.mkdir()
    torch.save(_tiny_state_dict(False), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    assert "sets quick_gelu" in quickgelu_evidence(resolve_pretrained(folder))


@pytest.mark.parametrize("name", HUB_WEIGHT_FILES)
def test_a_hub_style_folder_resolves_to_its_weights_and_loads(tmp_path, image, name):
    state = _tiny_state_dict(openai_storage=False)
    folder = tmp_path / "ViT-tiny"
    folder.mkdir()
    if name.endswith(".safetensors"):
        save_file(state, folder / name)
    else:
        torch.save(state, folder / name)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 64}}))
    assert resolve_pretrained(folder) == folder / name
    torch.manual_seed(4)
    reference, preprocess = load_image_encoder("FACap-tiny-ViT", None, "cpu")
    torch.manual_seed(5)  # a different random init, which the folder's weights must overwrite
    loaded, _ = load_image_encoder("FACap-tiny-ViT", folder, "cpu")
    np.testing.assert_allclose(
        embed_images([image], loaded, preprocess, progress=False).vectors,
        embed_images([image], reference, preprocess, progress=False).vectors,
        atol=1e-6,
    )


def test_safetensors_is_preferred_when_a_folder_has_both(tmp_path):
    for name in HUB_WEIGHT_FILES:
        (tmp_path / name).write_bytes(b"")
    assert resolve_pretrained(tmp_path).name == "open_clip_model.safetensors"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's deprecation of TorchScript, used to make one
def test_a_folder_without_weights_and_openais_torchscript_archive_are_refused(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(BadInputError, match="folder without open_clip weights.*open_clip_pytorch_model.bin"):
        load_image_encoder("FACap-tiny-ViT", tmp_path, "cpu")
    archive = tmp_path / "ViT-L-14.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)), archive)
    with pytest.raises(BadInputError, match="TorchScript archive.*ViT-L-14-quickgelu"):
        load_image_encoder("FACap-tiny-ViT", archive, "cpu")
