"""Looking at and listening to generated ids: MIDI, a piano-roll picture (PNG) and audio (WAV).

``render_outputs(ids, prompt_len, stem)`` writes ``stem.mid``, ``stem.png`` and, when a renderer and a local
soundfont exist, ``stem.wav``; ``render_sample`` does the same for a pipeline sample (an infilling's or a
harmonization's piano roll shows what was given in grey). Audio never downloads anything: it uses

- the ``fluidsynth`` program (Debian: ``apt-get install fluidsynth fluid-soundfont-gm``), or
- the ``midirenderer`` pip package (a self-contained wheel),

with a soundfont from ``--soundfont``, ``$HF_MUSIC_XL_SOUNDFONT``, ``/usr/share/sounds/sf2``,
``/usr/share/soundfonts``, or the ``TimGM6mb.sf2`` inside the ``pretty_midi`` wheel. Without them the other
files are still written and one line says how to enable audio.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .models.music_xl import encoding

logger = logging.getLogger(__name__)

PROMPT_COLOUR = "#4c72b0"  # blue
CONTINUATION_COLOUR = "#dd8452"  # orange
GIVEN_COLOUR = "#b0b0b0"  # grey: what a task was given (kept notes, the melody)


# ----------------------------------------------------------------------------------------------------------
# Notes of the prompt and of the continuation


def split_notes(ids, prompt_len: int) -> tuple[encoding.Notes, encoding.Notes]:
    """(prompt notes, continuation notes) of one sequence, onsets on the whole piece's time line.

    ``ids_to_notes`` lists notes in token order, so the prompt's notes come first."""
    ids = np.asarray(ids, dtype=np.int64)
    notes = encoding.ids_to_notes(ids)
    n_prompt = len(encoding.ids_to_notes(ids[:prompt_len]))
    in_prompt = np.arange(len(notes)) < n_prompt
    return notes.select(in_prompt), notes.select(~in_prompt)


# ----------------------------------------------------------------------------------------------------------
# Piano roll


def piano_roll(ids, prompt_len: int, path, title: str | None = None, continuation_label: str = "generated") -> Path:
    """A PNG of pitch against time: prompt notes blue, the continuation orange (labelled ``continuation_label``),
    bar lines grey where the time signatures put them (a meter change shows as bars of another width), bars
    numbered, the end of the prompt dashed."""
    ids = np.asarray(ids, dtype=np.int64)
    prompt, continuation = split_notes(ids, prompt_len)
    prompt_end = encoding.beat_positions(ids)[prompt_len] if len(prompt) and prompt_len < len(ids) else None
    layers = [(prompt, PROMPT_COLOUR, "prompt"), (continuation, CONTINUATION_COLOUR, continuation_label)]
    return draw_roll(layers, prompt.bars(), path, title, prompt_end=prompt_end)


def task_piano_roll(sample: dict, path, title: str | None = None) -> Path:
    """A PNG of an infilling or a harmonization (a pipeline sample): the given notes grey, the generated ones in
    colour, an infilling's bars shaded."""
    bars = encoding.ids_to_notes(sample["ids"]).bars()  # the meters, as the layout states them
    given = [row for row in sample["notes"] if row["prompt"]]
    written = [row for row in sample["notes"] if not row["prompt"]]
    span = None
    if "infill_bars" in sample:
        first, last = sample["infill_bars"]
        span = (bars.bar_time(first - 1), bars.bar_time(last))
    layers = [(rows_to_notes(given), GIVEN_COLOUR, "given"), (rows_to_notes(written), CONTINUATION_COLOUR, "generated")]
    return draw_roll(layers, bars, path, title, span=span)


def rows_to_notes(rows: list[dict]) -> encoding.Notes:
    """The ``notes`` dicts of a pipeline sample as a note table."""
    columns = [np.array([row[key] for row in rows], dtype=np.int64) for key in ("onset", "pitch", "duration")]
    return encoding.Notes(*columns)


def draw_roll(layers, bars: encoding.Bars, path, title=None, prompt_end=None, span=None) -> Path:
    """Draw ``layers`` ((notes, colour, label) each) as bars of pitch against time, bar lines as ``bars`` lays
    them out, ``prompt_end`` (a grid step) dashed and ``span`` (grid steps) shaded."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed

    ends = np.concatenate([notes.onset + notes.duration for notes, _, _ in layers])
    bar_lines = bars.bar_lines(int(ends.max(initial=1)) - 1)
    end = max(int(ends.max(initial=1)), bars.bar_time(len(bar_lines)))  # to the end of the last bar
    pitches = np.concatenate([notes.pitch for notes, _, _ in layers])
    low, high = (int(pitches.min()) - 2, int(pitches.max()) + 2) if len(pitches) else (58, 74)
    scale = encoding.STEPS_PER_BAR  # x in 4/4 bars' worth of grid steps, so widths compare across meters

    figure = Figure(figsize=(min(max(6.0, 1.5 + 0.45 * end / scale), 30.0), 4.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.vlines(np.r_[bar_lines, end] / scale, low, high, colors="0.85", linewidth=0.8, zorder=0)
    if span is not None:
        axes.axvspan(span[0] / scale, span[1] / scale, color=CONTINUATION_COLOUR, alpha=0.12, zorder=0)
    for notes, colour, label in layers:
        if len(notes):
            axes.barh(
                notes.pitch,
                notes.duration / scale,
                left=notes.onset / scale,
                height=0.8,
                color=colour,
                edgecolor="black",
                linewidth=0.3,
                label=f"{label} ({len(notes)} notes)",
            )
    if prompt_end is not None:  # time when the continuation starts
        axes.axvline(prompt_end / scale, color="black", linestyle="--", linewidth=1.0)

    axes.set_xlim(0, end / scale)
    axes.set_ylim(low, high)
    middles = (bar_lines + np.r_[bar_lines[1:], end]) / 2 / scale
    axes.set_xticks(middles, [str(bar + 1) for bar in range(len(bar_lines))], fontsize=7)
    axes.tick_params(axis="x", length=0)
    c_pitches = [p for p in range(low, high + 1) if p % 12 == 0]
    axes.set_yticks(c_pitches, [f"C{p // 12 - 1}" for p in c_pitches])
    axes.set_xlabel("bar")
    axes.set_ylabel("pitch")
    if title:
        axes.set_title(title, fontsize=10)
    if len(pitches):
        axes.legend(loc="upper right", fontsize=8, framealpha=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Audio

SOUNDFONT_ENV = "HF_MUSIC_XL_SOUNDFONT"
SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts")
ENABLE_AUDIO = (
    "install the fluidsynth program and a soundfont (Debian/Ubuntu: apt-get install fluidsynth fluid-soundfont-gm) "
    "or `pip install midirenderer pretty_midi` (pretty_midi ships TimGM6mb.sf2); "
    f"any other local .sf2 via --soundfont or ${SOUNDFONT_ENV}"
)
_already_told: set[str] = set()  # say how to enable audio once per process, not once per file


class AudioUnavailableError(RuntimeError):
    """No renderer or no local soundfont; the message says how to enable audio."""


def find_soundfont(explicit=None) -> Path | None:
    """The soundfont to use: ``explicit``, then ``$HF_MUSIC_XL_SOUNDFONT`` (both must exist), then the system
    folders (Debian's ``default-GM.sf2`` first), then the one inside the pretty_midi wheel. Never downloads."""
    for chosen in (explicit, os.environ.get(SOUNDFONT_ENV)):
        if chosen:
            if not Path(chosen).is_file():
                raise FileNotFoundError(f"soundfont not found: {chosen}")
            return Path(chosen)
    for folder in map(Path, SOUNDFONT_DIRS):
        found = sorted(folder.glob("*.sf2"), key=lambda p: (p.name != "default-GM.sf2", p.name))
        if found:
            return found[0]
    spec = importlib.util.find_spec("pretty_midi")  # located without importing it
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(spec.submodule_search_locations[0]) / "TimGM6mb.sf2"
        if bundled.is_file():
            return bundled
    return None


def find_renderer() -> str | None:
    """'fluidsynth' (the program), 'midirenderer' (the pip package) or None."""
    if shutil.which("fluidsynth"):
        return "fluidsynth"
    if importlib.util.find_spec("midirenderer") is not None:
        return "midirenderer"
    return None


def render_wav(midi_path, wav_path, soundfont=None, renderer: str | None = None) -> Path:
    """Render a MIDI file to WAV with a local soundfont; ``AudioUnavailableError`` if there is no way to."""
    soundfont, renderer = find_soundfont(soundfont), renderer or find_renderer()
    if renderer is None or soundfont is None:
        missing = "no audio renderer" if renderer is None else "no local soundfont"
        raise AudioUnavailableError(f"{missing}, so no WAV; to enable audio, {ENABLE_AUDIO}")
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    if renderer == "fluidsynth":
        command = [
            "fluidsynth",
            "-ni",
            "-q",
            "-T",
            "wav",
            "-r",
            "44100",
            "-F",
            str(wav_path),
            str(soundfont),
            str(midi_path),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not wav_path.is_file():
            raise RuntimeError(f"fluidsynth failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    elif renderer == "midirenderer":
        import midirenderer

        wav_path.write_bytes(midirenderer.render_wave_from(Path(soundfont).read_bytes(), Path(midi_path).read_bytes()))
    else:
        raise ValueError(f"unknown audio renderer {renderer!r}; use fluidsynth or midirenderer")
    return wav_path


# ----------------------------------------------------------------------------------------------------------
# Everything for one sample


@dataclass
class FileOptions:
    """The files written next to each MIDI file; each field is a flag of the commands that write them."""

    picture: bool = field(default=True, metadata={"help": "write a piano-roll PNG next to each MIDI file"})
    audio: bool = field(default=True, metadata={"help": "write a WAV when a renderer and a local soundfont exist"})
    soundfont: str = field(default="", metadata={"help": "a local .sf2 (also $HF_MUSIC_XL_SOUNDFONT)"})


def render_outputs(
    ids,
    prompt_len: int,
    stem,
    picture: bool = True,
    audio: bool = True,
    soundfont=None,
    title: str | None = None,
    continuation_label: str = "generated",
) -> dict[str, Path | None]:
    """Write ``stem.mid``, ``stem.png`` (piano roll) and ``stem.wav`` (when audio is possible) for one sequence
    of ids whose first ``prompt_len`` tokens are the prompt. Returns {"midi", "picture", "audio"} -> path or None."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    midi_path = stem.with_name(stem.name + ".mid")
    encoding.decode_ids(ids).dump_midi(str(midi_path))
    paths = {"midi": midi_path, "picture": None, "audio": None}
    if picture:
        paths["picture"] = piano_roll(
            ids, prompt_len, stem.with_name(stem.name + ".png"), title or stem.name, continuation_label
        )
    paths["audio"] = audio_if_possible(midi_path, audio, soundfont)
    return paths


def render_sample(
    sample: dict, midi_path, picture: bool = True, audio: bool = True, soundfont=None, title: str | None = None
) -> dict[str, Path | None]:
    """Write a pipeline sample's own MIDI bytes to ``midi_path``, its piano roll (a continuation's as
    ``render_outputs`` draws it, a task's with what was given in grey) and WAV next to it, as ``render_outputs``
    does."""
    midi_path = Path(midi_path)
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    midi_path.write_bytes(sample["midi"])
    paths = {"midi": midi_path, "picture": None, "audio": None}
    if picture:
        png, title = midi_path.with_suffix(".png"), title or midi_path.stem
        if sample.get("task", "continue") == "continue":
            paths["picture"] = piano_roll(sample["ids"], sample["prompt_length"], png, title)
        else:
            paths["picture"] = task_piano_roll(sample, png, title)
    paths["audio"] = audio_if_possible(midi_path, audio, soundfont)
    return paths


def audio_if_possible(midi_path: Path, audio: bool, soundfont=None) -> Path | None:
    """``render_wav`` next to ``midi_path`` when ``audio`` is asked and possible; else None (how to enable audio is
    said once per process)."""
    if not audio:
        return None
    try:
        return render_wav(midi_path, midi_path.with_suffix(".wav"), soundfont)
    except AudioUnavailableError as error:
        if str(error) not in _already_told:
            _already_told.add(str(error))
            logger.warning("%s", error)
    return None
