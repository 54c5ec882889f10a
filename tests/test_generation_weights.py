"""Linear weights stored in bfloat16 for sampling: `store_linears_in`, `for_generation` and `--linears`."""

import pytest
import torch
from helpers import BOS, PAD, SEP, dur, note, tiny_model

from hf_music_xl import generate as generate_module
from hf_music_xl.cli import main
from hf_music_xl.training import precision

PROMPTS = torch.tensor(
    [
        [BOS, PAD, note(60), dur(4), note(55), dur(8), SEP, dur(4), note(62), dur(4)],
        [BOS, PAD, note(67), dur(2), SEP, dur(2), note(69), dur(2), SEP, dur(2)],
    ]
)
PROJECTIONS = ("qkv_proj", "position_proj", "out_proj", "ff_in", "ff_out")


def bf16_parameters(model):
    return {name for name, parameter in model.named_parameters() if parameter.dtype == torch.bfloat16}


def test_bf16_linears_leave_the_rest_float32_and_change_the_logits_little():
    model = tiny_model(mem_len=8, segment_len=16)
    with torch.no_grad():
        reference = model(PROMPTS).logits
        model.store_linears_in(torch.bfloat16)
        logits = model(PROMPTS).logits
    stored = bf16_parameters(model)
    assert stored and all(name.split(".")[-2] in PROJECTIONS for name in stored)  # only the blocks' projections
    assert len(stored) == sum(name.split(".")[-2] in PROJECTIONS for name, _ in model.named_parameters())
    assert model.linears_dtype() == torch.bfloat16
    assert model.lm_head.weight.dtype == model.transformer.embed_tokens.weight.dtype == torch.float32  # still tied
    assert logits.dtype == torch.float32
    assert not torch.equal(logits, reference)  # really computed in bfloat16
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()


def test_bf16_linears_cached_generation_equals_recomputation():
    model = tiny_model(mem_len=8, segment_len=16).store_linears_in(torch.bfloat16)
    cached = model.generate(PROMPTS, max_new_tokens=60, do_sample=False)
    uncached = model.generate(PROMPTS, max_new_tokens=60, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_float32_undoes_it_and_autocast_training_is_untouched():
    model = tiny_model().store_linears_in(torch.bfloat16).store_linears_in(torch.float32)
    assert not bf16_parameters(model)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training path: the Linear is nn.Linear under autocast
        loss = model(PROMPTS, labels=PROMPTS).loss
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_stores_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    assert generate_module.for_generation(tiny_model(), "auto").linears_dtype() == expected
    assert generate_module.for_generation(tiny_model(), "float32").linears_dtype() == torch.float32
    assert generate_module.for_generation(tiny_model(), "bfloat16").linears_dtype() == torch.bfloat16
    with pytest.raises(ValueError, match="linears must be"):
        generate_module.for_generation(tiny_model(), "float16")


@pytest.mark.parametrize("flag, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_the_linears_flag_reaches_the_model(tiny_model_dir, tmp_path, monkeypatch, flag, expected):
    seen = []
    real = generate_module.for_generation
    monkeypatch.setattr(generate_module, "for_generation", lambda model, linears: seen.append(real(model, linears)))
    flags = ["--max-new-tokens", "8", "--no-picture", "--no-audio", "--output-dir", str(tmp_path)]
    main(["generate", str(tiny_model_dir), "--linears", flag, *flags])
    assert [model.linears_dtype() for model in seen] == [expected]
    assert (tmp_path / "sample-1-seed0.mid").is_file()
