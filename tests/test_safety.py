"""Safety: no pickles written or read, code shipped for trust_remote_code is inert at import, generation memory
is bounded."""

import ast
import sys
from pathlib import Path

import pytest
import torch
from transformers.trainer_pt_utils import safe_globals

from hf_music_xl import MusicXLConfig, MusicXLForCausalLM
from hf_music_xl.generate import empty_prompt, generate_continuation
from hf_music_xl.models.music_xl.sampling_music_xl import MAX_PROMPT_BARS, SamplingRequest
from hf_music_xl.training.run import train
from hf_music_xl.training.settings import TrainSettings

REPO = Path(__file__).resolve().parent.parent
SMALL = "n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=32,mem_len=32"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".joblib", ".ckpt", ".npy", ".npz")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
# What the files copied next to the weights for trust_remote_code may import (plus the standard library and each
# other, by relative import): the packages a user of the Hub model has anyway.
REMOTE_CODE_IMPORTS = {"torch", "transformers", "numpy", "symusic", "tokenizers"}
# Calls allowed at module level of those files, inside constant definitions: pure builtins.
PURE_BUILTINS = {
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "range",
    "len",
    "enumerate",
    "zip",
    "sorted",
    "str",
    "int",
    "float",
}


def python_files(*folders):
    return sorted(path for folder in folders for path in Path(folder).rglob("*.py"))


def is_torch_load(node) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch"
    )


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


# ----------------------------------------------------------------------------------------------------------
# No pickles: what the code reads


@pytest.mark.parametrize(
    "path", python_files(REPO / "src", REPO / "scripts"), ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_source_reads_no_pickles(path):
    """Every torch.load passes weights_only=True; nothing imports a pickle library or np.load(allow_pickle=True)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if is_torch_load(node):
            flag = keyword(node, "weights_only")
            assert isinstance(flag, ast.Constant) and flag.value is True, (
                f"{path}:{node.lineno}: torch.load without weights_only=True"
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            flag = keyword(node, "allow_pickle")
            assert not (isinstance(flag, ast.Constant) and flag.value), f"{path}:{node.lineno}: allow_pickle=True"
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = {node.module.split(".")[0]}
        else:
            continue
        assert not names & PICKLE_MODULES, f"{path}:{node.lineno}: imports {names & PICKLE_MODULES}"


def test_the_static_check_catches_an_unsafe_load():
    tree = ast.parse(
        "import torch\ntorch.load('x.pt')\ntorch.load('y.pt', weights_only=False)\ntorch.load('z', weights_only=True)"
    )
    flags = [keyword(node, "weights_only") for node in ast.walk(tree) if is_torch_load(node)]
    assert [getattr(flag, "value", None) for flag in flags] == [None, False, True]


# ----------------------------------------------------------------------------------------------------------
# No pickles: what training writes


@pytest.fixture(scope="module")
def trained(chorale_corpus_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("safety_run")
    train(
        TrainSettings(
            corpus=str(chorale_corpus_dir),
            output_dir=str(output),
            model_overrides=SMALL,
            n_segments=2,
            batch_size=4,
            max_steps=3,
            logging_steps=1,
        )
    )
    return output


def test_final_directory_holds_no_pickles(trained):
    files = sorted(path.name for path in (trained / "final").iterdir())
    assert "model.safetensors" in files
    assert not [name for name in files if name.endswith(PICKLE_SUFFIXES)], files


def test_checkpoints_hold_json_arguments_and_only_weights_only_torch_files(trained):
    """The Trainer's pickled training_args.bin is replaced by training_args.json; the resumable state the Trainer
    keeps as torch files (optimizer, scheduler, RNG) loads with weights_only=True, as the Trainer loads it."""
    (checkpoint,) = trained.glob("checkpoint-*")
    names = {path.name for path in checkpoint.iterdir()}
    assert "training_args.json" in names and "training_args.bin" not in names
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= names
    torch_files = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    assert sorted(torch_files) == ["optimizer.pt", "rng_state.pth", "scheduler.pt"]
    for name in torch_files:
        with safe_globals():  # numpy's RNG state: the allowlist the Trainer itself uses
            torch.load(checkpoint / name, map_location="cpu", weights_only=True)
    assert not list(trained.glob("*.bin"))  # nothing at the top of the output directory either


def test_corpus_cache_holds_no_pickles(chorale_corpus_dir):
    files = [path.name for path in chorale_corpus_dir.rglob("*") if path.is_file()]
    assert any(name.endswith(".arrow") for name in files) and "report.json" in files
    assert not [name for name in files if name.endswith(PICKLE_SUFFIXES)], files


# ----------------------------------------------------------------------------------------------------------
# Code shipped for trust_remote_code


def remote_code_files(trained, saved_with_pipeline):
    """Training's final directory, the saved tokenizer, and a model saved through MusicXLPipeline (which adds the
    pipeline and the generation helpers)."""
    files = python_files(trained / "final") + python_files(REPO / "tokenizer") + python_files(saved_with_pipeline)
    assert {path.name for path in files} >= {
        "configuration_music_xl.py",
        "modeling_music_xl.py",
        "encoding.py",
        "tokenization_music_xl.py",
        "tokenization_music_xl_fast.py",
        "pipeline_music_xl.py",
        "generation_music_xl.py",
    }
    return files


def test_remote_code_imports_only_allowed_packages_and_siblings(trained, tiny_model_dir):
    for path in remote_code_files(trained, tiny_model_dir):
        siblings = {sibling.stem for sibling in path.parent.glob("*.py")}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert node.level == 1 and node.module in siblings, (
                    f"{path}:{node.lineno}: relative import of {node.module}"
                )
                continue
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {node.module.split(".")[0]}
            else:
                continue
            unexpected = names - REMOTE_CODE_IMPORTS - set(sys.stdlib_module_names)
            assert not unexpected, f"{path}:{node.lineno}: imports {unexpected}"


def test_remote_code_only_defines_at_import(trained, tiny_model_dir):
    """Module level holds only the docstring, imports, functions, classes and constants (whose values call at most
    pure builtins such as dict or range): importing the files runs nothing else."""
    for path in remote_code_files(trained, tiny_model_dir):
        for index, node in enumerate(ast.parse(path.read_text()).body):
            where = f"{path}:{node.lineno}"
            if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            assert isinstance(
                node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
            ), f"{where}: {type(node).__name__} at module level"
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call)]
                assert all(isinstance(c.func, ast.Name) and c.func.id in PURE_BUILTINS for c in calls), (
                    f"{where}: calls {[ast.unparse(c.func) for c in calls]} at import"
                )
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):  # decorators and bases run at import too
                for expression in [*node.decorator_list, *getattr(node, "bases", [])]:
                    assert not any(isinstance(c, ast.Call) for c in ast.walk(expression)), (
                        f"{where}: call in {ast.unparse(expression)}"
                    )


# ----------------------------------------------------------------------------------------------------------
# Bounded generation memory


def test_long_generation_keeps_a_constant_size_memory():
    """generate_continuation in chunks, each resuming the returned cache: after every chunk the cache holds the
    same tensors, its buffers 2 * (mem_len + segment_len) rows, however long the piece (scripts/bench_memory.py runs
    100,000 tokens and also follows the process's RSS). Only the output ids grow, 8 bytes a token."""
    mem_len, chunk = 16, 100
    config = MusicXLConfig.from_preset(
        "tiny",
        n_layer=1,
        d_model=32,
        n_head=2,
        d_head=16,
        d_inner=64,
        segment_len=mem_len,
        mem_len=mem_len,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = MusicXLForCausalLM(config)
    sizes = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        cache = out.past_key_values
        # the next token sees the mem_len tokens before its segment and its segment so far
        assert cache.memory_length() == mem_len + cache.get_seq_length() % mem_len
        sizes.append((cache.nbytes(), tuple(cache.keys[0].shape), cache.get_seq_length()))
        return out

    model.generate = recording_generate
    request = SamplingRequest(bars=0, max_new_tokens=4 * chunk, chunk_tokens=chunk)
    ids = generate_continuation(model, empty_prompt(), request, progress=False)
    assert len(ids) == 2 + 4 * chunk and len(sizes) == 4
    assert len({(size, shape) for size, shape, _ in sizes}) == 1, sizes  # the same after 100 tokens as after 400
    assert sizes[0][1] == (1, config.n_head, 2 * (mem_len + mem_len), config.d_head)
    assert [seen for _, _, seen in sizes] == [
        2 + chunk * (i + 1) - 1 for i in range(4)
    ]  # the last token is not fed yet


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"note_temperature": float("nan")}, "note_temperature must be a finite number"),
        ({"duration_temperature": float("inf")}, "duration_temperature must be a finite number"),
        ({"seed": float("inf")}, "seed must be a whole number"),
        ({"bars": float("nan")}, "bars must be a whole number"),
        ({"prompt_bars": MAX_PROMPT_BARS + 1}, f"prompt_bars must be at most {MAX_PROMPT_BARS}"),
    ],
)
def test_sampling_request_refuses_non_finite_and_unbounded_numbers(values, problem):
    with pytest.raises(ValueError, match=problem):
        SamplingRequest(**values)
    assert SamplingRequest(prompt_bars=MAX_PROMPT_BARS).prompt_bars == MAX_PROMPT_BARS
