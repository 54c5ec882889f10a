"""The released model: where it lives, and the model every command uses when none is named.

The release is trained by ``scripts/train_release.py`` and committed in the repository under ``models/chorale-xl``
(the Hub cannot be reached from where it was trained); once pushed, it is also ``RELEASE_REPO_ID`` on the Hub.
``default_model()`` is the folder when this package runs from its source tree (an editable install), else the
Hub id, which ``from_pretrained`` finds in the local cache or downloads.
"""

from __future__ import annotations

import os
from dataclasses import field
from pathlib import Path

RELEASE_NAME = "chorale-xl"
RELEASE_DIR = Path(__file__).resolve().parents[2] / "models" / RELEASE_NAME  # the repository's models/ folder
RELEASE_REPO_ID = f"hf-music-xl/{RELEASE_NAME}"
MODEL_ENV = "HF_MUSIC_XL_MODEL"  # names another default model (a folder or a Hub id)


def model_field():
    """The ``model`` field of a command's settings: the optional positional argument, empty for the release."""
    help_text = "a model directory or Hub id; default: the released model"
    return field(default="", metadata={"help": help_text, "positional": True, "optional": True})


def default_model() -> str:
    """The model a command uses when none is named: ``$HF_MUSIC_XL_MODEL``, else the released model's folder in
    the source tree, else its Hub id."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    if (RELEASE_DIR / "config.json").is_file():
        return str(RELEASE_DIR)
    return RELEASE_REPO_ID


# ----------------------------------------------------------------------------------------------------------
# The release's model card: the package's card, then what only a release has

DATA_NOTE = (
    "The Bach chorales of the music21 corpus, and nothing else: their encodings (Margaret Greentree's, distributed "
    "with music21 by permission) carry no restriction of use, and the music is in the public domain. music21's "
    "Palestrina encodings forbid derived electronic formats and its Essen folk songs are for non-commercial use, "
    "so a model trained on them could not be shared freely; the other folk collections (O'Neill's, Ryan's) are "
    "one-voice dance tunes, another style. Each training piece is transposed on the fly (half the time, by up to "
    "an octave's worth of keys), so the model writes in every key."
)


def release_sections(model_dir: Path) -> str:
    """Markdown for the release: how it was made, the data and why, its storage and its measured quality (from
    ``storage.json`` and ``release_report.json`` in ``model_dir``, where present)."""
    import json

    lines = [
        "## The release",
        "",
        "The released model of `hf_music_xl`: every command of the package uses it when no model is named. It "
        "was trained by `make release-model` (`scripts/train_release.py`, seed 0, one thread: the same command "
        "gives the same weights on the same machine type and thread count), keeping the checkpoint with the lowest "
        "NLL per note on a fixed subset "
        "of the validation chorales, and measured by `scripts/release_report.py`.",
        "",
        f"Training data: {DATA_NOTE}",
    ]
    storage_file = model_dir / "storage.json"
    if storage_file.is_file():
        storage = json.loads(storage_file.read_text())
        lines += [
            "",
            f"Weights are stored in {storage['dtype']} and run in float32: rounding them to bf16 changes the "
            f"validation NLL per note from {storage['nll_per_note_fp32']:.5f} to {storage['nll_per_note_bf16']:.5f} "
            f"nats ({storage['relative_change']:.2e} relative; `storage.json`).",
        ]
    report_file = model_dir / "release_report.json"
    if report_file.is_file():
        lines += ["", "## Measured quality", "", json.loads(report_file.read_text())["markdown"]]
    return "\n".join(lines) + "\n"


def write_release_card(model_dir: str | Path, repo_id: str = RELEASE_REPO_ID) -> Path:
    """``model_dir/README.md``: the package's model card for ``repo_id`` with the release's sections after its
    evaluation; ``hf-music-xl push`` publishes it as it is."""
    from .hub.model_card import build_model_card

    model_dir = Path(model_dir)
    card = str(build_model_card(model_dir, repo_id, datasets=[]))
    head, marker, tail = card.partition("\n## How to use")
    text = head.rstrip() + "\n\n" + release_sections(model_dir) + marker + tail
    (model_dir / "README.md").write_text(text, encoding="utf-8")
    return model_dir / "README.md"
