"""Running the node as a process: logging set up without identifiers, config mistakes one line each,
SIGTERM/SIGINT finish the current study and stop (``mammolens pacs CONFIG`` calls ``run_node``)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from mammolens.utils.errors import MammolensError


def run_node(config_path: Path, *, until_idle: bool = False, log_file: Path | None = None, verbose: bool = False) -> int:
    """Load and check the config, then run until SIGTERM/SIGINT (or idle); 0, or 2 after a user error."""
    from mammolens.pacs.config import load_config
    from mammolens.pacs.node import Node

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("mammolens.pacs")
    logger.handlers[:] = handlers
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    try:
        config = load_config(config_path)
        node = Node(config)
    except MammolensError as exc:
        for line in getattr(exc, "lines", None) or [str(exc)]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    stop = {"now": False}

    def _stop(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.run(until_idle=until_idle, should_stop=lambda: stop["now"])
    return 0
