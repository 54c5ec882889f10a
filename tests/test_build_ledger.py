"""The build's ledger on disk: exact deduplication by sha1 digests across commits, the report's lists in order,
and the report written item by item exactly as ``json.dumps(indent=2)`` writes it."""

import hashlib
import json

import pytest

from hf_music_xl.data import build_ledger
from hf_music_xl.data.build_ledger import Ledger, write_json


def digest(text: str) -> bytes:
    return hashlib.sha1(text.encode()).digest()


def test_the_ledger_knows_every_digest_it_was_given_across_commits(tmp_path, monkeypatch):
    monkeypatch.setattr(build_ledger, "COMMIT_EVERY", 7)  # many commits in a small test
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for number in range(100):
        assert ledger.first_source((digest(f"file {number}"), digest(f"tokens {number}")), f"piece {number}") is None
    # the same file, or other bytes with the same tokens: the first piece's source, whichever digest matched
    assert ledger.first_source((digest("file 3"), digest("new tokens")), "again") == "piece 3"
    assert ledger.first_source((digest("new file"), digest("tokens 97")), "again") == "piece 97"
    # a digest that differs in its last byte is another piece (exact, not a prefix)
    near = digest("file 5")[:-1] + bytes([digest("file 5")[-1] ^ 1])
    assert ledger.first_source((near, digest("other tokens")), "near") is None
    assert ledger.first_source((near,), "near again") == "near"
    ledger.close()
    assert (tmp_path / "ledger.sqlite").stat().st_size > 100 * 2 * 20  # the digests are on disk


def test_skips_and_duplicates_come_back_in_order(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_skips([{"source": "b", "reason": "bad"}, {"source": "a", "reason": "worse"}])
    ledger.add_duplicate("z", "y")
    ledger.add_skips([{"source": "c", "reason": "empty"}])
    ledger.add_duplicate("x", "w")
    assert [skip["source"] for skip in ledger.skips()] == ["b", "a", "c"]
    assert list(ledger.skips(2)) == [{"source": "b", "reason": "bad"}, {"source": "a", "reason": "worse"}]
    assert list(ledger.duplicate_rows()) == [{"source": "z", "same_as": "y"}, {"source": "x", "same_as": "w"}]
    assert (ledger.skipped, ledger.duplicates) == (3, 2)


@pytest.mark.parametrize("items", [0, 1, 3])
def test_the_report_streamed_is_the_report_dumped(tmp_path, items):
    skipped = [{"source": f"row/{n}", "reason": 'MidiReadError: "bad" \u00e9'} for n in range(items)]
    duplicates = [{"source": "copy", "same_as": "first"}][:items]
    report = {"source": "x", "skipped": skipped, "splits": {"train": {"pieces": 3}}, "duplicates": duplicates}
    report["meters"], report["empty"] = {"first_meter": {"4/4": 2}}, {}
    shell = {**report, "skipped": None, "duplicates": None}
    write_json(tmp_path / "report.json", shell, {"skipped": iter(skipped), "duplicates": iter(duplicates)})
    assert (tmp_path / "report.json").read_text() == json.dumps(report, indent=2) + "\n"
    write_json(tmp_path / "empty.json", {}, {})
    assert (tmp_path / "empty.json").read_text() == json.dumps({}, indent=2) + "\n"
