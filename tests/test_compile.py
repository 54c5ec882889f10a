"""The training path's attention: its query blocks equal the whole attention, `torch.compile` of it equals eager
(loss and gradients), a compile that fails falls back to eager with one warning, and `hf-music-xl train
--compile/--no-compile` (neither: on with CUDA, off on CPU)."""

import logging
import shutil

import pytest
import torch
from helpers import tiny_model
from test_train_flags import train_command

from hf_music_xl.models.music_xl import attention_music_xl
from hf_music_xl.training import compiling


def batch_with_everything():
    """Three rows over three segments of the tiny model: left padding in row 0, a second piece in row 1."""
    ids = torch.randint(9, 298, (3, 300), generator=torch.Generator().manual_seed(0))
    ids[:, :2] = torch.tensor([0, 1])  # xxbos xxpad
    ids[1, 150:152] = torch.tensor([0, 1])  # a second piece
    mask = torch.ones_like(ids)
    mask[0, :20] = 0
    return ids, mask


def training_step(model, output_attentions=False):
    """(loss, gradients) of one training forward + backward, the window mask drawn from the same seed."""
    ids, mask = batch_with_everything()
    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = model(ids, attention_mask=mask, labels=ids, output_attentions=output_attentions).loss
    loss.backward()
    return loss.detach(), [parameter.grad for parameter in model.parameters()]


def assert_same_step(expected, got, atol):
    (expected_loss, expected_grads), (loss, grads) = expected, got
    assert torch.allclose(loss, expected_loss, atol=atol)
    for expected_grad, grad in zip(expected_grads, grads, strict=True):
        assert torch.allclose(grad, expected_grad, atol=atol)


@pytest.mark.parametrize("mask_p", [0.0, 1.0])  # causal, and musicautobot's window mask
def test_query_blocks_equal_the_whole_attention(mask_p):
    model = tiny_model(mask_p=mask_p)
    whole = training_step(model, output_attentions=True)  # with the probabilities: all queries over all keys
    assert_same_step(whole, training_step(model), atol=1e-6)


def a_compiler_is_here():
    return shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.mark.slow
@pytest.mark.skipif(not a_compiler_is_here(), reason="no C++ compiler: torch.compile (inductor) cannot build on CPU")
def test_the_compiled_training_step_equals_eager(monkeypatch):
    monkeypatch.setattr(attention_music_xl, "_compiled_attention", None)
    torch._dynamo.reset()
    eager = training_step(tiny_model())
    compiled_model = tiny_model()
    compiled_model.compile_training_attention()
    compiled = training_step(compiled_model)
    assert attention_music_xl._compiled_attention is not attention_music_xl.relative_attention  # no fallback
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert_same_step(eager, compiled, atol=1e-5)


def test_a_compile_that_fails_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    def no_compiler(function, **options):
        def fails(*args):
            raise RuntimeError("InductorError: no working C++ compiler found\nmore of the trace")

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(attention_music_xl, "_compiled_attention", None)
    eager = training_step(tiny_model())
    model = tiny_model()
    model.compile_training_attention()
    with caplog.at_level(logging.WARNING):
        first, second = training_step(model), training_step(model)
    assert_same_step(eager, first, atol=0)
    assert_same_step(eager, second, atol=0)
    warnings = [record for record in caplog.records if "torch.compile of the attention failed" in record.message]
    assert len(warnings) == 1 and "no working C++ compiler found" in warnings[0].message


def test_compile_is_off_on_cpu_and_on_with_cuda_unless_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compiling.resolve_compile(None) is False
    assert compiling.resolve_compile(True) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compiling.resolve_compile(None) is True
    assert compiling.resolve_compile(False) is False


@pytest.mark.parametrize("flag, compiled", [("--compile", True), ("--no-compile", False)])
def test_the_train_flag_compiles_the_training_attention(chorale_corpus_dir, tmp_path, monkeypatch, flag, compiled):
    calls = []

    def recording_compiler(function, **options):  # stands for torch.compile: records, then runs eager
        def run(*args):
            calls.append(args[0].shape)
            return function(*args)

        return run

    monkeypatch.setattr(torch, "compile", recording_compiler)
    monkeypatch.setattr(attention_music_xl, "_compiled_attention", None)
    train_command(chorale_corpus_dir, tmp_path / "run", flag, "--max-steps", "2")
    assert bool(calls) is compiled
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
