"""The Hugging Face tokenizers: slow and fast agree, HF features behave, MIDI in and out, saved copy loads."""

import filecmp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from hf_music_xl import MusicXLTokenizer, MusicXLTokenizerFast
from hf_music_xl.models.music_xl import encoding as E

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "tokenizer"


@pytest.fixture(scope="module", params=["slow", "fast"])
def tokenizer(request):
    return MusicXLTokenizer() if request.param == "slow" else MusicXLTokenizerFast()


def test_slow_and_fast_give_identical_output_on_real_pieces(chorale_midi_files):
    slow, fast = MusicXLTokenizer(), MusicXLTokenizerFast()
    texts = [slow.decode(slow.encode_midi(path)) for path in chorale_midi_files]
    assert [fast.decode(fast.encode_midi(path)) for path in chorale_midi_files] == texts
    batch = dict(padding=True, truncation=True, max_length=300)
    assert slow(texts, **batch)["input_ids"] == fast(texts, **batch)["input_ids"]
    assert slow(texts, **batch)["attention_mask"] == fast(texts, **batch)["attention_mask"]
    for text in texts:
        ids = slow(text)["input_ids"]
        assert fast(text)["input_ids"] == ids == slow.encode_midi(chorale_midi_files[texts.index(text)])
        assert slow.decode(ids, skip_special_tokens=True) == fast.decode(ids, skip_special_tokens=True)


def test_hf_features(tokenizer):
    assert len(tokenizer) == E.VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    batch = tokenizer(["xxbos xxpad n60 d4 xxsep d4 n62 d4", "xxbos xxpad n61 d2"], padding=True)
    assert batch["input_ids"] == [[0, 1, 69, 141, 8, 141, 71, 141], [0, 1, 70, 139, 1, 1, 1, 1]]
    assert batch["attention_mask"][1] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert tokenizer("xxbos xxpad n60 d4 n62 d4", truncation=True, max_length=4)["input_ids"] == [0, 1, 69, 141]
    tensors = tokenizer(["n60 d4", "n60 d4 n61 d4"], padding=True, return_tensors="pt")["input_ids"]
    assert tensors.shape == (2, 4) and tensors.dtype == torch.long
    # xxsep is not special: skipping specials keeps the timing.
    assert tokenizer.decode([0, 1, 69, 141, 8, 141, 2], skip_special_tokens=True) == "n60 d4 xxsep d4"
    assert tokenizer("n60 hello d4")["input_ids"] == [69, E.UNK_ID, 141]
    assert tokenizer.convert_ids_to_tokens([8, 9, 297]) == ["xxsep", "n0", "d160"]


def test_midi_methods(tokenizer, chorale_midi_files, tmp_path):
    path = chorale_midi_files[0]
    ids = tokenizer.encode_midi(path)
    assert ids == E.encode_midi(path).tolist() and ids[:2] == [0, 1]
    assert tokenizer.encode_midi(path, add_eos=True) == ids + [E.EOS_ID]
    for form in (ids, np.array(ids), torch.tensor([ids])):
        assert tokenizer.beat_positions(form) == E.position_features(ids).tolist()
        assert tokenizer.decode_midi(form).note_num() == len(E.ids_to_notes(ids))
    written = tokenizer.save_midi(torch.tensor(ids), tmp_path / "out" / "piece.mid")
    assert tokenizer.encode_midi(written) == ids
    with pytest.raises(E.InvalidTokenError):
        tokenizer.decode_midi([0, 1, 141], strict=True)
    with pytest.raises(E.MidiReadError, match="garbage.mid"):
        (tmp_path / "garbage.mid").write_bytes(b"MThd but not really")
        tokenizer.encode_midi(tmp_path / "garbage.mid")


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    for cls in (MusicXLTokenizer, MusicXLTokenizerFast):
        loaded = cls.from_pretrained(tmp_path)
        assert loaded("xxbos xxpad n60 d4")["input_ids"] == [0, 1, 69, 141]
        assert loaded.get_vocab() == E.TOKEN_TO_ID and loaded.steps_per_beat == 4


def test_a_vocabulary_saved_before_time_signatures_encodes_as_before(tokenizer, chorale_midi_files, tmp_path):
    """Tokenizer directories saved before time signatures (ids 0..298) load and write no time signature token,
    so the models saved with them get only ids they know."""
    import json

    legacy = {token: index for token, index in E.TOKEN_TO_ID.items() if index < E.LEGACY_VOCAB_SIZE}
    (tmp_path / "vocab.json").write_text(json.dumps(legacy))
    for old in (MusicXLTokenizer(vocab_file=str(tmp_path / "vocab.json")), MusicXLTokenizerFast(vocab=legacy)):
        assert not old.meter and old.vocab_size == 299 and old("ts3/4")["input_ids"] == [E.UNK_ID]
        ids = old.encode_midi(chorale_midi_files[0])
        assert ids == E.encode_midi(chorale_midi_files[0], meter=False).tolist() and max(ids) < 299
        assert old.beat_positions(ids) == E.position_features(ids, meter=False).tolist()
    assert tokenizer.meter and tokenizer.encode_midi(chorale_midi_files[0])[2] == E.TOKEN_TO_ID["ts4/4"]


def test_wrong_vocab_file_is_refused(tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_text('{"xxbos": 0, "n60": 1}')
    with pytest.raises(ValueError, match="does not match"):
        MusicXLTokenizer(vocab_file=str(bad))


@pytest.mark.slow
def test_saved_tokenizer_is_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "save_tokenizer.py"), "--output", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(os.listdir(SAVED)), "tokenizer/ is stale: run python scripts/save_tokenizer.py"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, SAVED, names, shallow=False)
    assert not mismatch and not errors, f"tokenizer/ is stale ({mismatch}): run python scripts/save_tokenizer.py"


def test_auto_tokenizer_with_the_package_installed():
    tokenizer = AutoTokenizer.from_pretrained(SAVED)  # registered classes: no remote code needed
    assert type(tokenizer) is MusicXLTokenizerFast
    assert tokenizer("xxbos xxpad n60 d4")["input_ids"] == [0, 1, 69, 141]


# A fresh interpreter in which `import hf_music_xl` fails, as for a user who only has the saved directory.
WITHOUT_PACKAGE = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import helpers; helpers.block_package()\n"
)


@pytest.mark.slow
def test_auto_tokenizer_with_remote_code_without_the_package(chorale_midi_files, tmp_path):
    script = WITHOUT_PACKAGE + textwrap.dedent(
        f"""
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(SAVED)!r}, trust_remote_code=True)
        assert type(tokenizer).__name__ == "MusicXLTokenizerFast", type(tokenizer)
        assert "hf_music_xl" not in type(tokenizer).__module__
        ids = tokenizer.encode_midi({str(chorale_midi_files[0])!r})
        print(len(ids), tokenizer.decode_midi(ids).note_num())
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = E.encode_midi(chorale_midi_files[0])
    assert result.stdout.split() == [str(len(expected)), str(len(E.ids_to_notes(expected)))]
