"""What the Hub tests share (tests/test_hub.py, tests/test_hub_more.py): the tiny model's overrides, the local
Hub's token, the environment that points a fresh process's huggingface_hub client at the local Hub, and running
one of tests/hub_scenarios.py's scenarios in such a process."""

import json
import os
import subprocess
import sys
from pathlib import Path

from hub_server import LocalHub

HERE = Path(__file__).resolve().parent
SMALL = "n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=32,mem_len=32"
TOKEN = "hf_local_test_token"


def hub_env(hub: LocalHub, home: Path, token: str = TOKEN) -> dict:
    """This process's environment without Hub settings, plus the local Hub's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(home),
        HF_TOKEN=token,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_scenario(name: str, env: dict, cwd: Path, **arguments) -> dict:
    result = subprocess.run(
        [sys.executable, str(HERE / "hub_scenarios.py"), name, json.dumps(arguments)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-5000:]}"
    return json.loads(next(line for line in reversed(result.stdout.splitlines()) if line.startswith("RESULT "))[7:])
