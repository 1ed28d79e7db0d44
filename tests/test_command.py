"""The command contract (utils/core/command.py): one place maps errors and interrupts to exit codes
and one-line messages, and every script goes through it."""

from __future__ import annotations

import ast
import errno
import signal
from pathlib import Path

import pytest

from tests.helpers import REPO
from utils.core.command import Outcome, outcome_of_error
from utils.core.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_SYSTEMIC,
    EXIT_USAGE,
    Interrupted,
    InvalidItemError,
    SystemicError,
    UsageError,
)

ROOT_SCRIPTS = sorted(REPO.glob("*.py"))
# the contract itself, and gdpr_blur_faces.py's import guard (the shell wrapper may find an interpreter
# without the requirements, before anything of the project can be imported)
MAPPERS = {REPO / "utils" / "core" / "command.py", REPO / "gdpr_blur_faces.py"}
CLASSIFIED = {"UsageError", "InvalidItemError", "SystemicError", "KeyboardInterrupt", "Interrupted", "MemoryError"}


@pytest.mark.parametrize(("error", "code", "line"), [
    (UsageError("--top must be positive"), EXIT_USAGE, "error: --top must be positive"),
    (InvalidItemError("'../x' is not a YouTube id"), EXIT_USAGE, "error: '../x' is not a YouTube id"),
    (SystemicError("cannot fetch OWLv2 weights"), EXIT_SYSTEMIC, "STOPPED: cannot fetch OWLv2 weights"),
    (MemoryError("cannot allocate"), EXIT_SYSTEMIC, "STOPPED: MemoryError: cannot allocate"),
    (OSError(errno.ENOSPC, "No space left on device"), EXIT_SYSTEMIC,
     "STOPPED: OSError: [Errno 28] No space left on device"),
])
def test_each_error_kind_has_one_exit_code_and_one_line(error, code, line):
    assert outcome_of_error(error) == Outcome(code, notes=(line,))


def test_interrupts_end_with_the_shells_codes_and_say_how_to_resume():
    sigint = Interrupted(signal.SIGINT)
    sigint.progress = "[stage rank 0/1] 3 items: 1 done"
    outcome = outcome_of_error(sigint)
    assert outcome is not None and outcome.exit_code == EXIT_SIGINT == 130
    assert outcome.notes == ("interrupted by SIGINT: [stage rank 0/1] 3 items: 1 done; finished outputs are kept and "
                             "nothing half-written is: re-run the same command to resume",)
    assert outcome_of_error(Interrupted(signal.SIGTERM)).exit_code == EXIT_SIGTERM == 143
    assert outcome_of_error(KeyboardInterrupt()).exit_code == EXIT_SIGINT  # Ctrl-C before the handlers


def test_unclassified_errors_keep_their_traceback():
    assert outcome_of_error(ValueError("a bug")) is None
    assert outcome_of_error(OSError(errno.ENOENT, "gone")) is None


def _handlers_that_print(path: Path) -> list[str]:
    """``except`` blocks for classified errors (by type, or by asking ``is_systemic``) that print or exit
    on their own."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        names = {t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in types}
        asks_systemic = any(isinstance(n, ast.Name) and n.id == "is_systemic"
                            for n in ast.walk(ast.Module(body=node.body, type_ignores=[])))
        if not (names & CLASSIFIED or asks_systemic):
            continue
        for inner in ast.walk(ast.Module(body=node.body, type_ignores=[])):
            if isinstance(inner, ast.Call):
                func = inner.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name in ("print", "exit", "_exit"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
                    break
    return found


def _own_error_lines(path: Path) -> list[str]:
    """String literals that start an error line of the contract's kind ("error: ", "STOPPED: ")."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        parts = [node] if isinstance(node, ast.Constant) else (node.values[:1] if isinstance(node, ast.JoinedStr)
                                                               else [])
        for part in parts:
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and \
                    part.value.startswith(("error: ", "STOPPED: ")):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_one_place_maps_errors_to_exit_codes():
    """No root script, stage or command catches the classified errors to print its own line: they
    reach utils/core/command.py, which says them once, the same way for every script."""
    files = [*ROOT_SCRIPTS, *sorted((REPO / "utils").rglob("*.py"))]
    offenders = [hit for path in files if path not in MAPPERS
                 for hit in _handlers_that_print(path) + _own_error_lines(path)]
    assert offenders == []


def test_root_scripts_are_thin():
    """Each script is flags in, one call into utils/ (its docstring is its --help)."""
    long = {}
    for path in ROOT_SCRIPTS:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        code = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        statements = sum(1 for n in code for _ in ast.walk(n) if isinstance(_, ast.stmt))
        if statements > 25:
            long[path.name] = statements
    assert long == {}
