"""Looking at and listening to generated ids: MIDI, a piano-roll picture (PNG) and audio (WAV).

``render_outputs(ids, prompt_len, stem)`` writes ``stem.mid``, ``stem.png`` and, when a renderer and a local
soundfont exist, ``stem.wav``. Audio never downloads anything: it uses

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
from pathlib import Path

import numpy as np

from .models.music_xl import encoding

logger = logging.getLogger(__name__)

PROMPT_COLOUR = "#4c72b0"  # blue
CONTINUATION_COLOUR = "#dd8452"  # orange


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
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed

    ids = np.asarray(ids, dtype=np.int64)
    prompt, continuation = split_notes(ids, prompt_len)
    bars = prompt.bars()
    ends = np.r_[prompt.onset + prompt.duration, continuation.onset + continuation.duration]
    bar_lines = bars.bar_lines(int(ends.max(initial=1)) - 1)
    end = max(int(ends.max(initial=1)), bars.bar_time(len(bar_lines)))  # to the end of the last bar
    pitches = np.r_[prompt.pitch, continuation.pitch]
    low, high = (int(pitches.min()) - 2, int(pitches.max()) + 2) if len(pitches) else (58, 74)
    scale = encoding.STEPS_PER_BAR  # x in 4/4 bars' worth of grid steps, so widths compare across meters

    figure = Figure(figsize=(min(max(6.0, 1.5 + 0.45 * end / scale), 30.0), 4.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.vlines(np.r_[bar_lines, end] / scale, low, high, colors="0.85", linewidth=0.8, zorder=0)
    for notes, colour, label in (
        (prompt, PROMPT_COLOUR, "prompt"),
        (continuation, CONTINUATION_COLOUR, continuation_label),
    ):
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
    if len(prompt) and prompt_len < len(ids):
        prompt_end = encoding.beat_positions(ids)[prompt_len] / scale  # time when the continuation starts
        axes.axvline(prompt_end, color="black", linestyle="--", linewidth=1.0)

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
    if audio:
        try:
            paths["audio"] = render_wav(midi_path, stem.with_name(stem.name + ".wav"), soundfont)
        except AudioUnavailableError as error:
            if str(error) not in _already_told:
                _already_told.add(str(error))
                logger.warning("%s", error)
    return paths
