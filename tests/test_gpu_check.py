"""scripts/gpu_check.py: without CUDA it says so and exits cleanly; its checks run on CPU (tiny model)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling benchmark scripts
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_check.py"), "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stderr
    assert not out.exists()


def test_cache_check_passes_on_a_real_model(gpu_check):
    with torch.no_grad():
        result = gpu_check.check_cache_equals_recomputation(tiny_model(), torch.device("cpu"), new_tokens=12)
    assert result["ok"] and result["same_tokens"] and result["max_logit_difference"] < 1e-4


def test_training_check_reports_falling_finite_losses(gpu_check):
    result = gpu_check.check_training(tiny_model(), torch.device("cpu"), torch.bfloat16, batch=2, length=32)
    assert result["ok"] and len(result["losses"]) == 4 and result["tokens_per_s"] > 0


def test_a_failing_check_is_recorded_not_raised(gpu_check):
    results = {}
    gpu_check.run_check(results, "broken", lambda: 1 / 0)
    assert results["broken"]["ok"] is False and "ZeroDivisionError" in results["broken"]["error"]


def test_compiled_training_check_compares_the_compiled_attention_with_eager(gpu_check, monkeypatch):
    from hf_music_xl.models.music_xl import attention_music_xl

    compiled = []

    def recording_compiler(function, **options):  # stands for torch.compile (its real run is the slow test's)
        def run(*args):
            compiled.append(args[0].shape)
            return function(*args)

        return run

    monkeypatch.setattr(torch, "compile", recording_compiler)
    monkeypatch.setattr(attention_music_xl, "_compiled_attention", None)
    result = gpu_check.check_compiled_training("tiny", torch.device("cpu"), torch.bfloat16, batch=2, length=64)
    assert compiled, "the compiled run did not go through torch.compile"
    assert result["ok"] and result["loss_difference"] == 0 and result["max_grad_difference"] == 0
    assert result["first_call_s"] > 0 and set(result["tokens_per_s"]) == {"eager", "compiled"}
