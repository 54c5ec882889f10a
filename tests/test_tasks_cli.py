"""`hf-music-xl infill` and `hf-music-xl harmonize`: the pipeline's samples written as files with a piano roll that
marks what was given and what was generated; a model not trained for the task (the released one among them)
refused in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import symusic
from matplotlib.image import imread

from hf_music_xl.cli import build_parser, main
from hf_music_xl.generate import load_pipeline
from hf_music_xl.release import MODEL_ENV, RELEASE_DIR
from hf_music_xl.render import CONTINUATION_COLOUR, GIVEN_COLOUR


@pytest.fixture(scope="module")
def chorale(chorale_midi_files):
    return str(chorale_midi_files[11])  # 10 bars of 4/4


def pixels_of(png, colour: str) -> int:
    """How many pixels of the PNG are ``colour`` ('#rrggbb')."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    return int(np.all(np.abs(imread(png)[..., :3] - rgb) < 1.5 / 255, axis=-1).sum())


def test_infill_writes_each_sample_and_a_piano_roll_marking_given_and_generated(
    task_model_dir, chorale, tmp_path, capsys
):
    out = tmp_path / "filled.mid"
    request = ["--num-samples", "2", "--seed", "5", "--preset", "conservative", "--scale", "D major"]
    main(["infill", str(task_model_dir), chorale, "--bars", "3-4", "--output", str(out), "--no-audio", *request])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{tmp_path / f'filled_{i}.mid'}  {tmp_path / f'filled_{i}.png'}" for i in (1, 2)]
    # the files are the pipeline's samples of the same request (seed 5, then 6)
    samples = load_pipeline(str(task_model_dir))(
        chorale, task="infill", bars=(3, 4), num_samples=2, seed=5, preset="conservative", scale="D major"
    )
    for index, sample in enumerate(samples, start=1):
        assert (tmp_path / f"filled_{index}.mid").read_bytes() == sample["midi"]
        new = [n["pitch"] % 12 for n in sample["notes"] if not n["prompt"]]
        assert new and set(new) <= {2, 4, 6, 7, 9, 11, 1}  # D major
        png = tmp_path / f"filled_{index}.png"
        assert pixels_of(png, GIVEN_COLOUR) > 500 and pixels_of(png, CONTINUATION_COLOUR) > 50


def test_harmonize_writes_the_named_melody_with_voices_under_it(task_model_dir, chorale, tmp_path):
    out = tmp_path / "harmonized.mid"
    main(["harmonize", str(task_model_dir), chorale, "--melody-track", "alto", "--output", str(out), "--no-audio"])
    [sample] = load_pipeline(str(task_model_dir))(chorale, task="harmonize", melody_track="alto")
    assert out.read_bytes() == sample["midi"]
    tracks = symusic.Score(str(out)).tracks
    assert tracks[0].name == "alto" and tracks[1].name == "Harmonization"
    png = out.with_suffix(".png")
    assert pixels_of(png, GIVEN_COLOUR) > 200 and pixels_of(png, CONTINUATION_COLOUR) > 200


def test_a_continue_only_model_is_refused_in_one_line_and_writes_nothing(tiny_model_dir, chorale, tmp_path):
    for command, flags in (("infill", ["--bars", "1-2"]), ("harmonize", [])):
        with pytest.raises(SystemExit) as refused:
            main([command, str(tiny_model_dir), chorale, "--output", str(tmp_path / "out.mid"), *flags])
        assert refused.value.code == (
            f"hf-music-xl {command}: error: this model was trained with --tasks continue; {command} needs a model "
            f"trained with --tasks ...,{command}"
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not (RELEASE_DIR / "config.json").is_file(), reason="no release in the checkout")
def test_the_released_model_is_the_default_and_refuses_without_a_traceback(chorale, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != MODEL_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "hf_music_xl.cli", "harmonize", chorale, "--output", str(tmp_path / "out.mid")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "hf-music-xl harmonize: error: this model was trained with --tasks continue; harmonize needs a model "
        "trained with --tasks ...,harmonize"
    )


def test_bad_bars_are_refused(task_model_dir, chorale, tmp_path, capsys):
    command = ["infill", str(task_model_dir), chorale, "--output", str(tmp_path / "out.mid")]
    with pytest.raises(SystemExit) as refused:
        main([*command, "--bars", "4-3"])
    assert refused.value.code == (
        "hf-music-xl infill: error: the bars to fill need 1 <= first <= last (bars count from 1), got 4-3"
    )
    with pytest.raises(SystemExit) as refused:
        main(command)
    assert "infill needs the bars to fill" in refused.value.code
    with pytest.raises(SystemExit) as refused:
        main([*command, "--bars", "three"])
    assert refused.value.code == 2 and "argument --bars: invalid bar_range value: 'three'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--melody-track", "alto"],  # each command has the flags of its task only
        ["generate", "--task", "infill"],
        ["harmonize", "melody.mid", "--bars", "2-3"],
        ["infill", "song.mid", "--prompt-bars", "2"],
        ["infill", "song.mid", "--melody-track", "alto"],
    ],
)
def test_each_command_has_its_tasks_flags(argv):
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(argv)
    assert refused.value.code == 2
