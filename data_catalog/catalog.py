"""Data catalog: named data sources in YAML files (safe-loaded).

A catalog file::

    version: 1
    entries:
      my-era5:
        location: era5/64x32.zarr        # relative to this file's folder, absolute, URL or builtin:
        description: ERA5 at 5.625 deg
        variables: [z500, t850]
        time: {start: "1979-01-01T00", end: "2020-12-31T18"}
        time_step: 6h
        grid: 64x32 equiangular without poles
        remote: false                      # default: true for URLs (gs://, s3://, https://)
        storage_options: {token: anon}     # passed to fsspec for remote stores

The shipped default catalog (``data_catalog/catalog.yaml``) is read first, then the files named by
``$WXENS_CATALOG`` (separated by ``os.pathsep``), then an explicit file; a later entry replaces an
earlier one of the same name. A relative location must stay inside its catalog file's folder
(``../`` escapes are refused); use an absolute path for data elsewhere.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from data_catalog.errors import UserError

__all__ = ["Catalog", "CatalogEntry", "default_catalog_path", "load_catalog", "parse_catalog"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KEYS = {"location", "description", "variables", "time", "time_step", "grid", "remote", "storage_options"}
_TIME_KEYS = {"start", "end"}


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return str(value)


def _is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


@dataclass(frozen=True)
class CatalogEntry:
    """One named data source."""

    name: str
    location: str
    description: str = ""
    variables: tuple[str, ...] = ()
    time_start: str | None = None
    time_end: str | None = None
    time_step: str | None = None
    grid: str | None = None
    remote: bool = False
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    root: str | None = None  # folder of the catalog file that defined the entry

    def resolved_location(self) -> str:
        """Location as an absolute path, URL or ``builtin:`` name.

        A relative path is taken from the catalog file's folder and must not leave it.
        """
        loc = self.location
        if loc.startswith("builtin:") or _is_url(loc):
            return loc
        if loc.startswith("file://"):
            loc = loc[len("file://") :]
        p = Path(os.path.expanduser(loc))
        if p.is_absolute():
            return os.path.normpath(p)
        root = os.path.abspath(self.root or os.getcwd())
        target = os.path.normpath(os.path.join(root, p))
        if os.path.commonpath([root, target]) != root:
            raise UserError(
                f"catalog entry '{self.name}': location '{self.location}' escapes the catalog folder "
                f"{root}; use an absolute path"
            )
        return target

    def as_dict(self) -> dict[str, Any]:
        """Plain description (for ``wxens catalog show --json``)."""
        return {
            "name": self.name,
            "location": self.location,
            "description": self.description,
            "variables": list(self.variables),
            "time": {"start": self.time_start, "end": self.time_end},
            "time_step": self.time_step,
            "grid": self.grid,
            "remote": self.remote,
        }


class Catalog(Mapping[str, CatalogEntry]):
    """Read-only mapping of entry name -> :class:`CatalogEntry`, with the files it came from."""

    def __init__(self, entries: Mapping[str, CatalogEntry], files: list[str]) -> None:
        self._entries = dict(entries)
        self.files = list(files)

    def __getitem__(self, name: str) -> CatalogEntry:
        try:
            return self._entries[name]
        except KeyError:
            names = ", ".join(sorted(self._entries)) or "none"
            raise UserError(f"no catalog entry '{name}' (entries: {names})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def default_catalog_path() -> Path:
    """The catalog shipped with the package."""
    return Path(str(resources.files("data_catalog").joinpath("catalog.yaml")))


def parse_catalog(text: str, source: str = "<catalog>", root: str | None = None) -> dict[str, CatalogEntry]:
    """Parse catalog YAML text (safe loader) into entries; raises UserError on a malformed file."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"catalog {source}: not valid YAML{where}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"catalog {source}: expected a mapping with 'entries', got {type(doc).__name__}")
    unknown = set(doc) - {"version", "entries"}
    if unknown:
        raise UserError(f"catalog {source}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}")
    if doc.get("version", 1) != 1:
        raise UserError(f"catalog {source}: unsupported version {doc.get('version')!r} (supported: 1)")
    raw = doc.get("entries") or {}
    if not isinstance(raw, dict):
        raise UserError(f"catalog {source}: 'entries' must be a mapping of name -> entry")
    out: dict[str, CatalogEntry] = {}
    for name, body in raw.items():
        if not isinstance(name, str):  # YAML reads unquoted yes/no/null/1 as other types
            raise UserError(f"catalog {source}: entry name {name!r} is not a string; quote it")
        out[name] = _parse_entry(name, body, source, root)
    return out


def _parse_entry(name: str, body: Any, source: str, root: str | None) -> CatalogEntry:
    where = f"catalog {source}: entry '{name}'"
    if not _NAME.match(name):
        raise UserError(f"{where}: names use letters, digits, '.', '_' and '-'")
    if not isinstance(body, dict):
        raise UserError(f"{where}: expected a mapping")
    unknown = set(map(str, body)) - _KEYS
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_KEYS))})"
        )
    loc = body.get("location")
    if not isinstance(loc, str) or not loc.strip():
        raise UserError(f"{where}: 'location' (a path, URL or builtin:NAME) is required")
    variables = body.get("variables") or []
    if isinstance(variables, str):
        variables = [variables]
    if not isinstance(variables, list):
        raise UserError(f"{where}: 'variables' must be a list of names")
    time = body.get("time") or {}
    if isinstance(time, list) and len(time) == 2:
        time = {"start": time[0], "end": time[1]}
    if not isinstance(time, dict) or set(map(str, time)) - _TIME_KEYS:
        raise UserError(f"{where}: 'time' must be {{start: ..., end: ...}}")
    remote = body.get("remote", _is_url(loc.strip()))
    if not isinstance(remote, bool):
        raise UserError(f"{where}: 'remote' must be true or false")
    opts = body.get("storage_options") or {}
    if not isinstance(opts, dict):
        raise UserError(f"{where}: 'storage_options' must be a mapping")
    entry = CatalogEntry(
        name=name,
        location=loc.strip(),
        description=" ".join(str(body.get("description") or "").split()),
        variables=tuple(str(v) for v in variables),
        time_start=_str_or_none(time.get("start")),
        time_end=_str_or_none(time.get("end")),
        time_step=_str_or_none(body.get("time_step")),
        grid=_str_or_none(body.get("grid")),
        remote=remote,
        storage_options=dict(opts),
        root=root,
    )
    entry.resolved_location()  # refuse escaping paths when the catalog is read, not when used
    return entry


def _read_file(path: str | os.PathLike[str]) -> dict[str, CatalogEntry]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"catalog file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read catalog {p}: {exc}") from exc
    return parse_catalog(text, source=str(p), root=str(p.resolve().parent))


def load_catalog(path: str | os.PathLike[str] | None = None, *, include_default: bool = True) -> Catalog:
    """Load the default catalog, then ``$WXENS_CATALOG`` files, then ``path`` (later entries win)."""
    files: list[str] = []
    if include_default:
        files.append(str(default_catalog_path()))
    env = os.environ.get("WXENS_CATALOG", "")
    files.extend(f for f in env.split(os.pathsep) if f.strip())
    if path is not None:
        files.append(os.fspath(path))
    entries: dict[str, CatalogEntry] = {}
    for f in files:
        got = _read_file(f)
        for name in got:
            if name in entries:
                logger.debug("catalog %s replaces entry %s", f, name)
        entries.update(got)
    return Catalog(entries, files)
