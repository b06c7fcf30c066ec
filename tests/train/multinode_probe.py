"""A rank that records what it sees: started by the launcher on every node (``python -m
tests.train.multinode_probe --config FILE``), it writes the environment variables the config names
to ``<out_dir>/rank<RANK>.json`` and reports through ``Telemetry`` (Pipes from rank 0 only), as a
training module does."""

from __future__ import annotations

import json
import os
import sys

from lmforge.io import write_json
from lmforge.train.telemetry import Telemetry


def main(argv: list[str]) -> int:
    config = json.loads(open(argv[argv.index("--config") + 1]).read())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    seen = {name: os.environ.get(name) for name in config["names"]}
    write_json(os.path.join(config["out_dir"], f"rank{rank}.json"), seen)
    with Telemetry(rank, prefix="probe") as tel:
        tel.log(f"rank {rank} of {world} on node {os.environ.get('GROUP_RANK', '?')}")
        tel.report({"world_size": world, "reporting_rank": rank})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
