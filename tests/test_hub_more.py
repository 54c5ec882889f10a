"""Publishing, continued: pull requests, files an earlier push left behind, one-line Hub errors, and the Space
(`hf-music-xl push-space`), all with the real huggingface_hub client against the local Hub server."""

import re
import subprocess
import sys
import sysconfig
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hub_helpers import SMALL, TOKEN, hub_env, run_scenario
from hub_server import LocalHub

USER_REPO = "tester/music-xl-more"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub"), token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def sharded_and_whole(tmp_path_factory):
    """v1 saved in weight shards (with an index), v2 saved whole: as two versions of one model can be."""
    from hf_music_xl import MusicXLConfig, MusicXLForCausalLM, MusicXLPipeline, MusicXLTokenizerFast
    from hf_music_xl.models.music_xl.generation_music_xl import generation_config_for
    from hf_music_xl.training.settings import parse_overrides

    root, config = tmp_path_factory.mktemp("versions"), MusicXLConfig.from_preset("tiny", **parse_overrides(SMALL))
    dirs = {}
    for seed, name in enumerate(("v1", "v2")):
        torch.manual_seed(seed)
        model = MusicXLForCausalLM(config)
        model.generation_config = generation_config_for(config)
        pipe = MusicXLPipeline(model=model, tokenizer=MusicXLTokenizerFast())
        pipe.save_pretrained(root / name, **({"max_shard_size": "20KB"} if name == "v1" else {}))
        dirs[name] = root / name
    assert len(list(dirs["v1"].glob("model-*-of-*.safetensors"))) > 1
    return dirs


def cli(hub_or_url, home: Path, runs: list[dict]) -> list[dict]:
    env = hub_env(hub_or_url, home) if isinstance(hub_or_url, LocalHub) else {**hub_env_for(hub_or_url, home)}
    return run_scenario("cli", env, home.parent, runs=runs)["results"]


def hub_env_for(url: str, home: Path) -> dict:
    class Address:  # hub_env only reads .url
        pass

    address = Address()
    address.url = url
    return hub_env(address, home)


# ----------------------------------------------------------------------------------------------------------
# Pull requests and clean-up


def test_push_deletes_what_an_earlier_push_left_and_create_pr_leaves_the_branch_alone(hub, sharded_and_whole, tmp_path):
    v1, v2 = str(sharded_and_whole["v1"]), str(sharded_and_whole["v2"])
    runs = [
        {"argv": ["push", v1, USER_REPO], "token": TOKEN},
        {"argv": ["push", v2, USER_REPO], "token": TOKEN},
        {"argv": ["push", v1, USER_REPO, "--create-pr", "--commit-message", "back to v1?"], "token": TOKEN},
    ]
    first, second, pr = cli(hub, tmp_path / "home", runs)
    assert first["code"] == second["code"] == pr["code"] == 0, (first, second, pr)

    history = hub.store.history(USER_REPO)  # newest first: v2, v1, initial commit
    v1_files, v2_files = set(hub.store.files(USER_REPO, history[1])), set(hub.store.files(USER_REPO, history[0]))
    shards = {name for name in v1_files if re.fullmatch(r"model-\d+-of-\d+\.safetensors", name)}
    assert shards and "model.safetensors.index.json" in v1_files
    assert v2_files == v1_files - shards - {"model.safetensors.index.json"} | {
        "model.safetensors"
    }  # nothing stale left
    assert {"pipeline_music_xl.py", "README.md", ".gitattributes"} <= v2_files

    # the pull request: main still at v2, refs/pr/1 holds v1 again
    assert (
        pr["stdout"].strip()
        == f"opened a pull request on {hub.url}/{USER_REPO} (main): {hub.url}/{USER_REPO}/discussions/1"
    )
    assert hub.store.history(USER_REPO)[0] == history[0]
    assert set(hub.store.files(USER_REPO, "refs/pr/1")) == v1_files
    assert hub.store.history(USER_REPO, "refs/pr/1")[1] == history[0]


# ----------------------------------------------------------------------------------------------------------
# One line for each Hub problem


@pytest.fixture(scope="module")
def not_a_hub(tmp_path_factory):
    """Some other web server (a static file server): what a mistyped HF_ENDPOINT may reach."""
    folder = tmp_path_factory.mktemp("static")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def assert_one_line(result: dict, command: str, *fragments: str) -> None:
    assert result["code"] == 1, result
    message = result["message"]
    assert message.startswith(f"hf-music-xl {command}: error: ") and "\n" not in message, message
    assert "Traceback" not in result["stderr"] + result["stdout"], result["stderr"][-2000:]
    for fragment in fragments:
        assert fragment in message, message


def test_hub_errors_are_one_clear_line(hub, not_a_hub, sharded_and_whole, tmp_path):
    model = str(sharded_and_whole["v2"])
    gen = ["--bars", "1", "--output-dir", str(tmp_path / "out")]
    pushed, *good = cli(
        hub,
        tmp_path / "home",
        [
            {"argv": ["push", model, "tester/errors-model"], "token": TOKEN},
            {"argv": ["push", model, "tester/x"], "token": "hf_wrong"},
            {"argv": ["push", model, "tester/x"], "token": None},
            {"argv": ["push", model, "someone-else/x"], "token": TOKEN},
            {"argv": ["generate", "tester/does-not-exist", *gen], "token": TOKEN},
            {"argv": ["push-space", "tester/does-not-exist", "tester/demo"], "token": TOKEN},
            {"argv": ["push-space", "tester/errors-model", "someone-else/demo"], "token": TOKEN},
        ],
    )
    assert pushed["code"] == 0, pushed
    assert_one_line(good[0], "push", "refused your token (401)")
    assert_one_line(good[1], "push", "needs a token and none is set", "hf auth login")
    assert_one_line(good[2], "push", "may not write to someone-else/x (403)")
    assert_one_line(good[3], "generate", "tester/does-not-exist was not found on", "does not exist, or it is private")
    assert_one_line(good[4], "push-space", "tester/does-not-exist was not found")
    assert_one_line(good[5], "push-space", "may not write to someone-else/demo (403)")

    down = "http://127.0.0.1:9"  # nothing listens on the discard port
    unreachable = cli(
        down,
        tmp_path / "home2",
        [
            {"argv": ["push", model, "tester/x"], "token": TOKEN},
            {"argv": ["generate", "tester/x", *gen], "token": TOKEN},
            {"argv": ["push-space", "tester/x", "tester/demo"], "token": TOKEN},
        ],
    )
    for result, command in zip(unreachable, ("push", "generate", "push-space")):
        assert_one_line(result, command, f"cannot reach the Hub at {down}")

    wrong = cli(
        not_a_hub,
        tmp_path / "home3",
        [
            {"argv": ["push", model, "tester/x"], "token": TOKEN},
            {"argv": ["generate", "tester/x", *gen], "token": TOKEN},
        ],
    )
    for result, command in zip(wrong, ("push", "generate")):
        assert_one_line(result, command, f"{not_a_hub} does not answer like the Hugging Face Hub")
    bad_address = cli("hub.example", tmp_path / "home4", [{"argv": ["push", model, "tester/x"], "token": TOKEN}])
    assert_one_line(bad_address[0], "push", "HF_ENDPOINT='hub.example' is not a usable address")


# ----------------------------------------------------------------------------------------------------------
# The Space


def test_push_space_then_the_space_runs_the_app_on_the_model_from_the_hub(hub, sharded_and_whole, tmp_path):
    pytest.importorskip("gradio_client", reason="the app extra is not installed")
    from gradio_client import Client

    model_id, space_id = "tester/space-model", "tester/space-demo"
    home = tmp_path / "home"
    pushed, space, again = cli(
        hub,
        home,
        [
            {"argv": ["push", str(sharded_and_whole["v2"]), model_id], "token": TOKEN},
            {"argv": ["push-space", model_id, space_id], "token": TOKEN},
            {"argv": ["push-space", model_id, space_id], "token": TOKEN},
        ],
    )
    assert pushed["code"] == space["code"] == again["code"] == 0, (pushed, space, again)
    assert space["stdout"].startswith(f"pushed the Space {hub.url}/spaces/{space_id}: ")
    assert "already runs this app" in again["stdout"]

    files = hub.store.files(space_id, repo_type="space")
    assert {
        "README.md",
        "app.py",
        "requirements.txt",
        "hf_music_xl/app.py",
        "hf_music_xl/models/music_xl/pipeline_music_xl.py",
    } <= set(files)
    assert "hf_music_xl/training.py" not in files  # only what the app imports
    card = hub.store.read(space_id, "README.md", repo_type="space").decode()
    assert "sdk: gradio" in card and f"- {model_id}" in card and "app_file: app.py" in card
    requirements = hub.store.read(space_id, "requirements.txt", repo_type="space").decode().split()
    assert "transformers==5.23.0" in requirements and all("+" not in line for line in requirements)

    # run the Space's app.py as a Space would, where hf_music_xl is not installed: -I -S hide the editable install
    checkout = run_scenario("space_app", hub_env(hub, home), tmp_path, space_id=space_id, work=str(tmp_path / "space"))[
        "dir"
    ]
    port = free_port()
    purelib = sysconfig.get_paths()["purelib"]
    script = (
        f"import runpy, sys; sys.path[:0] = [{checkout!r}]; sys.path.append({purelib!r}); "
        "runpy.run_path('app.py', run_name='__main__')"
    )
    env = {
        **hub_env(hub, home),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }  # -I ignores PYTHON* variables: -u, not PYTHONUNBUFFERED
    server = subprocess.Popen(
        [sys.executable, "-I", "-S", "-u", "-c", script],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in server.stdout:  # wait for gradio's start-up line (or the process's end)
            lines.append(line)
            if "Running on local URL" in line:
                break
        assert server.poll() is None, "".join(lines)[-3000:]
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        status, picture, audio, midi = client.predict(
            None, "continue", 0, 1, 1, 1, "", "default", 1.0, 3, "none", api_name="/on_generate"
        )
        assert status.startswith("Generated") and "(seed 3)" in status
        assert Path(midi).read_bytes()[:4] == b"MThd" and Path(picture).read_bytes()[:4] == b"\x89PNG"
    finally:
        server.terminate()
        server.wait(60)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
