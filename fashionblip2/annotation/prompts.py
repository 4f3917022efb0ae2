"""Prompt files: YAML lists of chat messages whose contents have {placeholders}."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import yaml

from fashionblip2.common.issues import BadInputError

ROLES = ("system", "user", "assistant")


class PromptTemplate:
    def __init__(self, messages: list[dict[str, str]], source: str = "<prompt>"):
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise BadInputError(f"{source}: message {i} needs a role ({', '.join(ROLES)}) and a text content")
        self.messages = messages
        self.source = source
        self.fields = sorted({f for m in messages for _, f, _, _ in string.Formatter().parse(m["content"]) if f})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PromptTemplate:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise BadInputError(f"{path}: cannot read the prompt file: {e}") from e
        if not isinstance(data, list) or not data:
            raise BadInputError(f"{path}: a prompt file is a YAML list of {{role, content}} messages")
        return cls(data, str(path))

    def render(self, **values: Any) -> list[dict[str, str]]:
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise BadInputError(f"{self.source}: no value for placeholder(s) {', '.join(missing)}")
        return [{"role": m["role"], "content": m["content"].format(**values).strip()} for m in self.messages]
