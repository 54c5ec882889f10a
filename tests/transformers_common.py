"""transformers' own common model tests, taken from its source distribution at test time (not copied here).

``ModelTesterMixin`` (tests/test_modeling_common.py) and ``ConfigTester`` (tests/test_configuration_common.py) come
from the sdist of the installed transformers version, downloaded once with ``pip download --no-binary :all:`` into
``$HF_MUSIC_XL_CACHE/transformers-tests/<version>`` (default ``~/.cache/hf_music_xl``) and imported from there as the
package ``transformers_common_tests``. The sdist leaves out three modules that they import, written here in their
place: ``tests/exporters/test_export.py`` and ``tests/generation/test_utils.py`` hold mixins we do not run (torch.export
tests; the generation mixin, whose behaviours tests/test_generation.py checks), so they are empty mixins; and
``tests/utils/test_configuration_utils.py`` holds ``config_common_kwargs``, non-default values of the arguments every
config takes, which ``ConfigTester`` checks a config keeps: ours are read off ``PretrainedConfig``'s own fields.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"
TAKEN = ("test_modeling_common.py", "test_configuration_common.py")
LEFT_OUT = {  # module of the sdist's tests package -> what stands in its place
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = dict(return_dict=False, output_hidden_states=True, output_attentions=True,\n"
        "    dtype='float16', chunk_size_feed_forward=5, architectures=['SomeModel'], problem_type='regression',\n"
        "    id2label={0: 'first', 1: 'second'}, label2id={'first': 0, 'second': 1})\n"
    ),
}


def cache_dir() -> Path:
    root = Path(os.environ.get("HF_MUSIC_XL_CACHE", Path.home() / ".cache" / "hf_music_xl"))
    return root / "transformers-tests" / transformers.__version__


def common_tests_package() -> tuple[object, object]:
    """(test_modeling_common, test_configuration_common) modules; raises RuntimeError with the reason when the
    source distribution cannot be had."""
    root = cache_dir()
    package = root / PACKAGE
    if not all((package / name).exists() for name in TAKEN):
        unpack(download(root), package)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return (
        importlib.import_module(f"{PACKAGE}.test_modeling_common"),
        importlib.import_module(f"{PACKAGE}.test_configuration_common"),
    )


def download(root: Path) -> Path:
    """The sdist archive of the installed transformers version (downloaded once)."""
    root.mkdir(parents=True, exist_ok=True)
    archives = sorted(root.glob(f"transformers-{transformers.__version__}.tar.gz"))
    if archives:
        return archives[0]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"transformers=={transformers.__version__}",
        "--no-binary",
        ":all:",
        "--no-deps",
        "-d",
        str(root),
        "--quiet",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    archives = sorted(root.glob(f"transformers-{transformers.__version__}.tar.gz"))
    if finished.returncode or not archives:
        raise RuntimeError(
            f"pip download of the transformers {transformers.__version__} sdist failed: "
            f"{(finished.stderr or finished.stdout).strip().splitlines()[-1:]}"
        )
    return archives[0]


def unpack(archive: Path, package: Path) -> None:
    """The two common test modules, into a package of their own, with the left-out modules as empty mixins."""
    prefix = f"transformers-{transformers.__version__}/tests/"
    package.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for name in TAKEN:
            member = tar.extractfile(prefix + name)
            if member is None:
                raise RuntimeError(f"{archive.name} has no tests/{name}")
            (package / name).write_bytes(member.read())
    (package / "__init__.py").write_text("")
    for path, text in LEFT_OUT.items():
        target = package / path
        target.parent.mkdir(exist_ok=True)
        (target.parent / "__init__.py").write_text("")
        target.write_text(text)
