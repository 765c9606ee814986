"""The README's set-up commands are what CI runs, and they name files that exist."""

import re

from tests.conftest import REPO


def _commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (REPO / "README.md").read_text())[:2]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert _commands()[1] in ci


def test_the_main_command_uses_shipped_files():
    main = _commands()[0]
    for path in re.findall(r"(sample_models/\S+\.onnx|calibration/\S+)", main):
        if not path.endswith(".int8.onnx"):
            assert (REPO / path).exists(), path
