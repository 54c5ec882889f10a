"""The app's generation behind the page (no browser): progress, Cancel, bad uploads, the tasks; the page itself is
tested in Chromium by test_app_browser.py."""

import threading

import pytest
import symusic

from hf_music_xl.app import MAX_BARS, TASKS, BadUpload, MusicApp, build_app, read_upload
from hf_music_xl.generate import load_pipeline
from hf_music_xl.models.music_xl.sampling_music_xl import MAX_PROMPT_BARS


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    return MusicApp(load_pipeline(str(tiny_model_dir)), tmp_path_factory.mktemp("app_out"))


def test_generate_reports_progress_and_writes_picture_and_midi(app, chorale_midi_files):
    seen = []
    status, picture, audio, midi = app.generate(
        str(chorale_midi_files[0]),
        2,
        1,
        "conservative",
        0.9,
        4,
        "G major",
        progress=lambda value, desc, unit: seen.append((value, unit)),
    )
    assert status.startswith("Generated") and "(seed 4)" in status
    assert picture.endswith(".png") and midi.endswith(".mid") and symusic.Score(midi).note_num() > 0
    assert audio is None or audio.endswith(".wav")
    assert seen and all(unit == "bars" and total == 1 for (done, total), unit in seen)


def test_cancel_stops_a_long_generation_at_the_next_chunk(app):
    started, result = threading.Event(), {}

    def progress(value, desc, unit):
        started.set()

    worker = threading.Thread(
        target=lambda: result.update(
            out=app.generate(None, 0, 64, "default", 1.0, 0, "none", session="session-a", progress=progress)
        )
    )
    worker.start()
    assert started.wait(300), "no progress reported"
    app.cancel("session-a")
    worker.join(300)
    assert result["out"] == ("Cancelled.", None, None, None)
    assert app.stops == {}


def test_bad_uploads(app, tmp_path):
    empty, big, text = tmp_path / "empty.mid", tmp_path / "big.mid", tmp_path / "notes.mid"
    empty.write_bytes(b"")
    big.write_bytes(b"MThd" + bytes(2_000_000))
    text.write_text("not music")
    with pytest.raises(BadUpload, match="empty.mid is empty"):
        read_upload(str(empty), 1000)
    with pytest.raises(BadUpload, match=r"big.mid is too large \(2.0 MB; the limit is 1.0 MB\)"):
        read_upload(str(big), 1_000_000)
    assert read_upload(None, 10) is None
    status, *files = app.generate(str(text), 4, 2, "default", 1.0, 0, "none")
    assert status.startswith("**Error:** notes.mid: not a readable MIDI file") and files == [None, None, None]


@pytest.mark.parametrize(
    "prompt_bars, bars, problem",
    [
        (4, MAX_BARS + 1, f"bars must be between 1 and {MAX_BARS}"),
        (4, float("nan"), "bars must be between 1"),
        (10_000, 2, "prompt_bars must be between 0 and 256"),
    ],
)
def test_direct_calls_get_the_sliders_bounds(app, prompt_bars, bars, problem):
    status, *files = app.generate(None, prompt_bars, bars, "default", 1.0, 0, "none")
    assert status.startswith("**Error:** ") and problem in status and files == [None, None, None]


def test_a_missing_upload_is_a_clear_error(app, tmp_path):
    status, *files = app.generate(str(tmp_path / "gone.mid"), 4, 2, "default", 1.0, 0, "none")
    assert status == "**Error:** gone.mid was not found on the server: upload it again"


@pytest.mark.parametrize("seed, temperature", [(float("inf"), 1.0), (0, float("nan"))])
def test_non_finite_seed_or_temperature_is_a_clear_error(app, seed, temperature):
    status, *files = app.generate(None, 0, 2, "default", temperature, seed, "none")
    assert status.startswith("**Error:** ") and len(status) > len("**Error:** ") + 10 and files == [None, None, None]


def test_the_page_s_sliders_have_the_bounds_direct_calls_get(app):
    pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
    page = build_app(app, "bounds")
    sliders = {block.elem_id: block for block in page.blocks.values() if block.elem_id in ("bars", "prompt-bars")}
    assert (sliders["bars"].minimum, sliders["bars"].maximum) == (1, MAX_BARS)
    assert (sliders["prompt-bars"].minimum, sliders["prompt-bars"].maximum) == (0, MAX_PROMPT_BARS)  # was 16


# ----------------------------------------------------------------------------------------------------------
# Tasks


@pytest.fixture(scope="module")
def task_app(task_model_dir, tmp_path_factory):
    return MusicApp(load_pipeline(str(task_model_dir)), tmp_path_factory.mktemp("task_app_out"))


def test_fill_bars_keeps_the_rest_of_the_file(task_app, chorale_midi_files):
    path = chorale_midi_files[11]
    status, picture, audio, midi = task_app.generate(
        str(path), 4, 8, "default", 1.0, 2, "none", task="infill", fill_bars=(3.0, 4.0)
    )
    assert status.startswith("Filled bars 3-4: ") and status.endswith("kept (seed 2).")
    given, out = symusic.Score(str(path)), symusic.Score(midi)
    assert picture.endswith(".png") and midi.endswith("-infill-seed2.mid")
    assert [track.name for track in out.tracks[:4]] == [track.name for track in given.tracks]
    assert out.tracks[4].name == "Generated (bars 3-4)" and out.note_num() != given.note_num()


def test_harmonize_keeps_the_melody(task_app, chorale_midi_files):
    path = chorale_midi_files[11]
    status, picture, audio, midi = task_app.generate(
        str(path), 4, 8, "default", 1.0, 0, "none", task="harmonize", melody_track=" tenor "
    )
    assert status.startswith("Harmonized ") and "new notes under" in status
    melody = symusic.Score(midi).tracks[0]
    tenor = symusic.Score(str(path)).tracks[2]
    assert melody.name == "tenor" and melody.notes.numpy()["time"].tolist() == tenor.notes.numpy()["time"].tolist()


@pytest.mark.parametrize(
    "upload, task, fill_bars, problem",
    [
        (True, "infill", (0, 2), "the bars to fill need 1 <= first <= last (bars count from 1), got 0-2"),
        (True, "infill", (float("nan"), 2), "a bar to fill must be a whole number, got nan"),
        (True, "infill", (30, 31), "bars 30-31 are not within the piece's bars 1-10"),
        (False, "infill", (1, 2), "upload the MIDI file to fill"),
        (False, "harmonize", (1, 2), "upload the melody to harmonize"),
    ],
)
def test_the_tasks_settings_are_checked(task_app, chorale_midi_files, upload, task, fill_bars, problem):
    path = str(chorale_midi_files[11]) if upload else None
    status, *files = task_app.generate(path, 4, 8, "default", 1.0, 0, "none", task=task, fill_bars=fill_bars)
    assert problem in status and status.startswith("**Error:** ") and files == [None, None, None]


def test_a_model_without_the_task_says_so(app, chorale_midi_files):
    for task in ("infill", "harmonize"):
        status, *files = app.generate(str(chorale_midi_files[0]), 4, 8, "default", 1.0, 0, "none", task=task)
        assert status == (
            f"**Error:** this model was trained with --tasks continue; {task} needs a model trained with "
            f"--tasks ...,{task}"
        )


def test_the_page_offers_the_task_choice(app):
    pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
    page = build_app(app, "test")
    [choice] = [block for block in page.blocks.values() if getattr(block, "elem_id", None) == "task"]
    assert choice.choices == TASKS and [task for _, task in TASKS] == ["continue", "infill", "harmonize"]
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"fill-first", "fill-last", "melody-track", "bars", "prompt-bars"} <= ids
