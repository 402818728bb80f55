"""Where the test data lives: MXNet-made files in ../shared (beside the project root, in CI too)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MXNET_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "mxnet"
