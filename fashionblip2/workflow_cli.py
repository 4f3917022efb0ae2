"""What the workflow scripts (workflow_scripts/*.py, one per rule) share: logging to stderr (the
rule's log file), error reporting without a traceback, and the flags several scripts take. A
script's flags say what kind of setting they carry: ``--settings`` / ``--recipe`` change what a job
writes (they are the rule's params), ``--job-options`` only how it runs (device, threads,
concurrency, timeouts: editing them reruns nothing). The ``fashionblip2`` command uses the logging."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from fashionblip2.common.issues import BadInputError, StopRun


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main; a bad input (or a result cache that cannot be written) ends it with its
    message and exit status 2, not a traceback."""
    try:
        main()
    except (BadInputError, StopRun, FileExistsError) as e:
        logging.getLogger("fashionblip2").error("%s", e)
        sys.exit(2)


def add_pairing_selection(parser: argparse.ArgumentParser) -> None:
    """--manifest, --sources, --fashioniq-splits: which manifest images are embedded and paired."""
    parser.add_argument("--manifest", required=True, help="the image manifest (Parquet)")
    parser.add_argument("--sources", required=True, help="JSON list of manifest sources to embed and pair")
    parser.add_argument("--fashioniq-splits", required=True, help="JSON list of FashionIQ splits to embed and pair")


def selected_images(args: argparse.Namespace):
    """The manifest rows chosen by :func:`add_pairing_selection`'s arguments."""
    import pandas as pd

    from fashionblip2.sources.manifest import select_for_pairing

    return select_for_pairing(
        pd.read_parquet(args.manifest), json.loads(args.sources), json.loads(args.fashioniq_splits)
    )


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """--md and --csv: the files every table script writes, each named by its rule (a .tex or a
    section's CSV is a flag of the script that writes it), so that a script writes nothing the
    workflow has not declared."""
    parser.add_argument("--md", required=True, help="the table in Markdown, with its notes")
    parser.add_argument("--csv", required=True, help="the table's numbers (intervals as value, low, high)")


def table_files(args: argparse.Namespace, sections: dict[str, str] | None = None):
    """The :class:`~fashionblip2.results.writing.TableFiles` of :func:`add_table_arguments`'s
    arguments; ``sections``: section heading -> the argument that names its CSV."""
    from fashionblip2.results.writing import TableFiles

    return TableFiles(
        args.md,
        args.csv,
        getattr(args, "tex", None),
        {heading: getattr(args, name) for heading, name in (sections or {}).items()},
    )


def add_provenance_arguments(parser: argparse.ArgumentParser) -> None:
    """--data and --run-name: where an output comes from, recorded in it (the rules pass the config's)."""
    parser.add_argument("--data", required=True, choices=["synthetic", "real"], help="synthetic or real data")
    parser.add_argument("--run-name", required=True, help="the config's run_name")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """What every training script takes: the run's settings, where its checkpoint goes, the threads
    it may use, provenance, and the output folder."""
    parser.add_argument(
        "--recipe", required=True, help="JSON: what changes the model: steps, batch_size, lr, ..., seed, precision"
    )
    parser.add_argument(
        "--job-options",
        required=True,
        help="JSON: how it runs, not what it learns: device, gradient_checkpointing, cache_image_features",
    )
    parser.add_argument("--checkpoints", required=True, help="checkpoint folder (kept until the run is complete)")
    parser.add_argument("--threads", type=int, required=True, help="CPU threads (the rule's threads)")
    add_provenance_arguments(parser)
    parser.add_argument("--out", required=True, help="the run folder to write (model, tokenizer, metrics)")
