"""Fast tokenizer for the musicautobot vocabulary: a ``tokenizers`` WordLevel model over whitespace-split
tokens, with the same ids and behaviour as ``MusicXLTokenizer`` and the same MIDI methods."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from .encoding import LEGACY_VOCAB_SIZE, STEPS_PER_BEAT
from .tokenization_music_xl import MidiTokenizerMixin, MusicXLTokenizer, check_vocab, load_vocab, save_vocab_json


class MusicXLTokenizerFast(MidiTokenizerMixin, PreTrainedTokenizerFast):
    """``MusicXLTokenizer`` backed by the Rust ``tokenizers`` library (saved as ``tokenizer.json``).

    Args:
        vocab: token -> id map, or a ``vocab.json`` path (``from_pretrained`` passes one); must match
            ``encoding.VOCAB`` or its first 299 ids (saved before time signatures). Defaults to the built-in one.
        steps_per_beat: grid steps per quarter note for ``encode_midi``/``decode_midi`` (4 = 16th notes).
    """

    vocab_files_names = {"vocab_file": "vocab.json", "tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    slow_tokenizer_class = MusicXLTokenizer

    def __init__(
        self,
        vocab: dict[str, int] | str | None = None,
        vocab_file: str | None = None,
        steps_per_beat: int = STEPS_PER_BEAT,
        bos_token: str = "xxbos",
        eos_token: str = "xxeos",
        pad_token: str = "xxpad",
        unk_token: str = "xxunk",
        **kwargs,
    ):
        # from_pretrained passes the vocabulary of tokenizer.json as a dict, or the path of a slow vocab.json.
        if isinstance(vocab, dict):
            vocab = check_vocab(vocab, "the vocabulary")
        else:
            vocab = load_vocab(vocab if isinstance(vocab, str) else vocab_file)
        kwargs.pop("tokenizer_file", None)  # always rebuilt from the fixed vocabulary: nothing to drift
        self._tokenizer = Tokenizer(WordLevel(vocab, unk_token=str(unk_token)))
        self._tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        self._tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
        self.steps_per_beat = steps_per_beat
        self.meter = len(vocab) > LEGACY_VOCAB_SIZE
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            unk_token=unk_token,
            steps_per_beat=steps_per_beat,
            **kwargs,
        )

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        # tokenizer.json for the fast tokenizer, and vocab.json so that use_fast=False loads the same directory.
        file_names = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        return file_names + (save_vocab_json(save_directory, filename_prefix, self.get_vocab()),)
