"""Publish a trained model to the Hugging Face Hub: the same as `hf-music-xl push`, as a script.

    python scripts/push_to_hub.py runs/tiny/final you/music-xl-tiny
    python scripts/push_to_hub.py runs/tiny/final you/music-xl-tiny --private --revision experiment \\
        --commit-message "tiny preset, 8 minutes"

The Hub is $HF_ENDPOINT (default https://huggingface.co); the token is $HF_TOKEN or the one saved by
`hf auth login`. `python scripts/push_to_hub.py --help` lists every flag.
"""

import sys

from hf_music_xl.cli import main

if __name__ == "__main__":
    main(["push", *sys.argv[1:]])
