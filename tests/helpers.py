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
