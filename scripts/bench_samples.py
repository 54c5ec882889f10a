"""Several pieces in one batch against one after another, in one run: the samples of one prompt (what the
pipeline's ``num_samples``, ``hf-music-xl generate --num-samples`` and the app do) and a list of prompts (the
pipeline's ``pipe([a, b, ...])``).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_samples.py        # the released model
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_samples.py --model runs/tiny/final

Samples: 1, 4 and 8 samples (seeds 0..n-1) of --bars bars continuing the first 4 bars of the first validation
chorale. Prompts: the first 4 bars of each of the first 1, 4 and 8 validation chorales (by name), one sample each
(seed 0); their lengths differ, so the longer prompts' last tokens are fed one a step while the others sample
(``sample_rows``). Conservative preset. For each: seconds for all of them each way, the ratio, and whether both
ways gave the same tokens (they must: each row draws from its own seed and sees what it sees alone). The two ways
alternate, best of --repeats, so they share the machine's load.
"""

import argparse
import time

import numpy as np
import torch

from hf_music_xl.data.corpus import load_corpus
from hf_music_xl.generate import load_model_and_tokenizer
from hf_music_xl.models.music_xl.batch_sampling_music_xl import sample_rows
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest, prompt_ids


def sampled(model, prompts, request, seeds) -> list[np.ndarray]:
    """The rows of one ``sample_rows`` call (one batch, or a few where prompts differ much in length)."""
    for rows, _ in sample_rows(model, prompts, request, seeds):  # noqa: B007 - the last is kept
        pass
    return [row.numpy() for row in rows]


def timed(run) -> tuple[float, list]:
    start = time.perf_counter()
    samples = run()
    return time.perf_counter() - start, samples


def compare(model, prompts, request, seeds, repeats) -> tuple[float, float, bool]:
    """(seconds batched, seconds one row after another, same tokens), best of ``repeats`` each, alternating."""
    batched, alone = [], []
    for _ in range(repeats):
        batched.append(timed(lambda: sampled(model, prompts, request, seeds)))
        alone.append(timed(lambda: [sampled(model, [p], request, [s])[0] for p, s in zip(prompts, seeds)]))
    (batch_s, batch_ids), (alone_s, alone_ids) = min(batched, key=lambda r: r[0]), min(alone, key=lambda r: r[0])
    return batch_s, alone_s, all(np.array_equal(a, b) for a, b in zip(batch_ids, alone_ids))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model directory or Hub id; default: the released model")
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--samples", default="1,4,8", help="samples of one prompt ('' to skip)")
    parser.add_argument("--prompts", default="1,4,8", help="prompts of a list, one sample each ('' to skip)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model_and_tokenizer(args.model)
    validation = load_corpus("bach-chorales")["validation"]
    order = np.argsort(validation["name"])
    request = SamplingRequest(bars=args.bars, preset="conservative")
    print(f"{model.name_or_path}: continuing validation chorales by {args.bars} bars")
    print("kind     n  prompt tokens  batched s  one by one s  speed-up  same tokens")
    counts = [("samples", int(n)) for n in args.samples.split(",") if n] + [
        ("prompts", int(n)) for n in args.prompts.split(",") if n
    ]
    for kind, count in counts:
        chosen = [int(order[0])] * count if kind == "samples" else [int(k) for k in order[:count]]
        prompts = [prompt_ids(validation[k]["input_ids"], 4) for k in chosen]
        seeds = list(range(count)) if kind == "samples" else [0] * count
        batch_s, alone_s, same = compare(model, prompts, request, seeds, args.repeats)
        lengths = f"{min(map(len, prompts))}-{max(map(len, prompts))}"
        ratio = alone_s / batch_s
        print(f"{kind:<7} {count:>2}  {lengths:>13}  {batch_s:>9.2f}  {alone_s:>12.2f}  {ratio:>7.2f}x  {same}")


if __name__ == "__main__":
    main()
