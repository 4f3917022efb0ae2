"""The transformers caption backend refuses custom-code checkpoints (written for trust_remote_code)
before loading anything, and says which transformers-format release to use instead."""

from __future__ import annotations

import json
import re

import pytest

from fashionblip2.annotation.backends import HF_FORMAT_RELEASE, TransformersCaptioner, custom_code_reason
from fashionblip2.common.issues import BadInputError

# The shape of OpenGVLab/InternVL2_5-8B's config.json: the model comes from the repository's own code.
INTERNVL_CHAT = {
    "architectures": ["InternVLChatModel"],
    "auto_map": {
        "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
        "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
    },
    "model_type": "internvl_chat",
    "template": "internvl2_5",
}


def _folder(tmp_path, config: dict) -> str:
    folder = tmp_path / "InternVL2_5-8B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_a_custom_code_internvl_folder_is_refused_naming_the_folder_and_the_hf_release(tmp_path):
    folder = _folder(tmp_path, INTERNVL_CHAT)
    # The folder holds no weights: any attempt to load them would fail differently.
    with pytest.raises(BadInputError) as info:
        TransformersCaptioner(folder, device="cpu")
    message = str(info.value)
    assert folder in message and "internvl_chat" in message and "trust_remote_code" in message
    assert HF_FORMAT_RELEASE == "OpenGVLab/InternVL3-8B-hf" and HF_FORMAT_RELEASE in message


def test_auto_map_alone_marks_custom_code(tmp_path):
    folder = _folder(tmp_path, {"model_type": "internvl", "auto_map": {"AutoModel": "modeling_x.XModel"}})
    with pytest.raises(BadInputError, match=re.escape(folder) + ".*auto_map"):
        TransformersCaptioner(folder, device="cpu")


def test_transformers_format_configs_pass_the_check(tmp_path):
    assert custom_code_reason(_folder(tmp_path, {"model_type": "internvl", "architectures": ["X"]})) is None
    assert custom_code_reason(tmp_path / "no-config-here") is None  # left to transformers' own error
