"""Drive a ptq command as a careless user would and check what it must never do.

`invoke` runs the CLI through click's CliRunner and returns the result together with what the
run changed on disk, so every test asserts the same contract: the documented exit code, one line
on stderr, no traceback, no file left behind, inputs unchanged."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

from ptq_cli.cli import main


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (names relative to it)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Run:
    result: Result
    before: dict[str, str]
    after: dict[str, str]

    @property
    def code(self) -> int:
        return self.result.exit_code

    @property
    def created(self) -> set[str]:
        return set(self.after) - set(self.before)

    @property
    def changed(self) -> set[str]:
        return {name for name in self.before if self.after.get(name) != self.before[name]}

    def refused(self, code: int, *words: str) -> str:
        """Assert a clean refusal: `code`, one line on stderr naming `words`, nothing written."""
        stderr = self.result.stderr
        assert self.code == code, (self.code, stderr, self.result.exception)
        assert self.result.exception is None or isinstance(self.result.exception, SystemExit), \
            self.result.exc_info
        assert "Traceback" not in stderr and "Traceback" not in self.result.stdout, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, stderr
        for word in words:
            assert word in lines[0], (word, lines[0])
        assert not self.created, self.created
        assert not self.changed, self.changed
        return lines[0]


def invoke(folder: Path, *args: str, env: dict | None = None) -> Run:
    before = snapshot(folder)
    result = CliRunner().invoke(main, [str(a) for a in args],
                                                env={"GITHUB_STEP_SUMMARY": None, **(env or {})})
    return Run(result, before, snapshot(folder))
