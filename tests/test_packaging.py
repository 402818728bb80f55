"""What `pip install` puts where: the sdist and wheel that `python -m build` makes, and a repository
whose tests, benchmarks and examples need nothing beside it."""

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.fixtures import REPO_ROOT


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The sdist, and the wheel `python -m build` makes from that sdist (so the sdist is proven to build)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)],
                   check=True, capture_output=True, timeout=600)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_wheel_installs_actors_inside_flow_and_carries_the_c_extension(built):
    _, wheel = built
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {name.split("/")[0] for name in names} - {"flow"}
    assert len(top_levels) == 1 and top_levels.pop().endswith(".dist-info")
    assert "flow/actors/loader.py" in names and "flow/actors/__init__.py" in names
    assert not any(name.startswith("actors/") for name in names)
    for extension in ("_pixels", "_resample", "_jpeg_window"):
        assert any(re.fullmatch(rf"flow/{extension}\..*\.(so|pyd)", name) for name in names), extension
    assert wheel.name.startswith("flow_fit-")  # "flow" on PyPI is another project


def test_sdist_carries_the_sources_the_wheel_is_built_from(built):
    sdist, _ = built
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"pyproject.toml", "flow/_pixels.c", "flow/_jpeg_window.c", "flow/libjpeg/jpeglib.h", "flow/libjpeg/LICENSE.md",
            "actors/loader.py", "flow/run.py"} <= names


def test_tests_benchmarks_and_examples_read_nothing_outside_the_repository():
    outside = re.compile(r"\.\./shared|/ *[\"']shared[\"']|parents\[\d\]\.parent\b")
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}"
                 for folder in ("tests", "bench", "examples") for path in (REPO_ROOT / folder).rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert offenders == []
