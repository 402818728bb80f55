"""Where the test data lives: MXNet-made files copied into tests/data (tests/data/README.md says what made them)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MXNET_FIXTURES = REPO_ROOT / "tests" / "data"
PASSTHROUGH_RECORDS = 64  # tests/data keeps the first 64 records of MXNet's 800-record passthrough.rec


def fuzz_examples(ci: int) -> int:
    """How many examples a fuzz test tries: `ci` (a few seconds' worth), or FLOW_FUZZ_EXAMPLES for a longer run."""
    return int(os.environ.get("FLOW_FUZZ_EXAMPLES", ci))
