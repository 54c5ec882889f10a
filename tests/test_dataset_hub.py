"""``--corpus hf:ORG/NAME`` against the local Hub stand-in (tests/hub_server.py): a parquet dataset of real chorale
MIDI bytes is pushed with the real huggingface_hub client, then built through ``load_dataset``, downloaded and
streamed, in a fresh process (the Hub settings are read at import). Its splits are kept; a new commit is a new
build."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from hub_server import LocalHub

TOKEN = "hf_local_test_token"
BUILD = """
import json, sys
from huggingface_hub import HfApi
from hf_music_xl.data.corpus import build_corpus, read_report
folder, cache = sys.argv[1], sys.argv[2]
api = HfApi()
api.create_repo("tester/midi", repo_type="dataset", exist_ok=True)
api.upload_folder(folder_path=folder, repo_id="tester/midi", repo_type="dataset")
result = {}
for streaming in (True, False):
    corpus = build_corpus("hf:tester/midi", cache_dir=f"{cache}/{streaming}", num_proc=1, streaming=streaming)
    report = read_report(corpus)
    names = {split: sorted(corpus[split]["name"]) for split in corpus}
    result[str(streaming)] = {"names": names, "key": report["cache_key"], "dataset": report["dataset"]}
print("RESULT " + json.dumps(result))
"""


def run_build(hub, folder, cache, home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", BUILD, str(folder), str(cache)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_a_hub_dataset_builds_downloaded_and_streamed(chorale_midi_files, tmp_path):
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    paths = chorale_midi_files[:6]

    def write(split, chosen):
        table = pa.table({"md5": [p.stem for p in chosen], "music": [p.read_bytes() for p in chosen]})
        pq.write_table(table, data / f"{split}-00000-of-00001.parquet")

    write("train", paths[:4])
    write("validation", paths[4:])
    with LocalHub(tmp_path / "hub", token=TOKEN) as hub:
        first = run_build(hub, tmp_path / "repo", tmp_path / "cache", tmp_path / "home")
        write("train", paths[:3])  # a new commit on the Hub
        second = run_build(hub, tmp_path / "repo", tmp_path / "cache", tmp_path / "home")
    expected = {"train": sorted(p.stem for p in paths[:4]), "validation": sorted(p.stem for p in paths[4:])}
    for streaming in ("True", "False"):
        assert first[streaming]["names"] == expected  # the Hub's split names kept
        assert first[streaming]["dataset"]["column"] == "music" and first[streaming]["dataset"]["splits_kept"]
    assert second["True"]["names"]["train"] == sorted(p.stem for p in paths[:3])
    assert second["True"]["key"] != first["True"]["key"]  # the revision is in the cache key
