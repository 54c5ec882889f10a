"""Checkpoints of a training run: written aside and renamed into place, checked before a resume, no pickles.

- ``publish_directory``: a fully written directory goes into place with one rename (the previous one moved aside
  first), after every file and the directories are flushed to disk, so a kill never leaves a half-written
  ``checkpoint-N`` or ``final/``;
- ``checkpoint_problem`` / ``resumable_checkpoint``: ``--resume`` takes the newest checkpoint whose every file the
  Trainer loads is there and readable (torch files loaded with ``weights_only=True``), and sets incomplete ones aside
  with the reason;
- ``write_training_args``: the training arguments as JSON instead of the Trainer's pickled ``training_args.bin``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

STAGING_DIR = "_saving"  # in OUTPUT_DIR; the Trainer's Hub upload of OUTPUT_DIR skips names starting with "_"
INCOMPLETE_DIR = "_incomplete"
TRAINING_ARGS_JSON = "training_args.json"
STREAM_MEMORY = "stream_memory-rank{}.safetensors"  # in a checkpoint: one process's stream memory


def checkpoint_max_steps(checkpoint: str) -> int:
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["max_steps"])


def write_training_args(folder, args: TrainingArguments) -> None:
    """``training_args.json`` in place of the Trainer's pickled ``training_args.bin`` (which nothing reads)."""
    folder = Path(folder)
    (folder / "training_args.bin").unlink(missing_ok=True)
    (folder / TRAINING_ARGS_JSON).write_text(args.to_json_string() + "\n")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the directories themselves to disk (a rename is atomic, but only
    durable across a power cut once the data it points to is on disk)."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        _fsync(path)


def publish_directory(staged: Path, target: Path) -> None:
    """Put a fully written directory at ``target`` with one rename. An existing ``target`` (the same step saved
    again after a resume) is moved aside first and deleted after; a kill in between leaves no ``target``."""
    _fsync_tree(staged)
    replaced = None
    if target.exists():
        replaced = staged.parent / f"replaced-{target.name}"
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(target, replaced)
    os.replace(staged, target)
    _fsync(target.parent)  # the rename itself
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def checkpoint_problem(checkpoint) -> str | None:
    """What keeps a Trainer checkpoint from resuming exactly, or None if it is complete: the trainer state, the
    config, the weights (safetensors, header and size checked), optimizer, scheduler and RNG state (loaded with
    ``weights_only=True``) must all be there and readable."""
    from safetensors import safe_open
    from transformers.trainer_pt_utils import safe_globals

    folder = Path(checkpoint)
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
        expected_step = int(folder.name.rsplit("-", 1)[-1])
        if state.get("global_step") != expected_step:
            return f"trainer_state.json is at step {state.get('global_step')}, not {expected_step}"
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError as error:
        return f"{Path(error.filename).name} is missing"
    except (ValueError, KeyError) as error:
        return f"unreadable JSON: {error}"
    if (folder / "model.safetensors.index.json").exists():
        weights = sorted(
            {
                folder / shard
                for shard in json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()
            }
        )
    else:
        weights = [folder / "model.safetensors"]
    torch_files = [folder / "optimizer.pt", folder / "scheduler.pt"]
    rng_files = sorted(folder.glob("rng_state*.pth"))
    if not rng_files:
        return "rng_state.pth is missing"
    memory_files = sorted(folder.glob(STREAM_MEMORY.format("*")))
    for path in weights + torch_files + rng_files + memory_files:
        if not path.is_file():
            return f"{path.name} is missing"
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as weights_file:
                    weights_file.keys()
            else:
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # noqa: BLE001 - any failure to read means the checkpoint is unusable
            return f"{path.name} is unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    return None


def resumable_checkpoint(output_dir, set_aside: bool = True) -> str | None:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (None if there is none). Newer incomplete ones are
    reported and, with ``set_aside``, moved to ``OUTPUT_DIR/_incomplete/`` so that later saves and rotations do
    not mix with them."""
    folder = Path(output_dir)
    numbered = [
        (int(path.name.rsplit("-", 1)[1]), path)
        for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()
    ]
    for _, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        where = ""
        if set_aside:
            aside = folder / INCOMPLETE_DIR / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(exist_ok=True)
            os.replace(path, aside)
            where = f"; moved to {aside}"
        logger.warning("--resume: %s is incomplete (%s)%s; trying the checkpoint before it", path, problem, where)
    return None
