"""Never lose work: per-unit manifest entries, per-unit lock files, verification.

* A unit is **done** only when ``manifest/<unit>.json`` exists and the sha256 of every file it lists
  (the unit's zarr chunk files and inline-score partials) matches. Entries are written atomically
  (write ``.tmp`` in the same folder, ``fsync``, ``rename``, ``fsync`` the folder), after all the
  unit's files are written and fsynced: a crash at any moment leaves either no entry (the unit is
  recomputed and its chunks overwritten) or a complete one.
* **Transient files.** An entry may also list ``transient`` files (inline-score partials and member
  spills) with a ``released_by`` path: while that path does not exist the transient files must be
  present and verify like the others; once it exists (the finalised scores that consumed them) they
  may be gone, and are not checked. So deleting them after finalisation neither makes a restart
  recompute the unit nor makes ``verify`` report it.
* ``locks/<unit>.lock`` is created with ``O_CREAT | O_EXCL`` and holds ``{pid, host, time}``. A lock
  whose process is gone (same host, pid not alive) or older than ``stale_after`` seconds (other hosts)
  is stale and taken over; otherwise a second claimant skips the unit.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from data_catalog.hashing import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest"
LOCKS = "locks"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (tmp + fsync + rename + directory fsync)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UnitLock:
    """An exclusive per-unit lock file (see module docstring)."""

    def __init__(self, run_dir: Path, name: str, stale_after: float = 6 * 3600.0) -> None:
        self.path = Path(run_dir) / LOCKS / f"{name}.lock"
        self.stale_after = stale_after
        self.held = False

    def _is_stale(self) -> bool:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:  # killed between create and write: judge by age
            try:
                return time.time() - self.path.stat().st_mtime > 60.0
            except FileNotFoundError:
                return True
        if info.get("host") == socket.gethostname():
            return not _pid_alive(int(info.get("pid", -1)))
        return time.time() - float(info.get("time", 0.0)) > self.stale_after

    def acquire(self) -> bool:
        """Take the lock; False when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._is_stale():
                    log.warning("taking over stale lock %s", self.path.name)
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                return False
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


def entry_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / MANIFEST / f"{name}.json"


def record(
    run_dir: Path,
    name: str,
    files: list[str],
    extra: dict[str, Any] | None = None,
    *,
    transient: list[str] | None = None,
    released_by: str | None = None,
    sums: dict[str, str] | None = None,
) -> None:
    """fsync the unit's files, checksum them and write the manifest entry atomically.

    ``sums`` are files already fsynced and hashed by their writer (``{path: sha256}``), listed with
    ``files``. ``transient`` files are checked only while ``released_by`` (a path relative to the run
    dir) does not exist (see the module docstring)."""
    run_dir = Path(run_dir)

    def sums_of(paths: list[str]) -> dict[str, str]:
        out = {}
        for rel in sorted(set(paths)):
            p = run_dir / rel
            fsync_file(p)
            out[rel] = sha256_file(p)
        return out

    (run_dir / MANIFEST).mkdir(parents=True, exist_ok=True)
    known = dict(sums or {})
    done = sums_of([f for f in files if f not in known]) | known
    entry: dict[str, Any] = {
        "unit": name,
        "files": dict(sorted(done.items())),
        "time": time.time(),
        **(extra or {}),
    }
    if transient:
        if released_by is None:
            raise ValueError("transient files need released_by")
        entry["transient"] = sums_of(transient)
        entry["released_by"] = released_by
    atomic_write(entry_path(run_dir, name), json.dumps(entry, indent=1, sort_keys=True))


def read_entry(run_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(entry_path(run_dir, name).read_text())
    except (OSError, ValueError):
        return None


def check_entry(run_dir: Path, entry: dict[str, Any]) -> list[str]:
    """Files of ``entry`` that are missing or whose checksum differs (transient files only while
    their ``released_by`` path does not exist)."""
    bad = []
    files = dict(entry.get("files", {}))
    rel_by = entry.get("released_by")
    if entry.get("transient") and not (rel_by and (Path(run_dir) / rel_by).exists()):
        files.update(entry["transient"])
    for rel, digest in files.items():
        p = Path(run_dir) / rel
        try:
            ok = p.is_file() and sha256_file(p) == digest
        except FileNotFoundError:
            ok = False
        if not ok:
            bad.append(rel)
    transient = entry.get("transient") or {}
    if rel_by and any(b in transient for b in bad) and (Path(run_dir) / rel_by).exists():
        bad = [b for b in bad if b not in transient]  # released while being checked
    return bad


def is_done(run_dir: Path, name: str, check: bool = True) -> bool:
    """True when the unit's manifest entry exists and (with ``check``) its checksums verify."""
    entry = read_entry(run_dir, name)
    if entry is None:
        return False
    if check:
        bad = check_entry(run_dir, entry)
        if bad:
            log.warning("unit %s: %d file(s) fail their checksum; recomputing", name, len(bad))
            return False
    return True


def done_units(run_dir: Path) -> set[str]:
    d = Path(run_dir) / MANIFEST
    if not d.is_dir():
        return set()
    return {p.stem for p in d.glob("*.json") if not p.name.startswith(".")}


def verify(run_dir: str | Path, delete: bool = False) -> dict[str, Any]:
    """Check every manifest entry's checksums.

    Returns ``{"ok": [...], "corrupted": {unit: [files]}, "missing": [...], "total": U}``; with
    ``delete`` the corrupted units' entries are removed so the next run recomputes them (and the
    ``COMPLETE`` marker is dropped).
    """
    run_dir = Path(run_dir)
    ok, corrupted = [], {}
    for name in sorted(done_units(run_dir)):
        entry = read_entry(run_dir, name)
        bad = ["manifest entry unreadable"] if entry is None else check_entry(run_dir, entry)
        if bad:
            corrupted[name] = bad
            if delete:
                entry_path(run_dir, name).unlink(missing_ok=True)
        else:
            ok.append(name)
    total = None
    missing: list[str] = []
    plan = run_dir / "units.json"
    if plan.is_file():
        names = json.loads(plan.read_text())
        total = len(names)
        missing = sorted(set(names) - set(ok))
    if delete and corrupted:
        (run_dir / "COMPLETE").unlink(missing_ok=True)
    return {"ok": ok, "corrupted": corrupted, "missing": missing, "total": total}
