"""Class prompt files (the LVIS vocabulary): one class per line, ``name (also known as a, b)``.

- blank lines and ``#`` comment lines (``#`` first, after leading blanks) are not classes, as in
  id lists; a class's *id* (what ``top10_lbl`` / ``top10_label_ids`` record) is its position
  among the class lines, counted from 0, so adding or removing a comment or a blank line does
  not shift ids. The LVIS file has neither, so its ids are its line numbers (from 0);
- the *label* of a line is the name before ``" (also"``, stripped (``"aerosol can"``);
- the label *with dashes* is what track file names carry: spaces become ``-`` and anything
  outside ``[A-Za-z0-9_-]`` is dropped (``"aerosol-can"``, ``"Band-Aid"``);
- the *vocabulary hash* is the sha256 of the class lines (each stripped, joined by ``\\n``),
  so a run's metadata records which vocabulary produced its labels; comments do not change it.

Fetching the default prompts asset is done elsewhere; this module reads a given path.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

__all__ = [
    "Vocabulary",
    "label_of",
    "is_prompt_line",
    "file_label",
    "label_with_dashes",
    "parse_prompt_lines",
    "read_prompts",
    "vocabulary_hash",
]

_ALSO = re.compile(r"\s*\(also\b.*$", re.IGNORECASE | re.DOTALL)
# Prefixes the original pipeline put in front of class descriptions ("photo of a ...").
_PHOTO_PREFIX = re.compile(r"^(?:a\s+)?photo\s+of\s+(?:a|an)\s+", re.IGNORECASE)
_NOT_FILENAME_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def vocabulary_hash(lines: Sequence[str]) -> str:
    """sha256 (hex) of prompt lines: the class lines (:func:`parse_prompt_lines`: each
    stripped, blank and ``#`` comment lines kept out), joined by ``\\n``.

    CRLF endings, trailing blanks, comments and a missing final newline do not change the hash;
    the order of the lines does (class ids depend on it).
    """
    text = "\n".join(parse_prompt_lines(lines))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def label_of(prompt: str) -> str:
    """The class label of a prompt line: the text before ``" (also"``, stripped.

    Also removes a leading ``"photo of a "`` / ``"a photo of a "`` (how the original pipeline
    stored class descriptions), so labels can be recovered from old metadata.
    """
    text = _ALSO.sub("", str(prompt)).strip()
    return _PHOTO_PREFIX.sub("", text).strip()


def label_with_dashes(label: str) -> str:
    """``label`` made file-name safe: whitespace runs -> ``-``, characters outside
    ``[A-Za-z0-9_-]`` removed, repeated dashes collapsed, no leading/trailing dash.

    A label with nothing left (e.g. only punctuation) becomes ``"object"``.
    """
    text = re.sub(r"\s+", "-", str(label).strip())
    text = _NOT_FILENAME_SAFE.sub("", text)
    text = re.sub(r"-{2,}", "-", text).strip("-")
    return text or "object"


def file_label(prompt: str) -> str:
    """What a track file name carries for a class: the released TrackVerse rule, where each
    space of the text before ``" (also"`` becomes ``-`` and nothing is stripped after the cut,
    so ``"mouse  (also known as computer mouse)"`` gives ``"mouse-"`` (clip
    ``<yid>-mouse--<tid>.mp4``, as 186 lines of the released verified list show). Text that
    rule would leave unsafe for a file name (characters outside ``[A-Za-z0-9_-]``, or nothing)
    falls back to :func:`label_with_dashes` of :func:`label_of`. A label already cut (``"mouse"``)
    gives itself: the trailing dash comes only from the full prompt line."""
    text = _PHOTO_PREFIX.sub("", str(prompt).strip())
    cut = re.split(r" \(also\b", text, maxsplit=1, flags=re.IGNORECASE)[0]
    dashed = cut.replace(" ", "-")
    if dashed.strip("-") and not _NOT_FILENAME_SAFE.search(dashed):
        return dashed
    return label_with_dashes(label_of(prompt))


def is_prompt_line(line: str) -> bool:
    """Whether a line of a prompts file is a class: not blank, not a ``#`` comment."""
    text = str(line).strip()
    return bool(text) and not text.startswith("#")


def parse_prompt_lines(lines: Iterable[str]) -> list[str]:
    """The class lines, stripped, in order: blank lines and ``#`` comment lines are left out,
    so item ``i`` is class id ``i``."""
    return [str(line).strip() for line in lines if is_prompt_line(line)]


@dataclass(frozen=True)
class Vocabulary:
    """A class vocabulary read from a prompts file.

    ``lines[i]`` is class ``i``'s prompt line (what text encoders may be given);
    ``labels[i]`` its label (what records and file names use). ``i`` counts class lines only
    (blank and comment lines of the file are not classes and take no id).
    """

    lines: tuple[str, ...]
    labels: tuple[str, ...]
    source: str | None = None

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str | None = None) -> Vocabulary:
        parsed = parse_prompt_lines(lines)
        if not parsed:
            raise ValueError(f"no class prompts found{f' in {source}' if source else ''} "
                             "(blank and # comment lines are not classes)")
        labels = tuple(label_of(line) for line in parsed)
        for i, (line, label) in enumerate(zip(parsed, labels, strict=True)):
            if not label:
                raise ValueError(f"class {i} has an empty label: {line!r}{f' ({source})' if source else ''}")
        return cls(lines=tuple(parsed), labels=labels, source=source)

    def __len__(self) -> int:
        return len(self.lines)

    @cached_property
    def file_labels(self) -> tuple[str, ...]:
        """:func:`file_label` of each line: what its tracks' file names carry."""
        return tuple(file_label(line) for line in self.lines)

    @property
    def hash(self) -> str:
        """:func:`vocabulary_hash` of the lines."""
        return vocabulary_hash(self.lines)

    @property
    def labels_with_dashes(self) -> list[str]:
        return [label_with_dashes(label) for label in self.labels]

    def index_of(self, label: str) -> int:
        """Class index of a label (exact match, then case-insensitive); ``KeyError`` if none."""
        try:
            return self.labels.index(label)
        except ValueError:
            lowered = [lab.lower() for lab in self.labels]
            if label.lower() in lowered:
                return lowered.index(label.lower())
            raise KeyError(f"label {label!r} is not in the vocabulary") from None


def read_prompts(path: str | os.PathLike) -> Vocabulary:
    """Read a prompts file (UTF-8, one class per line; blank and ``#`` comment lines ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"class prompts file not found: {path}") from None
    return Vocabulary.from_lines(text.splitlines(), source=str(path))
