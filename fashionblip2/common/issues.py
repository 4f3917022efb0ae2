"""Skip-and-count bookkeeping for dirty inputs.

Real fashion datasets are known to be dirty (FashionIQ mirrors miss thousands of images, label
files have broken lines). Readers record every problem here with the file and line it came from,
and either skip the record or repair it (e.g. a grayscale image read as RGB). With ``strict=True``
the first problem that would skip data raises :class:`BadInputError` instead.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import pandas as pd

SKIPPED = "skipped"
REPAIRED = "repaired"


class BadInputError(ValueError):
    """An input problem that stops the run (strict mode, or a user mistake such as a bad column)."""


class StopRun(RuntimeError):
    """A condition that must stop a job with its message (a result cache that cannot be written, too
    many failed answers): the workflow scripts exit non-zero, so Snakemake stops and keeps no output."""


@dataclass(frozen=True)
class InputIssue:
    source: str
    file: str
    line: int | None
    record: str
    reason: str
    action: str

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass
class InputReport:
    """Problems found while reading one or more sources."""

    strict: bool = False
    issues: list[InputIssue] = field(default_factory=list)

    def skip(self, source: str, file: str | os.PathLike[str], line: int | None, record: str, reason: str) -> None:
        issue = InputIssue(source, str(file), line, record, reason, SKIPPED)
        if self.strict:
            raise BadInputError(f"{issue.where()}: {reason} ({record}) [strict mode: set strict: false to skip]")
        self.issues.append(issue)

    def repair(self, source: str, file: str | os.PathLike[str], line: int | None, record: str, reason: str) -> None:
        # A repair loses nothing, so it never stops a strict run; it is only recorded.
        self.issues.append(InputIssue(source, str(file), line, record, reason, REPAIRED))

    def extend(self, other: InputReport) -> None:
        self.issues.extend(other.issues)

    def count(self, action: str | None = None, source: str | None = None) -> int:
        return sum(
            1 for i in self.issues if (action is None or i.action == action) and (source is None or i.source == source)
        )

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per source, keyed by ``"<action>: <reason kind>"`` (the reason up to its first colon)."""
        counts: dict[str, Counter[str]] = {}
        for issue in self.issues:
            kind = issue.reason.split(":", 1)[0]
            counts.setdefault(issue.source, Counter())[f"{issue.action}: {kind}"] += 1
        return {src: dict(sorted(c.items())) for src, c in sorted(counts.items())}

    def to_frame(self) -> pd.DataFrame:
        columns = ["source", "file", "line", "record", "reason", "action"]
        frame = pd.DataFrame([asdict(i) for i in self.issues], columns=columns)
        return frame.astype({"line": "Int64"})
