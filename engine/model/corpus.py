"""Offline text corpora: prose sentences from the docstrings of Python sources.

``stdlib_sentences``, those of the standard library, is the default calibration and held-out
text; ``package_sentences``, those of the installed packages (site-packages), is extra training
text for `spdy finetune --add-docstrings`.  Source files are parsed with ``ast`` (nothing is
imported or executed); the sentences are kept in the machine's cache folder, keyed by the files
they come from.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import sysconfig
from pathlib import Path

from engine.core import atomic
from engine.core.environment import cache_dir

_SKIPPED_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
MIN_SENTENCE_CHARS = 40
_CODE_CHARACTERS = set("=[]{}<>#|`*\\")


def normalise(text: str) -> str:
    return " ".join(text.split())


def _is_prose(sentence: str) -> bool:
    """Long enough, mostly letters, no code characters: drops examples, tables and signatures."""
    letters = sum(char.isalpha() or char == " " for char in sentence)
    return len(sentence) >= MIN_SENTENCE_CHARS and letters >= 0.85 * len(sentence) and not _CODE_CHARACTERS & set(sentence)


def docstring_sentences(root: Path) -> tuple[str, ...]:
    """Unique prose sentences from the docstrings of the Python sources under ``root``, in a fixed order.

    Source files are parsed with ``ast`` (nothing is imported or executed) in sorted path order;
    module, class and function docstrings are split into paragraphs, then sentences, whitespace
    is normalised, and sentences that are short or not prose are dropped; duplicates keep their
    first occurrence.  Generated modules (encodings, pydoc_data) and test suites are skipped.
    """
    unique: dict[str, None] = {}
    for path in _source_files(root):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. lib2to3 grammar fixtures written for Python 2
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for paragraph in (ast.get_docstring(node) or "").split("\n\n"):
                    for sentence in _SENTENCE_END.split(normalise(paragraph)):
                        if _is_prose(sentence):
                            unique.setdefault(sentence)
    return tuple(unique)


def _source_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.py") if not _SKIPPED_PARTS & set(path.relative_to(root).parts[:-1]))


CORPUS_VERSION = 1  # bump when docstring_sentences changes what it extracts: older cached corpora are then unused


def _corpus_key(root: Path) -> str:
    """What the sentences under ``root`` depend on: the extraction and every source file's path, size and mtime."""
    hasher = hashlib.sha256(f"{CORPUS_VERSION} {root}".encode())
    for path in _source_files(root):
        stat = path.stat()
        hasher.update(f"{path.relative_to(root)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return hasher.hexdigest()[:16]


def cached_sentences(root: Path) -> tuple[str, ...]:
    """``docstring_sentences(root)``, kept in the cache folder (``engine.core.environment.cache_dir``)
    under a key of the files they come from and read back (milliseconds) while those are unchanged;
    a missing or unreadable cache entry is parsed again and rewritten."""
    path = cache_dir() / f"docstrings-{_corpus_key(root)}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cached, list) and all(isinstance(sentence, str) for sentence in cached):
            return tuple(cached)
    except (OSError, ValueError):
        pass
    sentences = docstring_sentences(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(list(sentences)))
    except OSError:  # a read-only cache folder: the corpus is simply parsed again next time
        pass
    return sentences


@functools.lru_cache(maxsize=1)
def stdlib_sentences() -> tuple[str, ...]:
    """The default offline corpus: docstring sentences of this Python's standard library (~12k for 3.11).

    Parsing the ~700 stdlib sources takes some 8 s, which every process that loads the data (each
    search or database worker) would pay, so they come through ``cached_sentences``."""
    return cached_sentences(Path(sysconfig.get_paths()["stdlib"]))


@functools.lru_cache(maxsize=1)
def package_sentences() -> tuple[str, ...]:
    """Docstring sentences of the installed packages (this Python's purelib and platlib folders, in
    that order, duplicates dropped): some 140k with spdy-tui's dependencies.  The first call parses
    their ~15k sources, about 2 minutes on one core; later calls read the cache."""
    paths = sysconfig.get_paths()
    roots = dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib"))
    return tuple(dict.fromkeys(sentence for root in roots if root.is_dir() for sentence in cached_sentences(root)))
