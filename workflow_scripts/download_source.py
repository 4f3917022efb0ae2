#!/usr/bin/env python
"""Download one real dataset from the URLs in config (downloads.files.<source>): resumable
transfers with a progress bar, SHA-256 checks, archives unpacked; writes the source folder and a
download_report.json in it (images of an image list that could not be fetched are listed there).

Example:
    python workflow_scripts/download_source.py --source fashioniq --entries '[{"path": "captions/cap.dress.val.json",
        "url": "https://raw.githubusercontent.com/XiaoxiaoGuo/fashion-iq/master/captions/cap.dress.val.json",
        "sha256": "5e5117d45695df9c3ca91fac3e0bc49e6422ae9c8b3793f0ac9b3ab83adb7de9"}]' \\
        --partial-dir data/downloads --timeout 60 --retries 3 --backoff 2 --out data/downloaded/fashioniq
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fashionblip2.common.issues import BadInputError  # noqa: E402
from fashionblip2.sources.download import DownloadError, DownloadSettings, download_source  # noqa: E402
from fashionblip2.workflow_cli import run_main, setup_logging  # noqa: E402

log = logging.getLogger("download_source")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="the source's name (for messages and the report)")
    parser.add_argument(
        "--entries", required=True, help="JSON list of {kind, url, sha256, path, ...} (see config.yaml)"
    )
    parser.add_argument("--partial-dir", required=True, help="partial transfers and finished archives (kept)")
    parser.add_argument("--out", required=True, help="output: the source folder")
    parser.add_argument("--timeout", required=True, type=float, help="seconds without data before a retry")
    parser.add_argument("--retries", required=True, type=int)
    parser.add_argument("--backoff", required=True, type=float, help="first wait between retries (doubles)")
    args = parser.parse_args()
    setup_logging()
    settings = DownloadSettings(Path(args.partial_dir), args.timeout, args.retries, args.backoff)
    try:
        result = download_source(args.source, json.loads(args.entries), Path(args.out), settings)
    except DownloadError as error:  # a message, not a traceback: the URL, what happened, what to do
        raise BadInputError(str(error)) from error
    log.info(
        "%s: %d files, %d archives, %d images (%d failed) -> %s",
        args.source, len(result.files), len(result.archives), result.images, len(result.images_failed), args.out,
    )  # fmt: skip


if __name__ == "__main__":
    run_main(main)
