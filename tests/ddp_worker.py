"""Run by test_training.py under torchrun: a few DDP steps, then each rank writes a hash of its weights.

torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py CORPUS_DIR OUTPUT_DIR
"""

import json
import os
import sys

import torch
from helpers import weights_digest

from hf_music_xl.training.run import train
from hf_music_xl.training.settings import TrainSettings

corpus, output_dir = sys.argv[1], sys.argv[2]
settings = TrainSettings(
    corpus=corpus,
    output_dir=output_dir,
    preset="tiny",
    model_overrides="n_layer=1,d_model=32,n_head=2,d_head=16,d_inner=64,segment_len=32,mem_len=32",
    n_segments=2,
    max_steps=4,
    batch_size=2,
    logging_steps=1,
)
result = train(settings)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
record = {"rank": rank, "world_size": world, "digest": weights_digest(result.model), "steps": 4}
with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as file:
    json.dump(record, file)
