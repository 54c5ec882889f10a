"""Small helpers shared by tests (standard library only at import, so a process without hf_music_xl can use
``block_package``)."""

import sys

BOS, PAD, EOS, SEP = 0, 1, 2, 8
NOTES, DURATIONS = range(9, 137), range(137, 298)


def note(pitch: int) -> int:
    return 9 + pitch


def dur(steps: int) -> int:
    return 137 + steps


def tiny_model(**overrides):
    """The tiny preset without dropout, seeded, in eval mode."""
    import torch

    from hf_music_xl import MusicXLConfig, MusicXLForCausalLM

    torch.manual_seed(0)
    config = MusicXLConfig.from_preset("tiny", **{"dropout": 0.0, **overrides})
    return MusicXLForCausalLM(config).eval()


def recorded_batches(model, monkeypatch) -> list[int]:
    """The rows of every generate() call from now on."""
    calls, original = [], type(model).generate

    def recording_generate(self, input_ids, **kwargs):
        calls.append(input_ids.shape[0])
        return original(self, input_ids, **kwargs)

    monkeypatch.setattr(type(model), "generate", recording_generate)
    return calls


def block_package() -> None:
    """Make ``import hf_music_xl`` fail in this process, as for a user who does not have the package."""

    class BlockPackage:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_music_xl":
                raise ModuleNotFoundError("hf_music_xl is not installed here")

    sys.meta_path.insert(0, BlockPackage())
    try:
        import hf_music_xl  # noqa: F401
    except ModuleNotFoundError:
        return
    raise SystemExit("hf_music_xl was importable")


def weights_digest(model) -> str:
    """A hash of all parameters (compares DDP replicas, resumed and uninterrupted runs, pushed and local models)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for name, tensor in sorted(getattr(model, "module", model).state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()


def run_without_package(body: str, tmp_path, timeout: int = 600) -> dict:
    """Run ``body`` (Python source that prints ``RESULT <json>``) in a fresh interpreter where hf_music_xl cannot be
    imported, as for a user without the package, offline; return the parsed JSON. ``-I -S``: no PYTHONPATH, no
    user site and no .pth files, so the editable install is invisible; the venv's site-packages is added as a
    plain path for torch and transformers."""
    import json
    import os
    import subprocess
    import sysconfig
    import textwrap

    preamble = textwrap.dedent(
        f"""
        import json, sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        try:
            import hf_music_xl
            raise SystemExit("hf_music_xl is importable")
        except ImportError:
            pass
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", preamble + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
