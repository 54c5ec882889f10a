"""Shared fixtures: real music from the installed music21 package, written to MIDI with symusic.

Nothing here is committed: the chorales are read from music21 at test time into temporary directories.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from hf_music_xl.data import music21_source

N_CHORALES = 12


@pytest.fixture(scope="session")
def chorale_scores():
    """(name, symusic.Score) for the first few Bach chorales of music21's corpus."""
    paths = music21_source.bach_chorale_paths()[:N_CHORALES]
    return [(path.stem, music21_source.read_music21(path)) for path in paths]


@pytest.fixture(scope="session")
def chorale_midi_files(request, tmp_path_factory):
    """The same chorales as real .mid files on disk.

    With $HF_MUSIC_XL_TEST_MIDI_CACHE (set by `make mutation`, which starts thousands of short pytest sessions) they
    are written once into that folder and read from there after: they come from music21 and symusic only, never
    from the code under test, so reusing them changes no result and saves parsing 12 chorales per session."""
    cache = os.environ.get("HF_MUSIC_XL_TEST_MIDI_CACHE")
    if cache:
        from importlib.metadata import version

        folder = Path(cache) / f"music21-{version('music21')}-{N_CHORALES}"
        if (folder / "order.txt").exists():  # written last: the set is complete
            return [folder / name for name in (folder / "order.txt").read_text().split()]
    else:
        folder = tmp_path_factory.mktemp("chorale_midi")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, score in request.getfixturevalue("chorale_scores"):
        path = folder / f"{name}.mid"
        score.dump_midi(str(path.with_suffix(f".{os.getpid()}")))
        os.replace(path.with_suffix(f".{os.getpid()}"), path)  # sessions may write the cache at once: whole files
        files.append(path)
    order = folder / f"order.{os.getpid()}"
    order.write_text(" ".join(path.name for path in files))
    os.replace(order, folder / "order.txt")
    return files


@pytest.fixture(scope="session")
def chorale_corpus(tmp_path_factory):
    """A real corpus of the first 12 chorales, built once per session into a temporary cache (Arrow on disk)."""
    from hf_music_xl.data.corpus import build_corpus

    return build_corpus("bach-chorales", limit=N_CHORALES, cache_dir=tmp_path_factory.mktemp("corpora"), num_proc=2)


@pytest.fixture(scope="session")
def chorale_corpus_dir(chorale_corpus):
    """The directory of `chorale_corpus` (what `--corpus` accepts)."""
    from pathlib import Path

    return Path(chorale_corpus["train"].cache_files[0]["filename"]).parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny model (mem_len 16, so generation runs past its memory) saved with its
    tokenizer, generation config and pipeline (what `from_pretrained`, `pipeline(model=...)` and the CLI load)."""
    import torch

    from hf_music_xl import MusicXLConfig, MusicXLForCausalLM, MusicXLPipeline, MusicXLTokenizerFast
    from hf_music_xl.models.music_xl.generation_music_xl import generation_config_for

    torch.manual_seed(0)
    config = MusicXLConfig.from_preset("tiny", dropout=0.0, mem_len=16, segment_len=16)
    model = MusicXLForCausalLM(config)
    model.generation_config = generation_config_for(config)
    folder = tmp_path_factory.mktemp("tiny_model")
    MusicXLPipeline(model=model, tokenizer=MusicXLTokenizerFast()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def task_model_dir(chorale_corpus_dir, tmp_path_factory):
    """A tiny model trained by the real Trainer for 60 steps with --tasks continue,infill,harmonize on the chorales
    (about 30 s): far from music, but it has learnt the task layouts well enough to write them to their end."""
    from hf_music_xl.training.run import train
    from hf_music_xl.training.settings import TrainSettings

    settings = TrainSettings(
        corpus=str(chorale_corpus_dir),
        output_dir=str(tmp_path_factory.mktemp("task_model")),
        preset="tiny",
        model_overrides="mem_len=64,segment_len=64",
        batch_size=4,
        n_segments=2,
        max_steps=60,
        tasks="continue,infill,harmonize",
    )
    return train(settings).final_dir
