"""A profile written back as TOML: every key (``to_toml``), or only what differs from the defaults.

``to_toml`` writes every key (the resolved profile `spdy check` prints and a run directory keeps);
``changed_toml`` writes what a person would (the profile editor): the keys whose value differs from the schema's
default, section by section in declaration order, under an optional header of comment lines.
For every valid profile P and folder F,

    from_dict(tomllib.loads(changed_toml(P))) == P

(a key left out takes its default, which is the value it had).  Strings are written as TOML
basic strings with every character TOML needs escaped (quotes, backslash, control characters),
so any string value reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from engine.core.profile import Profile, _resolve_paths, from_dict, profile_sections  # the loader's own path resolution, not a copy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def key_defaults() -> dict[str, dict[str, object]]:
    """Every key's default: section -> key -> value (the schema, as ``Profile().to_dict()``)."""
    return Profile().to_dict()


def changed_values(values: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Of ``values`` (section -> key -> value), the keys whose value differs from the default."""
    defaults = key_defaults()
    changed = {}
    for section, body in values.items():
        keys = {key: value for key, value in body.items() if defaults.get(section, {}).get(key, dataclasses.MISSING) != value}
        if keys:
            changed[section] = keys
    return changed


def changed_toml(profile: Profile | dict, header: str = "") -> str:
    """TOML of the keys of ``profile`` (a Profile, or section -> key -> value) that differ from the defaults.

    ``header``: comment lines kept above the first section (each must start with '#')."""
    values = profile.to_dict() if isinstance(profile, Profile) else profile
    lines = [line for line in header.splitlines() if line.strip()]
    if any(not line.lstrip().startswith("#") for line in lines):
        raise ValueError("a profile header is comment lines only (each starting with '#')")
    for section, body in changed_values(values).items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in body.items())
    return "\n".join(lines) + "\n" if lines else ""


def toml_value(value) -> str:
    """One TOML value: a boolean, integer, finite float, string or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a profile number must be finite, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes and backslashes escaped, control characters as escapes."""
    out = []
    for char in text:
        if char in ESCAPES:
            out.append(ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def profile_of_values(values: dict[str, dict[str, object]], path: str | Path) -> Profile:
    """The Profile ``load_profile(path)`` returns once ``changed_toml(values)`` is saved at ``path``.

    The same checks as the loader (``from_dict``, on the TOML that would be written, so the
    writing is checked too), and relative paths resolved against the file's folder; a
    ProfileError naming ``path`` and the key otherwise."""
    path = Path(path)
    return _resolve_paths(from_dict(tomllib.loads(changed_toml(values)), str(path)), path.parent)


def to_toml(profile: Profile) -> str:
    """The resolved profile as TOML (what `spdy check` prints and the run directory keeps)."""
    lines = []
    for section, body in profile.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in body.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def describe() -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, doc) for every profile key, in declaration order."""
    rows = []
    for section in profile_sections():
        for f in dataclasses.fields(section.default_factory):  # type: ignore[arg-type]
            meta = f.metadata
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if meta.get("choices"):
                allowed = " / ".join(meta["choices"])
            elif meta.get("min") is not None or meta.get("max") is not None:
                low = "" if meta.get("min") is None else f"{'>' if meta.get('min_exclusive') else '>='} {meta['min']}"
                high = "" if meta.get("max") is None else f"<= {meta['max']}"
                allowed = ", ".join(part for part in (low, high) if part)
            else:
                allowed = ""
            rows.append((f"{section.name}.{f.name}", toml_value(default), allowed, meta.get("doc", "")))
    return rows
