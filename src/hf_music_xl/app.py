"""The web app: continue a MIDI file (or start from nothing), fill some of its bars or harmonize a melody in the
browser, with Gradio.

    pip install 'hf_music_xl[app]'
    hf-music-xl app runs/tiny/final                 # or a Hub id; http://127.0.0.1:7860
    hf-music-xl app you/chorale-xl --host 0.0.0.0 --port 8080

Choose a task (continue, fill bars, harmonize: the last two for a model trained with them, ``train --tasks``), a
MIDI file (optional for continuing), bars (the bars to fill), preset, temperature, seed and scale; Generate shows
the piano roll, plays the audio (when a renderer and a local soundfont exist, see render.py) and offers the MIDI
file. Progress is shown by bar; Cancel stops at the next chunk of tokens. A bad upload (not MIDI, empty, too
large), a bad setting or a task the model was not trained for gives one line in the page and the server goes on.
The same app runs in a Space (``hf-music-xl push-space``).
"""

import logging
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .generate import linears_field, load_pipeline
from .models.music_xl.sampling_music_xl import MAX_PROMPT_BARS, SAMPLING_PRESETS, sampling_settings
from .release import default_model, model_field
from .render import find_renderer, find_soundfont, render_sample

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 1_000_000  # a MIDI file of a whole symphony is a few hundred KB
MAX_BARS = 64
CHUNK_TOKENS = 32  # tokens per generate() call: how often progress moves and Cancel is noticed
SCALES = ["none"] + [
    f"{tonic} {mode}"
    for mode in ("major", "minor")
    for tonic in ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
]


TASKS = [("Continue", "continue"), ("Fill bars", "infill"), ("Harmonize", "harmonize")]  # (label, task)


class Cancelled(Exception):
    """Raised in the progress callback when the person pressed Cancel."""


class BadUpload(ValueError):
    """An upload that cannot be a prompt; the message is shown in the page."""


@dataclass
class AppSettings:
    """Everything ``hf-music-xl app`` needs; each field is a flag, ``model`` the positional argument."""

    model: str = model_field()
    linears: str = linears_field()
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 for all)"})
    port: int = field(default=7860, metadata={"help": "port"})
    max_upload_bytes: int = field(default=MAX_UPLOAD_BYTES, metadata={"help": "largest prompt file accepted"})
    output_dir: str = field(default="", metadata={"help": "where generated files go; empty: a temporary directory"})


def read_upload(path: str | None, max_bytes: int) -> bytes | None:
    """The bytes of an uploaded prompt file, or None for no prompt; ``BadUpload`` says what is wrong."""
    if not path:
        return None
    name = Path(path).name
    if not os.path.isfile(path):  # e.g. Gradio's temporary copy already cleaned up
        raise BadUpload(f"{name} was not found on the server: upload it again")
    size = os.path.getsize(path)
    if size == 0:
        raise BadUpload(f"{name} is empty: upload a MIDI file (.mid)")
    if size > max_bytes:
        raise BadUpload(f"{name} is too large ({size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB)")
    return Path(path).read_bytes()


def check_lengths(bars, prompt_bars) -> None:
    """The sliders' bounds, enforced for direct callers too (the page's limits are not the pipeline's)."""
    for name, value, low, high in (("bars", bars, 1, MAX_BARS), ("prompt_bars", prompt_bars, 0, MAX_PROMPT_BARS)):
        if not isinstance(value, (int, float)) or not low <= value <= high:  # NaN fails the comparison
            raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")


class MusicApp:
    """The generation behind the page: one pipeline, one flag per browser session for Cancel."""

    def __init__(self, pipe, output_dir: str | Path, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.pipe = pipe
        self.output_dir = Path(output_dir)
        self.max_upload_bytes = max_upload_bytes
        self.audio = find_renderer() is not None and find_soundfont() is not None
        self.stops: dict[str, threading.Event] = {}

    def generate(
        self,
        prompt_path,
        prompt_bars,
        bars,
        preset,
        note_temperature,
        seed,
        scale,
        task="continue",
        fill_bars=(1, 1),
        melody_track="",
        session: str = "",
        progress=None,
    ):
        """-> (status line, piano-roll PNG, WAV or None, MIDI file); a bad upload, a bad setting, a refused task or
        a cancel gives only the status. ``fill_bars`` (first, last) and ``melody_track`` are the tasks' own."""
        stop = self.stops[session] = threading.Event()

        def report(done, total):
            if stop.is_set():
                raise Cancelled
            if progress is not None:
                progress((done, total), desc="Generating", unit="bars")

        prompt = None
        try:
            parameters = task_parameters(task, prompt_bars, bars, fill_bars, melody_track)
            prompt = read_upload(prompt_path, self.max_upload_bytes)
            if prompt is None and task != "continue":
                raise BadUpload(
                    "upload the MIDI file to fill" if task == "infill" else "upload the melody to harmonize"
                )
            [sample] = self.pipe(
                prompt,
                preset=preset,
                note_temperature=float(note_temperature),
                seed=int(seed),
                scale=None if scale == "none" else scale,
                chunk_tokens=CHUNK_TOKENS,
                progress_callback=report,
                **parameters,
            )
        except Cancelled:
            return "Cancelled.", None, None, None
        except (ValueError, OverflowError) as error:  # BadUpload, MidiReadError, a bad setting (int(inf): Overflow)
            message = str(error)
            if prompt is not None:  # name the uploaded file, not "<123 bytes of MIDI>" (a refusal names none)
                message = message.replace(f"<{len(prompt)} bytes of MIDI>", Path(prompt_path).name, 1)
            return f"**Error:** {message}", None, None, None
        finally:
            self.stops.pop(session, None)
        return self.show(sample, prompt_path, int(bars) if task == "continue" else None)

    def cancel(self, session: str = "") -> None:
        if session in self.stops:
            self.stops[session].set()

    def show(self, sample: dict, prompt_path, asked_bars: int | None):
        name = Path(prompt_path).stem if prompt_path else "sample"
        task = "" if sample["task"] == "continue" else f"-{sample['task']}"
        midi = self.output_dir / uuid.uuid4().hex[:8] / f"{name}{task}-seed{sample['seed']}.mid"
        files = render_sample(sample, midi, audio=self.audio)
        return (
            describe(sample, asked_bars),
            str(files["picture"]),
            files["audio"] and str(files["audio"]),
            str(files["midi"]),
        )


def task_parameters(task, prompt_bars, bars, fill_bars, melody_track) -> dict:
    """The pipeline's parameters of the page's task: a continuation's lengths (within the sliders' bounds), the
    bars to fill, or the melody's track (empty: the pipeline's choice); the request checks them."""
    if task == "continue":
        check_lengths(bars, prompt_bars)
        return {"bars": int(bars), "prompt_bars": int(prompt_bars)}
    if task == "infill":
        return {"task": task, "bars": tuple(fill_bars)}
    return {"task": task, "melody_track": str(melody_track or "").strip() or None}


def describe(sample: dict, asked_bars: int | None) -> str:
    """The status line of a sample: what was written (of ``asked_bars``, a continuation's), how many notes, from
    which seed."""
    new_notes = sum(not note["prompt"] for note in sample["notes"])
    given_notes = len(sample["notes"]) - new_notes
    seed = f" (seed {sample['seed']})."
    if sample["task"] == "infill":
        first, last = sample["infill_bars"]
        short = f" ({sample['bars']} of {last - first + 1} bars reached)" if sample["bars"] < last - first + 1 else ""
        return f"Filled bars {first}-{last}{short}: {new_notes} new notes, {given_notes} kept" + seed
    if sample["task"] == "harmonize":
        return f"Harmonized {sample['bars']} bars: {new_notes} new notes under {given_notes} melody notes" + seed
    bars = f"{sample['bars']} of {asked_bars}" if sample["bars"] < asked_bars else str(asked_bars)
    status = f"Generated {bars} bar{'s' * (asked_bars != 1)}, {new_notes} new notes"
    return status + (f" after {given_notes} prompt notes" if given_notes else "") + seed


def build_app(app: MusicApp, title: str):
    """The page (a ``gradio.Blocks``); element ids are what the browser test looks for."""
    import gradio as gr

    def on_generate(
        prompt_path,
        task,
        prompt_bars,
        bars,
        fill_first,
        fill_last,
        melody_track,
        preset,
        note_temperature,
        seed,
        scale,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - Gradio's own idiom: it injects a tracker for this default
    ):
        return app.generate(
            prompt_path,
            prompt_bars,
            bars,
            preset,
            note_temperature,
            seed,
            scale,
            task=task,
            fill_bars=(fill_first, fill_last),
            melody_track=melody_track,
            session=request.session_hash,
            progress=progress,
        )

    def on_cancel(request: gr.Request):
        app.cancel(request.session_hash)

    def on_task(task):  # each task's own controls: a continuation's lengths, the bars to fill, the melody's track
        return (
            [gr.update(visible=task == "continue")] * 2
            + [gr.update(visible=task == "infill")] * 2
            + [gr.update(visible=task == "harmonize")]
        )

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(
            f"# {title}\nContinue the first bars of a MIDI file (or start from nothing), fill some of its bars, or "
            "harmonize a melody (the last two with a model trained for them)."
        )
        with gr.Row():
            with gr.Column():
                task = gr.Radio(TASKS, value="continue", label="Task", elem_id="task")
                prompt = gr.File(
                    label="MIDI file (the prompt, optional; the piece to fill; the melody to harmonize)",
                    file_types=[".mid", ".midi"],
                    type="filepath",
                    elem_id="prompt",
                )
                prompt_bars = gr.Slider(0, MAX_PROMPT_BARS, value=4, step=1, label="Prompt bars", elem_id="prompt-bars")
                bars = gr.Slider(1, MAX_BARS, value=8, step=1, label="Bars to generate", elem_id="bars")
                with gr.Row():
                    fill_first = gr.Number(
                        value=1, precision=0, label="First bar to fill", visible=False, elem_id="fill-first"
                    )
                    fill_last = gr.Number(
                        value=4, precision=0, label="Last bar to fill", visible=False, elem_id="fill-last"
                    )
                melody_track = gr.Textbox(
                    label="Melody track (name or index from 0; empty: the only track, else the highest)",
                    visible=False,
                    elem_id="melody-track",
                )
                preset = gr.Dropdown(list(SAMPLING_PRESETS), value="default", label="Preset", elem_id="preset")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Note temperature", elem_id="temperature")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                scale = gr.Dropdown(SCALES, value="none", label="Scale", elem_id="scale")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", elem_id="cancel")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                picture = gr.Image(label="Piano roll", type="filepath", elem_id="piano-roll", interactive=False)
                audio = gr.Audio(label="Audio", type="filepath", elem_id="audio", interactive=False, visible=app.audio)
                midi = gr.File(label="MIDI", elem_id="midi", interactive=False)
        preset.change(lambda name: sampling_settings(name).note_temperature, preset, temperature)
        task.change(on_task, task, [prompt_bars, bars, fill_first, fill_last, melody_track])
        controls = [prompt, task, prompt_bars, bars, fill_first, fill_last, melody_track]
        generate.click(on_generate, controls + [preset, temperature, seed, scale], [status, picture, audio, midi])
        cancel.click(on_cancel, None, None)
    return page


def launch_kwargs(settings: AppSettings, output_dir: Path) -> dict:
    import gradio as gr

    # system fonts: the default theme would fetch its fonts from the internet
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return dict(
        server_name=settings.host,
        server_port=settings.port,
        ssr_mode=False,
        theme=theme,
        allowed_paths=[str(output_dir)],
        max_file_size=4 * settings.max_upload_bytes,
    )


def run_app(settings: AppSettings, block: bool = True):
    """Load the model, build the page and serve it; returns the running page when ``block`` is False."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    model = settings.model or default_model()
    pipe = load_pipeline(model, settings.linears)
    output_dir = Path(settings.output_dir or tempfile.mkdtemp(prefix="hf_music_xl_app_"))
    app = MusicApp(pipe, output_dir, settings.max_upload_bytes)
    if not app.audio:
        logger.warning("no audio renderer or soundfont: the page shows no audio player (see hf_music_xl.render)")
    page = build_app(app, f"Music continuation with {Path(model).name if Path(model).is_dir() else model}")
    page.queue(default_concurrency_limit=1)  # one generation at a time: the model and the CPU are shared
    page.launch(prevent_thread_lock=not block, **launch_kwargs(settings, output_dir))
    return page


__all__ = ["AppSettings", "MusicApp", "build_app", "read_upload", "run_app"]
