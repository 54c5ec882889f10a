"""Tokenizer for the musicautobot note/duration/SEP vocabulary (slow, pure Python), plus MIDI in and out.

The text form is whitespace separated tokens, ``"xxbos xxpad n60 d4 n52 d8 xxsep d4 ..."``, so every
Hugging Face tokenizer feature (``__call__``, padding with ``xxpad``, truncation, ``decode``) works as usual.
``xxsep`` is an ordinary token on purpose: ``decode(..., skip_special_tokens=True)`` must not erase the timing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import symusic
from transformers import PreTrainedTokenizer

from .encoding import (
    LEGACY_VOCAB_SIZE,
    STEPS_PER_BEAT,
    TASK_OFFSET,
    TOKEN_TO_ID,
    decode_ids,
    encode_midi,
    position_features,
)

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json"}
EARLIER_SIZES = (TASK_OFFSET, LEGACY_VOCAB_SIZE)  # vocabularies saved before the task tokens, before time signatures


class MidiTokenizerMixin:
    """MIDI in and out, shared by the slow and the fast tokenizer (both have ``steps_per_beat`` and ``meter``: the
    vocabulary has time signature tokens, as every one but those saved before them)."""

    steps_per_beat: int
    meter: bool

    def encode_midi(self, source, add_eos: bool = False, **limits) -> list[int]:
        """Token ids of a MIDI file path, MIDI bytes or ``symusic.Score``, starting ``xxbos xxpad`` and its time
        signature. Unreadable input or a piece without notes raises ``encoding.MidiReadError`` (a ValueError
        naming the file); ``limits`` are ``max_bytes``, ``max_notes``, ``max_tokens``, ``max_rest_steps`` of
        ``encoding.encode_midi``."""
        return encode_midi(
            source, steps_per_beat=self.steps_per_beat, add_eos=add_eos, meter=self.meter, **limits
        ).tolist()

    def decode_midi(self, ids, strict: bool = False) -> symusic.Score:
        """A ``symusic.Score`` from any ids (list, numpy array or tensor); invalid tokens are skipped, or with
        ``strict=True`` the first one raises ``encoding.InvalidTokenError`` naming its position."""
        return decode_ids(_as_array(ids), strict=strict, steps_per_beat=self.steps_per_beat)

    def save_midi(self, ids, path: str | os.PathLike, strict: bool = False) -> Path:
        """Decode ``ids`` and write a ``.mid`` file; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.decode_midi(ids, strict=strict).dump_midi(str(path))
        return path

    def beat_positions(self, ids) -> list[list[int]]:
        """The model's position input of each token, (bar, beat within the bar, step within the beat), bars as the
        time signatures lay them out from the last ``xxbos`` (a vocabulary without them: (bar, step within a
        16-step bar, 0)); the rule of ``MusicXLModel``'s ``compute_positions``."""
        return position_features(_as_array(ids), self.meter, self.steps_per_beat).tolist()


def _as_array(ids) -> np.ndarray:
    if hasattr(ids, "detach"):  # a torch tensor, without importing torch here
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids, dtype=np.int64).reshape(-1)


class MusicXLTokenizer(MidiTokenizerMixin, PreTrainedTokenizer):
    """Word-level tokenizer over the fixed musicautobot vocabulary (the ids of ``encoding.VOCAB``).

    Args:
        vocab_file: ``vocab.json`` (token -> id); it must match ``encoding.VOCAB``, whose ids the MIDI
            encoder writes, or its first 299 ids (saved before time signatures). Defaults to the built-in one.
        steps_per_beat: grid steps per quarter note used by ``encode_midi``/``decode_midi`` (4 = 16th notes).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        steps_per_beat: int = STEPS_PER_BEAT,
        bos_token: str = "xxbos",
        eos_token: str = "xxeos",
        pad_token: str = "xxpad",
        unk_token: str = "xxunk",
        **kwargs,
    ):
        # The vocabulary must exist before super().__init__, which looks the special tokens up.
        self.encoder = load_vocab(vocab_file)
        self.decoder = {index: token for token, index in self.encoder.items()}
        self.steps_per_beat = steps_per_beat
        self.meter = len(self.encoder) > LEGACY_VOCAB_SIZE
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            unk_token=unk_token,
            steps_per_beat=steps_per_beat,
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.encoder)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return text.split()

    def _convert_token_to_id(self, token: str) -> int:
        return self.encoder.get(token, self.encoder[str(self.unk_token)])

    def _convert_id_to_token(self, index: int) -> str:
        return self.decoder.get(index, str(self.unk_token))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        return (save_vocab_json(save_directory, filename_prefix, self.encoder),)


def save_vocab_json(save_directory: str, filename_prefix: str | None = None, vocab: dict | None = None) -> str:
    """Write the vocabulary (default: the full one) as ``vocab.json`` (token -> id, in id order)."""
    name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
    path = os.path.join(save_directory, name)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(dict(sorted((vocab or TOKEN_TO_ID).items(), key=lambda item: item[1])), file, indent=1)
        file.write("\n")
    return path


def check_vocab(vocab: dict, where: str) -> dict[str, int]:
    """``vocab`` if it is the encoder's fixed layout, or its first 379 ids (saved before the task tokens) or 299
    (before time signatures); a different map would silently shift every id the MIDI encoder writes."""
    earlier = [{token: index for token, index in TOKEN_TO_ID.items() if index < size} for size in EARLIER_SIZES]
    if vocab not in [TOKEN_TO_ID] + earlier:
        raise ValueError(
            f"{where} does not match the vocabulary of hf_music_xl.models.music_xl.encoding (ids 0..382, or 0..378 "
            "saved before the task tokens, or 0..298 before time signatures)"
        )
    return dict(vocab)


def load_vocab(vocab_file: str | None) -> dict[str, int]:
    """The token -> id map of a ``vocab.json`` (checked, ``check_vocab``), or the full vocabulary."""
    if vocab_file is None:
        return dict(TOKEN_TO_ID)
    with open(vocab_file, encoding="utf-8") as file:
        return check_vocab(json.load(file), vocab_file)
