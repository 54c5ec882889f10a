"""Corpus folders written aside and renamed into place, the leftovers of killed builds, and disks that refuse.

A build writes the cache entry (and the ``--output`` copy) into a scratch folder beside its target, named
``.<target>.<kind>-<pid>@<host>``, and renames it into place only when it is complete, so a target is always a
whole corpus (the old one or the new) or absent, never half written. A build killed by SIGKILL leaves its scratch
folders behind; the next build in the same folder removes those whose process is gone (on the same host; a pid
that is running again keeps them, the safe side). A folder that cannot be written (read-only, full, not a
folder) is one ``CorpusWriteError`` naming it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from pathlib import Path

HOST = re.sub(r"[^A-Za-z0-9.]+", "-", socket.gethostname()) or "host"
# Scratch names, and those of builds before them (no host): .bach-chorales-0123.rows-4567
SCRATCH = re.compile(r"\..+\.(?:partial|rows|copy|old)-(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9.-]+))?")


class CorpusWriteError(OSError):
    """A corpus could not be written where asked; the message names the folder and why, in one line."""


def scratch(target: Path, kind: str) -> Path:
    """The scratch folder of this process for ``target``: beside it, on the same file system, so it renames."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}@{HOST}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove the scratch folders in ``folder`` of builds on this host whose process is gone; the ones removed.
    Never raises: a folder that cannot be listed or changed is left as it is."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = SCRATCH.fullmatch(path.name)
        if match and (match["host"] or HOST) == HOST and not process_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target`` by renames: an old target is renamed aside first and removed
    after, so ``target`` holds the old or the new folder at every moment (none only between the two renames). If
    another build of the same corpus put its own there meanwhile, that one stays and ``new`` is removed."""
    aside = scratch(target, "old")
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        aside = None
    try:
        os.rename(new, target)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(new, ignore_errors=True)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def why(error: OSError) -> str:
    """The reason of an OSError in words, without the paths it repeats ('No space left on device')."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list):  # copytree: a list
        first = error.args[0][0][2] if error.args[0] else str(error)
        return re.sub(r"^\[Errno \d+\] ([^:]+).*$", r"\1", str(first))
    return error.strerror or str(error)


class Writing:
    """A ``with`` block (reusable) in which an OSError becomes one CorpusWriteError line: ``failure`` (what could
    not be written where), why, and ``hint``."""

    def __init__(self, failure: str, hint: str = ""):
        self.failure, self.hint = failure, hint

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, OSError) and not isinstance(error, CorpusWriteError):
            raise CorpusWriteError(f"{self.failure}: {why(error)}{self.hint}") from error
        return False
