"""`--set section.key=value`: a profile with keys overridden on the command line.

The value is read as a TOML value (``2``, ``true``, ``"x"``, ``["a", "b"]``); anything that is
not one is taken as a bare string (``--set run.name=demo``).  The overridden profile goes
through the same checks as the file (``engine.core.profile.from_dict``), so a bad value is
refused with the key and what was expected.  Paths in the file are relative to its folder, as
always; paths given with ``--set`` are relative to the working directory, like any other path
on the command line.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PATH_KEYS = ("model.path", "data.path", "hardware.timings")  # resolved against a folder


def parse_value(raw: str):
    """A --set value: a TOML value if it reads as one, else the text itself."""
    text = raw.strip()
    if not text:
        return ""
    try:
        parsed = tomllib.loads(f"value = {text}\n")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["value"] if list(parsed) == ["value"] else text


def parse_override(spec: str) -> tuple[str, str, object]:
    """``section.key=value`` -> (section, key, value), or a ProfileError naming the --set."""
    from engine.core.profile import RENAMED_KEYS, Profile, ProfileError

    key, equals, raw = spec.partition("=")
    key = key.strip()
    section, dot, name = key.partition(".")
    if not equals or not dot or not section or not name or "." in name:
        raise ProfileError(f"--set {spec!r}: expected section.key=value, e.g. --set search.target=2")
    known = Profile().to_dict()
    if section not in known:
        raise ProfileError(f"--set {spec!r}: unknown section [{section}] (known: {', '.join(known)})")
    name = RENAMED_KEYS.get(key, key).partition(".")[2]
    if name not in known[section]:
        raise ProfileError(f"--set {spec!r}: unknown key '{section}.{name}' (known: {', '.join(known[section])})")
    return section, name, parse_value(raw)


def load(path: Path, overrides: list[str] | tuple[str, ...] = ()):
    """The profile at ``path`` with ``overrides`` applied, checked like the file itself."""
    from engine.core.profile import RENAMED_KEYS, from_dict, load_profile, read_toml

    if not overrides:
        return load_profile(path)
    parsed = [parse_override(spec) for spec in overrides]
    data = read_toml(path)
    given: set[str] = set()
    for section, name, value in parsed:
        body = data.setdefault(section, {})
        if not isinstance(body, dict):
            continue  # from_dict says the section must be a table
        for old, new in RENAMED_KEYS.items():  # the override replaces the key under its former name too
            if new == f"{section}.{name}":
                body.pop(old.partition(".")[2], None)
        body[name] = value
        given.add(f"{section}.{name}")
    source = f"{path} with --set {' --set '.join(overrides)}"
    profile = from_dict(data, source=source)
    keys = [spec.partition("=")[0].strip() for spec in overrides]
    renamed = [f"--set {key}: key '{key}' is now called '{RENAMED_KEYS[key]}'; the old name still works"
               for key in keys if key in RENAMED_KEYS]
    profile = dataclasses.replace(profile, notes=(*profile.notes, *renamed))
    return _resolve_paths(profile, path.parent, given)


def _resolve_paths(profile, base: Path, given: set[str]):
    """Relative paths: from the command line against the working directory, from the file against its folder."""
    sections = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(profile, section), name)
        if value and not Path(value).is_absolute():
            value = str(Path(value).resolve() if key in given else (base / value).resolve())
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(
        profile, **{section: dataclasses.replace(getattr(profile, section), **values) for section, values in sections.items()}
    )


@contextmanager
def profile_file(path: Path, overrides: list[str] | tuple[str, ...], profile) -> Iterator[Path]:
    """A profile file for the engine: ``path`` itself, or the overridden profile written to a temporary file.

    The engine reads a run's profile from a file (``engine.run.directory.open_run``); a message
    that names the temporary file is rewritten to name ``path`` and the overrides.
    """
    if not overrides:
        yield path
        return
    from engine.core.profile_toml import to_toml

    with tempfile.TemporaryDirectory(prefix="spdy-set-") as folder:
        file = Path(folder) / path.name
        file.write_text(to_toml(profile))
        try:
            yield file
        except Exception as exc:
            if exc.args and isinstance(exc.args[0], str) and str(file) in exc.args[0]:
                exc.args = (exc.args[0].replace(str(file), profile.source), *exc.args[1:])
            raise
