"""Filling bars and harmonizing melodies from the command line: ``hf-music-xl infill`` and ``hf-music-xl harmonize``.

    hf-music-xl infill runs/tasks/final song.mid --bars 5-8 --output song-filled.mid --num-samples 3
    hf-music-xl harmonize runs/tasks/final melody.mid --melody-track Soprano --output harmonized.mid

Both run the model's pipeline (pipeline_music_xl.py: the request, its checks and the sampling are those of the
pipeline and the app) and write each sample's MIDI file (the input's own notes kept, the new ones in an added
track), its piano roll (what was given grey, what was generated in colour) and a WAV when a renderer and a local
soundfont exist. A model not trained for the task refuses it in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .generate import linears_field
from .models.music_xl.sampling_music_xl import SamplingRequest, task_fields
from .release import model_field
from .render import FileOptions, render_sample


@dataclass
class TaskSettings(FileOptions, SamplingRequest):
    """Everything ``hf-music-xl infill`` and ``harmonize`` need: a ``SamplingRequest`` of the task, the input file
    and where the files go; each field of the task is a flag, ``model`` and ``file`` the positional arguments."""

    model: str = model_field()
    linears: str = linears_field()
    file: str = field(
        default="",
        metadata={"help": "the MIDI file: the piece to fill, or the melody to harmonize", "positional": True},
    )
    output: str = field(
        default="",
        metadata={
            "help": "the MIDI file to write (several samples: OUT_1.mid, OUT_2.mid, ...); empty: "
            "outputs/generated/<FILE's name>-<task>.mid"
        },
    )


def output_paths(settings: TaskSettings) -> list[Path]:
    """The MIDI file of each sample: ``--output`` itself for one, ``OUT_1.mid``, ``OUT_2.mid``, ... for several."""
    path = Path(settings.output or f"outputs/generated/{Path(settings.file).stem}-{settings.task}.mid")
    if settings.num_samples == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{index}{path.suffix}") for index in range(1, settings.num_samples + 1)]


def run_task(settings: TaskSettings) -> list[dict]:
    """``hf-music-xl infill`` / ``harmonize``: the pipeline's samples of ``settings.file``, each written with its
    piano roll and audio; the paths are printed. Returns the samples."""
    from .generate import load_pipeline

    pipe = load_pipeline(settings.model, settings.linears)
    parameters = {name: getattr(settings, name) for name in ["task", *task_fields(settings.task)]}
    with tqdm(unit="bar", leave=False, delay=1) as progress:  # delay: a refusal prints only its line

        def report(done, total):
            progress.total = total
            progress.update(done - progress.n)

        samples = pipe(settings.file, progress_callback=report, **parameters)
    for sample, path in zip(samples, output_paths(settings)):
        files = render_sample(sample, path, settings.picture, settings.audio, settings.soundfont or None)
        print("  ".join(str(path) for path in files.values() if path is not None))
    return samples
