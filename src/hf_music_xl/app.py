"""The web app: continue a MIDI file (or start from nothing) in the browser, with Gradio.

    pip install 'hf_music_xl[app]'
    hf-music-xl app runs/tiny/final                 # or a Hub id; http://127.0.0.1:7860
    hf-music-xl app you/chorale-xl --host 0.0.0.0 --port 8080

Choose a prompt (upload a MIDI file, or none), bars, preset, temperature, seed and scale; Generate shows the piano
roll, plays the audio (when a renderer and a local soundfont exist, see render.py) and offers the MIDI file.
Progress is shown by bar; Cancel stops at the next chunk of tokens. A bad upload (not MIDI, empty, too large)
gives one line in the page and the server goes on. The same app runs in a Space (``hf-music-xl push-space``).
"""

import logging
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .generate import load_pipeline
from .models.music_xl.sampling_music_xl import MAX_PROMPT_BARS, SAMPLING_PRESETS, sampling_settings
from .release import default_model, model_field
from .render import find_renderer, find_soundfont, render_outputs

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 1_000_000  # a MIDI file of a whole symphony is a few hundred KB
MAX_BARS = 64
CHUNK_TOKENS = 32  # tokens per generate() call: how often progress moves and Cancel is noticed
SCALES = ["none"] + [
    f"{tonic} {mode}"
    for mode in ("major", "minor")
    for tonic in ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
]


class Cancelled(Exception):
    """Raised in the progress callback when the person pressed Cancel."""


class BadUpload(ValueError):
    """An upload that cannot be a prompt; the message is shown in the page."""


@dataclass
class AppSettings:
    """Everything ``hf-music-xl app`` needs; each field is a flag, ``model`` the positional argument."""

    model: str = model_field()
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
        self, prompt_path, prompt_bars, bars, preset, note_temperature, seed, scale, session: str = "", progress=None
    ):
        """-> (status line, piano-roll PNG, WAV or None, MIDI file); a bad upload or a cancel gives only the status."""
        stop = self.stops[session] = threading.Event()

        def report(done, total):
            if stop.is_set():
                raise Cancelled
            if progress is not None:
                progress((done, total), desc="Generating", unit="bars")

        prompt = None
        try:
            check_lengths(bars, prompt_bars)
            prompt = read_upload(prompt_path, self.max_upload_bytes)
            [sample] = self.pipe(
                prompt,
                bars=int(bars),
                prompt_bars=int(prompt_bars),
                preset=preset,
                note_temperature=float(note_temperature),
                seed=int(seed),
                scale=None if scale == "none" else scale,
                chunk_tokens=CHUNK_TOKENS,
                progress_callback=report,
            )
        except Cancelled:
            return "Cancelled.", None, None, None
        except (ValueError, OverflowError) as error:  # BadUpload, MidiReadError, a bad setting (int(inf): Overflow)
            message = str(error)
            if prompt is not None:  # name the uploaded file, not "<123 bytes of MIDI>"
                message = f"{Path(prompt_path).name}: " + message.removeprefix(f"<{len(prompt)} bytes of MIDI>: ")
            return f"**Error:** {message}", None, None, None
        finally:
            self.stops.pop(session, None)
        return self.show(sample, prompt_path, int(bars))

    def cancel(self, session: str = "") -> None:
        if session in self.stops:
            self.stops[session].set()

    def show(self, sample: dict, prompt_path, asked_bars: int):
        name = Path(prompt_path).stem if prompt_path else "sample"
        stem = self.output_dir / uuid.uuid4().hex[:8] / f"{name}-seed{sample['seed']}"
        files = render_outputs(sample["ids"], sample["prompt_length"], stem, audio=self.audio)
        new_notes = sum(not note["prompt"] for note in sample["notes"])
        prompt_notes = len(sample["notes"]) - new_notes
        bars = f"{sample['bars']} of {asked_bars}" if sample["bars"] < asked_bars else str(asked_bars)
        status = f"Generated {bars} bar{'s' * (asked_bars != 1)}, {new_notes} new notes"
        status += f" after {prompt_notes} prompt notes" if prompt_notes else ""
        return (
            status + f" (seed {sample['seed']}).",
            str(files["picture"]),
            files["audio"] and str(files["audio"]),
            str(files["midi"]),
        )


def build_app(app: MusicApp, title: str):
    """The page (a ``gradio.Blocks``); element ids are what the browser test looks for."""
    import gradio as gr

    def on_generate(
        prompt_path,
        prompt_bars,
        bars,
        preset,
        note_temperature,
        seed,
        scale,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - Gradio's own idiom: it injects a tracker for this default
    ):
        return app.generate(
            prompt_path, prompt_bars, bars, preset, note_temperature, seed, scale, request.session_hash, progress
        )

    def on_cancel(request: gr.Request):
        app.cancel(request.session_hash)

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}\nContinue the first bars of a MIDI file, or start from nothing.")
        with gr.Row():
            with gr.Column():
                prompt = gr.File(
                    label="Prompt (MIDI file, optional)",
                    file_types=[".mid", ".midi"],
                    type="filepath",
                    elem_id="prompt",
                )
                prompt_bars = gr.Slider(0, MAX_PROMPT_BARS, value=4, step=1, label="Prompt bars", elem_id="prompt-bars")
                bars = gr.Slider(1, MAX_BARS, value=8, step=1, label="Bars to generate", elem_id="bars")
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
        generate.click(
            on_generate, [prompt, prompt_bars, bars, preset, temperature, seed, scale], [status, picture, audio, midi]
        )
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
    pipe = load_pipeline(model)
    output_dir = Path(settings.output_dir or tempfile.mkdtemp(prefix="hf_music_xl_app_"))
    app = MusicApp(pipe, output_dir, settings.max_upload_bytes)
    if not app.audio:
        logger.warning("no audio renderer or soundfont: the page shows no audio player (see hf_music_xl.render)")
    page = build_app(app, f"Music continuation with {Path(model).name if Path(model).is_dir() else model}")
    page.queue(default_concurrency_limit=1)  # one generation at a time: the model and the CPU are shared
    page.launch(prevent_thread_lock=not block, **launch_kwargs(settings, output_dir))
    return page


__all__ = ["AppSettings", "MusicApp", "build_app", "read_upload", "run_app"]
