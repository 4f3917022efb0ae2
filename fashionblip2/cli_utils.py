"""Shared set-up of the workflow scripts: logging to stderr (the rule's log file) and error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from fashionblip2.report import BadInputError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main; a bad input ends it with its message and exit status 2, not a traceback."""
    try:
        main()
    except (BadInputError, FileExistsError) as e:
        logging.getLogger("fashionblip2").error("%s", e)
        sys.exit(2)
