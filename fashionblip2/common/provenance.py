"""Where a result comes from: the code's commit and version, for reports and tables."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fashionblip2 import __version__


def git_commit(cwd: str | Path | None = None) -> str:
    """The checked-out commit (with ``-dirty`` when there are local changes), or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(data: str, run_name: str) -> dict[str, str]:
    return {"package_version": __version__, "commit": git_commit(), "data": data, "run_name": run_name}
