"""Train MusicXL: the same as `hf-music-xl train`, as a script for launchers.

    python scripts/train.py --preset tiny --max-minutes 8 --output-dir runs/tiny
    torchrun --standalone --nproc_per_node 2 scripts/train.py --preset tiny --max-steps 200
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --preset tiny --max-steps 200

On CPU, DDP runs over gloo (set MASTER_ADDR=127.0.0.1 GLOO_SOCKET_IFNAME=lo to stay on loopback).
`python scripts/train.py --help` lists every flag.
"""

import sys

from hf_music_xl.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
