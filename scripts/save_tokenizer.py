"""Regenerate the saved tokenizer in `tokenizer/` (a test fails when the committed copy is stale).

    python scripts/save_tokenizer.py [--output tokenizer]

The directory holds tokenizer.json (fast), vocab.json (slow), tokenizer_config.json with `auto_map`, and the
code files, so `AutoTokenizer.from_pretrained(dir, trust_remote_code=True)` works without hf_music_xl.
"""

import argparse
from pathlib import Path

from hf_music_xl import MusicXLTokenizerFast

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "tokenizer"


def save_tokenizer(output: Path) -> list[str]:
    tokenizer = MusicXLTokenizerFast()  # registered for AutoTokenizer by hf_music_xl/__init__: code + auto_map
    return [Path(name).name for name in tokenizer.save_pretrained(str(output))]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    print(f"wrote {', '.join(save_tokenizer(args.output))} to {args.output}")
