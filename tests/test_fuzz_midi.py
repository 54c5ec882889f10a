"""Fuzzing in the suite (issue 25): 400 seeded mutations of real MIDI files (chorales written to MIDI at test time,
and hand-made files), each of which must encode (within the vocabulary, grammatical, a few tokens a byte at most)
or raise one ValueError naming the file. ``scripts/fuzz_midi.py`` runs thousands, each in a child process under
time and memory limits; its outcome classes are tested here too, on a real crash, hang and memory blow-up."""

import ctypes
import faulthandler
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hf_music_xl.models.music_xl import encoding

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def fuzz():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import fuzz_midi

        yield fuzz_midi
    finally:
        sys.path.remove(str(SCRIPTS))


def test_every_mutant_encodes_or_raises_one_clear_error(fuzz, chorale_midi_files, tmp_path):
    seeds = [path.read_bytes() for path in chorale_midi_files[:6]] + fuzz.handmade_seeds()
    counts, bad = Counter(), []
    for index, (description, data) in enumerate(fuzz.mutants(seeds, 400, seed=25)):
        path = tmp_path / f"mutant-{index}.mid"
        path.write_bytes(data)
        outcome, detail = fuzz.classify(path)
        counts[outcome] += 1
        if outcome not in ("encoded", "clear error"):
            bad.append(f"{description}: {outcome}: {detail}")
    assert bad == []
    assert counts["encoded"] >= 50 and counts["clear error"] >= 50, counts  # the mutants reach both outcomes


def test_the_mutants_are_seeded_and_reach_every_mutation(fuzz):
    seeds = fuzz.handmade_seeds()
    first, again = list(fuzz.mutants(seeds, 200, seed=3)), list(fuzz.mutants(seeds, 200, seed=3))
    assert first == again and first != list(fuzz.mutants(seeds, 200, seed=4))
    applied = {name for description, _ in first for name in description.split(": ")[1].split(" + ")}
    assert applied == {mutation.__name__ for mutation in fuzz.MUTATIONS} | {"fix_lengths"}


def test_a_huge_delta_is_a_short_rest_not_millions_of_tokens(fuzz, tmp_path):
    # the seed at 2 ticks a quarter with an event 2**28 - 1 ticks late: 6.7 million tokens before the rest limit
    tiny = fuzz.handmade_seeds()[3]
    late = fuzz.huge_delta(tiny, np.random.default_rng(0), [tiny])
    path = tmp_path / "late.mid"
    path.write_bytes(late)
    assert fuzz.classify(path)[0] == "encoded" and len(encoding.encode_midi(path)) < 4 * len(late)


def segfault(*args, **kwargs):
    faulthandler.disable()  # pytest's handler, inherited by the fork, would print every thread's stack first
    ctypes.string_at(0)


def spin(*args, **kwargs):
    while True:
        pass


def allocate(*args, **kwargs):
    return bytearray(8 * 2**30)


def type_error(*args, **kwargs):
    raise TypeError("an unexpected exception")


@pytest.mark.parametrize(
    "encoder, outcome",
    [(segfault, "signal"), (spin, "hang"), (allocate, "memory"), (type_error, "other"), (None, "encoded")],
)
def test_the_long_fuzzer_tells_each_outcome(fuzz, tmp_path, monkeypatch, encoder, outcome):
    path = tmp_path / "seed.mid"
    path.write_bytes(fuzz.handmade_seeds()[0])
    if encoder is not None:
        monkeypatch.setattr(encoding, "encode_midi", encoder)  # the child is forked from here: it runs this one
    memory = fuzz.available_memory_limit(2**30)
    assert fuzz.classify_in_child(path, cpu_seconds=1, memory_bytes=memory)[0] == outcome
