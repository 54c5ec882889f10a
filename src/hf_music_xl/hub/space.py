"""Publish the web app as a Gradio Space that loads a model from the Hub.

    hf-music-xl push-space you/chorale-xl you/chorale-xl-demo [--private]

The Space repository gets, in one commit:

- ``app.py``: runs ``hf_music_xl.app`` for the model (``MODEL_ID`` in the Space's settings overrides it);
- ``hf_music_xl/``: the package files the app imports, since the package is not on PyPI;
- ``requirements.txt``: their runtime dependencies at the versions installed here (Gradio itself comes from
  ``sdk_version`` in the card, as Spaces install it);
- ``README.md``: the Space's card (sdk, app file, the model it uses).

Nothing else is downloaded when the Space runs, except the model from the Hub. Pushing again updates the
Space; package files it no longer needs are deleted.
"""

import ast
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

from .errors import hub_errors

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # hf_music_xl/
ENTRY_MODULES = ("app.py", "__init__.py")  # what the Space runs, and what importing the package runs
# what the package files in the Space import (gradio comes from sdk_version)
REQUIREMENTS = (
    "torch",
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "safetensors",
    "symusic",
    "numpy",
    "matplotlib",
    "midirenderer",
    "pretty_midi",
)

APP_PY = '''"""The hf_music_xl web app for {model_id}, made by `hf-music-xl push-space`."""

import os

from hf_music_xl.app import AppSettings, run_app

run_app(AppSettings(
    model=os.environ.get("MODEL_ID", "{model_id}"),
    host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
    port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
))
'''

CARD = """---
title: {title}
emoji: 🎹
colorFrom: blue
colorTo: yellow
sdk: gradio
sdk_version: {gradio_version}
python_version: "3.11"
app_file: app.py
models:
- {model_id}
pinned: false
short_description: Continue a MIDI file with {model_name}
---

# {title}

Upload a MIDI file (or start from nothing), choose how many bars, a sampling preset, a temperature, a seed and a
scale, and press Generate: the page shows the piano roll, plays the result and offers the MIDI file.

The model is [{model_id}]({model_url}); this Space runs the web app of the `hf_music_xl` package
([app.py](app.py), [hf_music_xl/](hf_music_xl/app.py)).
"""


@dataclass
class SpaceResult:
    space_url: str
    commit_url: str
    changed: bool  # False: the Space already held these files
    deleted: list[str]


def package_files() -> list[Path]:
    """The package's files that ``app.py`` and ``__init__.py`` import, following relative imports into any of its
    folders (with each folder's ``__init__.py``), relative to the package's root."""
    todo, found = [PACKAGE_DIR / name for name in ENTRY_MODULES], set()
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.add(path)
        todo += [folder / "__init__.py" for folder in path.parents if PACKAGE_DIR in folder.parents]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = path.parents[node.level - 1].joinpath(*(node.module or "").split("."))
                candidates = [base.with_suffix(".py"), base / "__init__.py"]
                candidates += [base / f"{alias.name}.py" for alias in node.names]  # from . import encoding
                todo += [candidate for candidate in candidates if candidate.is_file()]
    return sorted(path.relative_to(PACKAGE_DIR) for path in found)


def requirements() -> str:
    return "".join(f"{name}=={importlib.metadata.version(name).split('+')[0]}\n" for name in REQUIREMENTS)  # no +cpu


def space_files(model_id: str, space_id: str) -> dict[str, bytes]:
    """path in the Space -> content."""
    name = space_id.split("/")[-1]
    card = CARD.format(
        title=name,
        model_id=model_id,
        model_name=model_id.split("/")[-1],
        model_url=f"{constants.ENDPOINT}/{model_id}",
        gradio_version=importlib.metadata.version("gradio"),
    )
    files = {
        "README.md": card.encode(),
        "app.py": APP_PY.format(model_id=model_id).encode(),
        "requirements.txt": requirements().encode(),
    }
    files.update({f"hf_music_xl/{path.as_posix()}": (PACKAGE_DIR / path).read_bytes() for path in package_files()})
    return files


def push_space(model_id: str, space_id: str, *, private: bool | None = None, token: str | None = None) -> SpaceResult:
    """Create or update the Gradio Space ``space_id`` running the app for the Hub model ``model_id`` (which must
    exist and be readable). Hub problems raise ``HubAccessError`` with one line."""
    api = HfApi(token=token)
    with hub_errors(model_id):
        api.whoami()
        api.model_info(model_id)  # the Space would fail at start without it: say so now
    with hub_errors(space_id):
        url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        space_id = url.repo_id
        before = api.repo_info(space_id, repo_type="space")
        files = space_files(model_id, space_id)
        stale = sorted(
            s.rfilename
            for s in before.siblings or []
            if s.rfilename.startswith("hf_music_xl/") and s.rfilename not in files
        )
        operations = [CommitOperationAdd(path, content) for path, content in files.items()]
        operations += [CommitOperationDelete(path) for path in stale]
        commit = api.create_commit(
            space_id, operations, repo_type="space", commit_message=f"hf_music_xl app for {model_id}"
        )
    return SpaceResult(str(url), commit.commit_url, commit.oid != before.sha, stale)


def describe_space(result: SpaceResult) -> str:
    if not result.changed:
        return f"{result.space_url} already runs this app: no new commit"
    return f"pushed the Space {result.space_url}: {result.commit_url}"
