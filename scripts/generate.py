"""Generate music with a trained MusicXL model: the same as `hf-music-xl generate`, as a script.

    python scripts/generate.py runs/tiny/final --prompt piece.mid --prompt-bars 4 --bars 16 --num-samples 3
    python scripts/generate.py runs/tiny/final --bars 64 --preset adventurous --stream
    python scripts/generate.py runs/tiny/final --max-new-tokens 512 --seed 7 --soundfont my.sf2

Each sample is written as OUTPUT_DIR/<prefix>-<i>-seed<seed>.mid with a piano-roll .png and, when a renderer
and a local soundfont exist, a .wav. `python scripts/generate.py --help` lists every flag.
"""

import sys

from hf_music_xl.cli import main

if __name__ == "__main__":
    main(["generate", *sys.argv[1:]])
