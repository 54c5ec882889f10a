"""Fuzz the MIDI encoder with mutated real files: every input must encode or raise one clear error naming it.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fuzz_midi.py                   # 5,000 mutants, about 4 minutes
    OMP_NUM_THREADS=1 .venv/bin/python scripts/fuzz_midi.py --mutants 200 --seed 1   # quick

Seeds: the first ``--chorales`` Bach chorales of music21 written to MIDI in memory (never saved), and a few
hand-made files that reach the reader's odd corners (format 2, time signatures, a tiny division). A mutant is
one to three of: bytes flipped, a truncation, random bytes inserted, a stretch of the file copied elsewhere, an
event 2**28 - 1 ticks late (the largest delta MIDI holds), a chunk length corrupted, a header field changed, two
files spliced; then, mostly, the chunk lengths made right again, so that the damage reaches the event parser and
the encoder rather than stopping at the chunk check. Each mutant is written to a file and encoded in its own child
process (fork) under a CPU-time limit (RLIMIT_CPU) and an address-space limit (RLIMIT_AS), and counted as one of:

    encoded       ids within the vocabulary, grammatical, at most TOKENS_PER_BYTE a byte of the file
    clear error   a ValueError (MidiReadError) whose one-line message names the file
    other         any other exception, or a result that breaks the grammar (a bug: listed)
    signal        the child died of a signal (a crash in native code: listed)
    hang          past the time limit
    memory        MemoryError, or the reader's bad_alloc, under the memory limit

``tests/test_fuzz_midi.py`` runs a few hundred of the same mutants in-process as part of the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

OUTCOMES = ("encoded", "clear error", "other", "signal", "hang", "memory")
HUGE_DELTA = b"\xff\xff\xff\x7f"  # 2**28 - 1 ticks, the largest variable-length quantity MIDI allows
# Tokens a byte of MIDI may become: a note is 6 bytes at least (two 3-byte events) and 2 tokens, plus at most 4
# xxsep pairs of rest before it (encoding.MAX_REST_STEPS): under 2 a byte. Before the rest limit, 45 bytes made
# 6.7 million tokens.
TOKENS_PER_BYTE = 4


# ----------------------------------------------------------------------------------------------------------
# Seeds


def varlen(value: int) -> bytes:
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(groups))


def track(*events) -> bytes:
    """A track chunk from (delta ticks, event bytes) pairs, closed by End of Track."""
    body = b"".join(varlen(delta) + bytes(event) for delta, event in events) + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + body


def midi(*tracks, midi_format: int = 1, division: int = 480) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, midi_format, len(tracks), division) + b"".join(tracks)


def notes(*pitches, length: int = 480):
    return [event for pitch in pitches for event in ((0, [0x90, pitch, 80]), (length, [0x80, pitch, 0]))]


def handmade_seeds() -> list[bytes]:
    meters = [(0, [0xFF, 0x58, 0x04, 3, 2, 24, 8]), *notes(60, 64), (0, [0xFF, 0x58, 0x04, 7, 3, 24, 8])]
    return [
        midi(track(*notes(60, 62, 64, 65)), track(*notes(48, 50))),
        midi(track(*meters, *notes(67, 65))),
        midi(track(*notes(60)), track(*notes(64)), track(*notes(67)), midi_format=2),
        midi(track(*notes(60, 62, length=1)), division=2),
        midi(track((0, [0xFF, 0x51, 0x03, 0x07, 0xA1, 0x20]), *notes(72, 71, 69)), midi_format=0),
    ]


def chorale_seeds(count: int) -> list[bytes]:
    """The first ``count`` chorales of music21's corpus as MIDI bytes (in a temporary folder, removed)."""
    from hf_music_xl.data import music21_source

    seeds = []
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as folder:
        for path in music21_source.bach_chorale_paths()[:count]:
            written = Path(folder) / f"{path.stem}.mid"
            music21_source.read_music21(path).dump_midi(str(written))
            seeds.append(written.read_bytes())
    return seeds


# ----------------------------------------------------------------------------------------------------------
# Mutations: each takes the bytes, a numpy Generator and the seeds, and returns new bytes


def track_starts(data: bytes) -> list[int]:
    """Offsets of every "MTrk" chunk tag in the bytes."""
    found, at = [], data.find(b"MTrk")
    while at >= 0:
        found.append(at)
        at = data.find(b"MTrk", at + 1)
    return found


def flip_bytes(data: bytes, rng, seeds) -> bytes:
    out = bytearray(data)
    for position in rng.integers(0, max(1, len(out)), int(rng.integers(1, 9))):
        if position < len(out):
            out[position] = int(rng.integers(0, 256))
    return bytes(out)


def truncate(data: bytes, rng, seeds) -> bytes:
    return data[: int(rng.integers(0, max(1, len(data))))]


def insert_random(data: bytes, rng, seeds) -> bytes:
    at = int(rng.integers(0, len(data) + 1))
    return data[:at] + rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes() + data[at:]


def copy_stretch(data: bytes, rng, seeds) -> bytes:
    start, end = sorted(int(x) for x in rng.integers(0, len(data) + 1, 2))
    at = int(rng.integers(0, len(data) + 1))
    return data[:at] + data[start : min(end, start + 4096)] + data[at:]


def huge_delta(data: bytes, rng, seeds) -> bytes:
    """An event 2**28 - 1 ticks late at the start of a track (its chunk length kept right)."""
    starts = track_starts(data)
    if not starts or starts[-1] + 8 > len(data):
        return data + track((0x0FFFFFFF, [0x90, 60, 80]), (1, [0x80, 60, 0]))
    at = starts[int(rng.integers(0, len(starts)))]
    event = [
        b"\xff\x01\x00",  # an empty text event
        bytes([0xFF, 0x58, 0x04, int(rng.integers(0, 256)), int(rng.integers(0, 8)), 24, 8]),  # a time signature
        bytes([0x90, int(rng.integers(0, 128)), 80]),  # a note-on
        b"\xff\x51\x03\x07\xa1\x20",  # a tempo
    ][int(rng.integers(0, 4))]
    inserted = HUGE_DELTA + event
    (length,) = struct.unpack(">I", data[at + 4 : at + 8])
    header = b"MTrk" + struct.pack(">I", (length + len(inserted)) % 2**32)
    return data[:at] + header + inserted + data[at + 8 :]


def chunk_length(data: bytes, rng, seeds) -> bytes:
    starts = [at for at in track_starts(data) if at + 8 <= len(data)]
    if not starts:
        return data
    at = starts[int(rng.integers(0, len(starts)))]
    (length,) = struct.unpack(">I", data[at + 4 : at + 8])
    choices = [0, 1, length - 1, length + 1, 2**31 - 1, 2**32 - 1, int(rng.integers(0, 2**32))]
    return data[: at + 4] + struct.pack(">I", choices[int(rng.integers(0, len(choices)))] % 2**32) + data[at + 8 :]


def header_field(data: bytes, rng, seeds) -> bytes:
    if len(data) < 14:
        return data
    offset = int(rng.choice([8, 10, 12]))  # format, number of tracks, division
    value = int(rng.choice([0, 1, 2, 3, 0x7FFF, 0x8000 | 0x1E28, 0xFFFF, int(rng.integers(0, 2**16))]))
    return data[:offset] + struct.pack(">H", value) + data[offset + 2 :]


def splice(data: bytes, rng, seeds) -> bytes:
    other = seeds[int(rng.integers(0, len(seeds)))]
    return data[: int(rng.integers(0, len(data) + 1))] + other[int(rng.integers(0, len(other) + 1)) :]


MUTATIONS = (flip_bytes, truncate, insert_random, copy_stretch, huge_delta, chunk_length, header_field, splice)


def fix_lengths(data: bytes) -> bytes:
    """Each track chunk's length set to where the next one starts (or the file ends), so that a mutation inside
    the events reaches the event parser and the encoder instead of the chunk check."""
    starts = [at for at in track_starts(data) if at + 8 <= len(data)]
    out = bytearray(data)
    for at, end in zip(starts, starts[1:] + [len(data)]):
        out[at + 4 : at + 8] = struct.pack(">I", max(0, end - at - 8))
    return bytes(out)


def mutants(seeds: list[bytes], count: int, seed: int = 0):
    """``count`` (description, bytes) mutants of the seeds, the same ones for the same ``seed``: one to three
    mutations, then (three times in four, unless a chunk length was the mutation) the chunk lengths made right."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        source = int(rng.integers(0, len(seeds)))
        data, applied = seeds[source], []
        for _ in range(int(rng.integers(1, 4))):
            mutation = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
            data = mutation(data, rng, seeds)
            applied.append(mutation.__name__)
        if "chunk_length" not in applied and rng.random() < 0.75:
            data = fix_lengths(data)
            applied.append("fix_lengths")
        yield f"mutant {index} of seed {source}: {' + '.join(applied)}", data


# ----------------------------------------------------------------------------------------------------------
# Outcomes


def classify(path: Path) -> tuple[str, str]:
    """(outcome, detail) of encoding the file at ``path`` in this process."""
    from hf_music_xl.models.music_xl import encoding

    try:
        ids = encoding.encode_midi(path)
    except MemoryError as error:
        return "memory", f"MemoryError: {error}"
    except ValueError as error:
        message = str(error)
        if "bad_alloc" in message:
            return "memory", message
        if str(path) in message and "\n" not in message:
            return "clear error", f"{type(error).__name__}: {message.removeprefix(str(path) + ': ')}"
        return "other", f"unclear {type(error).__name__}: {message!r}"
    except Exception as error:
        return "other", f"{type(error).__name__}: {error}"
    if len(ids) and (ids.min() < 0 or ids.max() >= encoding.VOCAB_SIZE):
        return "other", f"ids outside the vocabulary: {ids.min()}..{ids.max()}"
    if encoding.first_invalid_position(ids) is not None or len(ids) > encoding.MAX_TOKENS:
        return "other", f"ungrammatical or too long ({len(ids)} tokens)"
    size = path.stat().st_size
    if len(ids) > TOKENS_PER_BYTE * size + 16:
        return "other", f"{len(ids)} tokens from {size} bytes: the work is not bounded by the input"
    return "encoded", f"{len(ids)} tokens"


def available_memory_limit(headroom: int) -> int:
    """This process's address space plus ``headroom`` bytes: a child may grow by that much."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024 + headroom
    return resource.RLIM_INFINITY


def classify_in_child(path: Path, cpu_seconds: int, memory_bytes: int) -> tuple[str, str]:
    """``classify`` in a forked child under CPU-time and address-space limits; a death or hang is its outcome."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits, then the work, then one line back
        os.close(read_end)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
            outcome = classify(path)
        except MemoryError:
            outcome = ("memory", "MemoryError outside the encoder")
        except BaseException as error:
            outcome = ("other", f"{type(error).__name__}: {error}")
        os.write(write_end, json.dumps(outcome).encode()[:60_000])
        os._exit(0)
    os.close(write_end)
    answer, deadline = b"", time.monotonic() + 3 * cpu_seconds  # wall clock: a child blocked, not computing
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        block = os.read(read_end, 65536)
        if not block:
            break
        answer += block
    os.close(read_end)
    if not answer:
        os.kill(pid, signal.SIGKILL)  # still running past the wall deadline, or dead: either way, gone
    _, status = os.waitpid(pid, 0)
    if answer:
        return tuple(json.loads(answer))
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) not in (signal.SIGXCPU, signal.SIGKILL):
        return "signal", signal.Signals(os.WTERMSIG(status)).name
    if os.WIFSIGNALED(status):
        return "hang", f"past {cpu_seconds} s"
    return "other", f"the child exited with status {os.WEXITSTATUS(status)} and no answer"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chorales", type=int, default=20, help="chorales among the seeds")
    parser.add_argument("--cpu-seconds", type=int, default=10, help="CPU-time limit of one mutant")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address space a mutant may add")
    args = parser.parse_args()

    from hf_music_xl.models.music_xl import encoding  # imported once, before the children fork  # noqa: F401

    seeds = chorale_seeds(args.chorales) + handmade_seeds()
    memory = available_memory_limit(args.memory_mb * 2**20)
    counts, listed = Counter(), []
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="fuzz-midi-") as folder:
        for index, (description, data) in enumerate(mutants(seeds, args.mutants, args.seed)):
            path = Path(folder) / f"mutant-{index}.mid"
            path.write_bytes(data)
            outcome, detail = classify_in_child(path, args.cpu_seconds, memory)
            counts[outcome] += 1
            if outcome in ("other", "signal", "hang", "memory"):
                listed.append(f"{outcome}: {description} ({len(data)} bytes): {detail}")
            path.unlink()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    elapsed = time.perf_counter() - started
    print(f"{args.mutants} mutants of {len(seeds)} seeds (seed {args.seed}) in {elapsed:.0f} s, {child_cpu:.0f} s CPU:")
    for outcome in OUTCOMES:
        print(f"  {outcome:12} {counts[outcome]}")
    for line in listed:
        print("  " + line)
    sys.exit(1 if any(counts[outcome] for outcome in OUTCOMES[2:]) else 0)


if __name__ == "__main__":
    main()
