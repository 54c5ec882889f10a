"""What a corpus build remembers of the pieces it has read, kept on disk so that its memory does not grow with them.

A build of a million pieces must know, for each new piece, whether an earlier one had the same file content or the
same tokens (deduplication), and it lists every skipped row and every duplicate in ``report.json``. Held in Python
that is a few hundred bytes a piece (two hex digests, a label, dict slots: about 0.5 GB at a million pieces). The
``Ledger`` keeps it in an SQLite file in the build's scratch folder instead: each piece's digests are 20-byte sha1
keys of a B-tree (exact, as the hex digests were), and the skips and duplicates are rows read back, in order, only
when the report is written. SQLite's page cache is bounded (``CACHE_KIB``), so the build's memory stays flat however
many pieces it reads; what it holds lives in the page cache of the file system, not in the process.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

CACHE_KIB = 2048  # SQLite's page cache for the ledger: all the memory it takes, however many pieces
COMMIT_EVERY = 2000  # pieces between commits: dirty pages spill to the file, none pile up in memory


@contextlib.contextmanager
def on_disk():
    """SQLite's own errors of the disk (full, read-only, I/O) as the OSError every other write raises."""
    try:
        yield
    except sqlite3.OperationalError as error:
        raise OSError(str(error)) from error


class Ledger:
    """The digests seen so far (with the source of the piece that brought them), the skips and the duplicates of
    one build, in the SQLite file ``path`` (a scratch file: nothing needs to survive a crash)."""

    def __init__(self, path: Path):
        with on_disk():
            self.db = sqlite3.connect(str(path))
            self.db.executescript(
                f"""
                PRAGMA journal_mode = OFF;
                PRAGMA synchronous = OFF;
                PRAGMA cache_size = -{CACHE_KIB};
                CREATE TABLE seen (digest BLOB PRIMARY KEY, source TEXT) WITHOUT ROWID;
                CREATE TABLE skipped (source TEXT, reason TEXT);
                CREATE TABLE duplicates (source TEXT, same_as TEXT);
                """
            )
        self.skipped = self.duplicates = self.uncommitted = 0

    def first_source(self, digests: tuple[bytes, ...], source: str) -> str | None:
        """The source of the first piece that had any of ``digests``, else None (and they are remembered as
        ``source``'s)."""
        with on_disk():
            return self._first_source(digests, source)

    def _first_source(self, digests: tuple[bytes, ...], source: str) -> str | None:
        for digest in digests:
            found = self.db.execute("SELECT source FROM seen WHERE digest = ?", (digest,)).fetchone()
            if found is not None:
                return found[0]
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(digest, source) for digest in digests])
        self.uncommitted += 1
        if self.uncommitted >= COMMIT_EVERY:
            self.db.commit()
            self.uncommitted = 0
        return None

    def add_skips(self, skips: list[dict]) -> None:
        with on_disk():
            rows = [(skip["source"], skip["reason"]) for skip in skips]
            self.db.executemany("INSERT INTO skipped VALUES (?, ?)", rows)
        self.skipped += len(skips)

    def add_duplicate(self, source: str, same_as: str) -> None:
        with on_disk():
            self.db.execute("INSERT INTO duplicates VALUES (?, ?)", (source, same_as))
        self.duplicates += 1

    def skips(self, limit: int = -1) -> Iterator[dict]:
        """The skips in the order they came ({source, reason}); ``limit`` -1: all."""
        rows = self.db.execute("SELECT source, reason FROM skipped ORDER BY rowid LIMIT ?", (limit,))
        return ({"source": source, "reason": reason} for source, reason in rows)

    def duplicate_rows(self) -> Iterator[dict]:
        """The duplicates in the order they came ({source, same_as})."""
        rows = self.db.execute("SELECT source, same_as FROM duplicates ORDER BY rowid")
        return ({"source": source, "same_as": same_as} for source, same_as in rows)

    def close(self) -> None:
        self.db.close()


def write_json(path: Path, report: dict, streamed: dict[str, Iterator[dict]]) -> None:
    """Write ``report`` as ``json.dumps(report, indent=2)`` would, with the lists of ``streamed`` (key -> its items)
    at their keys' places in ``report``, written item by item rather than built in memory."""
    with open(path, "w") as file:
        file.write("{")
        for place, (key, value) in enumerate(report.items()):
            file.write(("," if place else "") + f"\n  {json.dumps(key)}: ")
            if key not in streamed:
                file.write(json.dumps(value, indent=2).replace("\n", "\n  "))
                continue
            count = 0
            for count, item in enumerate(streamed[key], 1):
                file.write(("," if count > 1 else "[") + "\n    " + json.dumps(item, indent=2).replace("\n", "\n    "))
            file.write("\n  ]" if count else "[]")
        file.write("\n}\n" if report else "}\n")
