"""The docs say what the code does: a README that fits a page, links that resolve, flags that
exist, exit codes that match the code, and an architecture that names modules that exist.

Everything here reads files and click's help text; nothing runs a model, so it stays fast.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from tests.conftest import REPO

PACKAGE = REPO / "ptq_cli"
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
LINKED = [README, REPO / "CHANGELOG.md", REPO / "bench" / "RESULTS.md", *DOCS]
CITING = [README, *DOCS]  # the files whose `ptq ...` commands and flags must be real
COMMANDS = ("calibrate merge", "quantize", "calibrate", "compare", "inspect")
README_MAX_LINES = 150


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- README --------------------------------------------------------------------------------------
def test_readme_fits_a_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_readme_keeps_a_section_for_running_on_a_cluster():
    text = README.read_text()
    assert re.search(r"^## Running on a cluster$", text, re.M)
    assert "docs/distributed.md" in text


# --- links ---------------------------------------------------------------------------------------
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links inside code are not links
    return _LINK.findall(text)


@pytest.mark.parametrize("doc", LINKED, ids=_rel)
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{_rel(doc)}: " + "; ".join(broken)


# --- flags ---------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _help_flags(command: str) -> frozenset[str]:
    """The flags `ptq COMMAND --help` lists (the root's with command '')."""
    from ptq_cli.cli import main

    result = CliRunner().invoke(main, [*command.split(), "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    options = result.output.split("Options:", 1)[1]
    flags = set()
    for line in options.splitlines():
        if re.match(r"^\s{1,4}-", line):  # an option's own line, not its wrapped description
            spec = re.split(r"\s{2,}", line.strip())[0]
            flags.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", spec))
    return frozenset(flags)


def _all_flags() -> frozenset[str]:
    return frozenset().union(*(_help_flags(c) for c in ("", *COMMANDS)))


def _code_contexts(path: Path) -> list[str]:
    """Inline code spans and the lines of fenced code blocks (backslash continuations joined)."""
    text = path.read_text()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    contexts = []
    for block in blocks:
        contexts += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    contexts += re.findall(r"`([^`]+)`", prose)
    return contexts


_INVOCATION = re.compile(r"(?<![\w-])ptq\s+(" + "|".join(c.replace(" ", r"\s+") for c in COMMANDS) + r")\b")
_FLAG = re.compile(r"(?<![\w./*-])(--?[A-Za-z][\w-]*)")  # not inside a path or a glob (shard-*-of-4)
_OTHER_TOOL = re.compile(r"\b(python3?|pip|pytest|qemu-x86_64|git|apt-get|kubectl|dask-scheduler|dask-worker)\b")


def _cited_commands(contexts: list[str]) -> list[tuple[str, str, str]]:
    """(command, flag, context) for every flag written after `ptq COMMAND` in a code context,
    up to the next command, pipe or `&&`."""
    cited = []
    for context in contexts:
        for segment in re.split(r"&&|\|\||;|\s\|\s", context):
            matches = list(_INVOCATION.finditer(segment))
            for i, match in enumerate(matches):
                end = matches[i + 1].start() if i + 1 < len(matches) else len(segment)
                command = " ".join(match.group(1).split())
                for flag in _FLAG.findall(segment[match.end():end]):
                    cited.append((command, flag, context.strip()))
    return cited


@pytest.mark.parametrize("doc", CITING, ids=_rel)
def test_every_flag_after_a_ptq_command_is_in_its_help(doc: Path):
    missing = [f"`ptq {command} {flag}` in: {context}" for command, flag, context in
               _cited_commands(_code_contexts(doc)) if flag not in _help_flags(command)]
    assert not missing, f"{_rel(doc)} cites flags that `--help` does not list:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", CITING, ids=_rel)
def test_every_flag_in_code_is_a_ptq_flag(doc: Path):
    """A flag written alone (`--per-tensor`) exists in some ptq command; another tool's command
    line (python bench/..., pip, pytest, qemu) is not ptq's to check."""
    known = _all_flags()
    missing = sorted({f"{flag} in: {context.strip()}" for context in _code_contexts(doc)
                      if not _OTHER_TOOL.search(context)
                      for flag in _FLAG.findall(context) if flag.startswith("--") and flag not in known})
    assert not missing, f"{_rel(doc)} cites flags no ptq command has:\n" + "\n".join(missing)


def test_the_flag_check_can_fail():
    cited = _cited_commands(["ptq quantize m.onnx --data d/ --no-such-flag && ptq inspect m.onnx --json"])
    assert ("quantize", "--no-such-flag", "ptq quantize m.onnx --data d/ --no-such-flag && "
            "ptq inspect m.onnx --json") in cited
    assert "--no-such-flag" not in _help_flags("quantize")
    assert "--json" in _help_flags("inspect") and "--per-tensor" in _help_flags("quantize")


def test_every_recipe_field_is_documented():
    from dataclasses import fields

    from ptq_cli.recipe import CalibrationSpec, Recipe, TensorSpec, WeightCodebook, WeightOnly

    text = (REPO / "docs" / "recipe.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    for spec in (Recipe, TensorSpec, CalibrationSpec, WeightOnly, WeightCodebook):
        undocumented = [f.name for f in fields(spec) if f.name not in rows]
        assert not undocumented, f"docs/recipe.md has no row for {spec.__name__}.{undocumented}"


def test_the_recipe_flags_exist():
    """The flag column of docs/recipe.md: each flag exists in `ptq quantize --help`, or in the
    command the cell names."""
    text = (REPO / "docs" / "recipe.md").read_text()
    for row in re.findall(r"^\| `\w+` \|.*$", text, re.M):
        cell = row.split("|")[4]
        command = next((c for c in COMMANDS if f"ptq {c}" in cell), "quantize")
        for flag in _FLAG.findall(" ".join(re.findall(r"`([^`]+)`", cell))):
            assert flag in _help_flags(command), f"docs/recipe.md: {flag} is not an option of ptq {command}: {row}"


# --- exit codes ----------------------------------------------------------------------------------
def _exit_code_rows() -> dict[int, str]:
    text = (REPO / "docs" / "exit-codes.md").read_text()
    return {int(code): rest for code, rest in re.findall(r"^\| (\d+) \|(.*)$", text, re.M)}


def _error_classes() -> dict[str, tuple[Path, int | None, list[str]]]:
    """Every class in ptq_cli: its file, its literal `exit_code` (None when inherited) and bases."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                code = next((stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                             and any(getattr(t, "id", None) == "exit_code" for t in stmt.targets)
                             and isinstance(stmt.value, ast.Constant)), None)
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                found[node.name] = (path, code, bases)
    return found


def _exit_codes_of_errors() -> dict[str, int]:
    classes = _error_classes()

    def code(name: str) -> int | None:
        path, own, bases = classes[name]
        if own is not None:
            return own
        return next((c for c in (code(b) for b in bases if b in classes) if c is not None), None)

    def is_error(name: str) -> bool:
        return name == "PtqError" or any(b in classes and is_error(b) for b in classes[name][2])

    return {name: code(name) for name in classes if is_error(name)}


def test_every_error_class_is_documented_with_its_exit_code():
    rows = _exit_code_rows()
    errors = _exit_codes_of_errors()
    assert {"PtqError", "UsageError", "SlowerThanFloat", "DriftBudgetError"} <= set(errors)
    wrong = [f"{name} exits {code}, documented under {[c for c, row in rows.items() if f'`{name}`' in row]}"
             for name, code in errors.items() if f"`{name}`" not in rows.get(code, "")]
    assert not wrong, "docs/exit-codes.md: " + "; ".join(wrong)


def test_documented_codes_are_the_codes_the_code_exits_with():
    from ptq_cli.comparison.report import CompareReport

    report_codes = {CompareReport.exit_code.fget(SimpleNamespace(passed=passed)) for passed in (True, False)}
    cli = "".join((PACKAGE / name).read_text() for name in ("cli/__init__.py", "cli/reporting.py", "__main__.py"))
    literal = {int(c) for c in re.findall(r"(?:\bfail\([^\n]*,|sys\.exit\()\s*(\d+)\)", cli)}
    assert literal >= {2, 3, 130}, literal
    assert set(_exit_code_rows()) == report_codes | literal | set(_exit_codes_of_errors().values())


def test_the_exit_code_check_can_fail():
    errors = _exit_codes_of_errors()
    assert errors["UsageError"] == 2 and errors["OutputExistsError"] == 2 and errors["SlowerThanFloat"] == 1
    assert "`UsageError`" not in _exit_code_rows()[3]


# --- where the docs point into the code ----------------------------------------------------------
def _resolve(token: str, doc: Path) -> Path | None:
    for base in (REPO, PACKAGE, doc.parent):
        candidates = list(base.glob(token)) if "*" in token else [base / token]
        for candidate in candidates:
            if candidate.exists():
                return candidate
    return None


def _defines(path: Path, dotted: str) -> bool:
    """Whether `dotted` (a name, or Class.member) is defined at the top of the module at `path`."""
    first, _, member = dotted.partition(".")
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
        if first in names:
            if not member:
                return True
            return isinstance(node, ast.ClassDef) and any(
                getattr(item, "name", None) == member for item in node.body)
    return False


def _path_tokens(doc: Path) -> list[str]:
    """Backticked paths of files and folders (`quantization/output.py`, `drift/`), and the paths the
    picture of the stages draws."""
    text = doc.read_text()
    tokens = [t for t in re.findall(r"`([^`\s]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
              if re.fullmatch(r"[\w.*/-]+(\.py|/)", t) and "/" in t and not t.startswith("../")]
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        if "─►" in block:  # the picture of the stages
            tokens += re.findall(r"[\w*]+(?:/[\w*]+)*\.py", block)
    return tokens


@pytest.mark.parametrize("doc", CITING, ids=_rel)
def test_every_cited_module_exists(doc: Path):
    missing = sorted({t for t in _path_tokens(doc) if _resolve(t, doc) is None})
    assert not missing, f"{_rel(doc)} cites paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", CITING, ids=_rel)
def test_every_name_cited_in_a_module_is_defined_there(doc: Path):
    """`name` in `module.py` (docs/exit-codes.md, docs/architecture.md) names something the
    module defines."""
    text = re.sub(r"\s+", " ", doc.read_text())
    wrong = []
    for name, module in re.findall(r"`([\w.]+)` in `([\w/]+\.py)`", text):
        path = _resolve(module, doc)
        if path is None or not _defines(path, name):
            wrong.append(f"{name} in {module}")
    assert not wrong, f"{_rel(doc)}: not defined where it says: {wrong}"


def _stage_rows() -> list[tuple[str, str, str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## The stages", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| ([a-z +]+) \| `([\w/]+\.py)` \| `(\w+)` \|", section, re.M)


def test_the_stages_drawn_name_modules_and_entry_points_that_exist():
    rows = _stage_rows()
    stages = [stage for stage, _, _ in rows]
    for stage in ("prepare", "calibrate", "place", "emit", "latency search", "fallback", "check", "write"):
        assert stage in stages, f"docs/architecture.md draws no stage {stage!r}: {stages}"
    order = [stages.index(s) for s in ("prepare", "calibrate", "place", "emit", "check", "write")]
    assert order == sorted(order), stages
    for stage, module, entry in rows:
        path = PACKAGE / module
        assert path.is_file(), f"stage {stage}: ptq_cli/{module} does not exist"
        assert _defines(path, entry), f"stage {stage}: ptq_cli/{module} defines no {entry}"


def test_the_where_to_change_table_names_the_files_people_look_for():
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text.split("## Where to change what", 1)[1].split("\n## ", 1)[0]
    groupnorm = next(row for row in table.splitlines() if "GroupNorm" in row)
    assert "`quantization/placement/handlers.py`" in groupnorm
    assert _defines(PACKAGE / "quantization/placement/handlers.py", "HANDLERS")
    method = next(row for row in table.splitlines() if "range method" in row)
    assert "`calibration/methods.py`" in method and _defines(PACKAGE / "calibration/methods.py", "compute_range")
    for row in table.splitlines()[2:]:
        for token in re.findall(r"`([\w/]+(?:\.py|/))`", row):
            assert _resolve(token, REPO / "docs" / "architecture.md"), f"{token} in: {row}"
