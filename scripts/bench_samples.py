"""Several samples of one prompt: one batch (what the pipeline, `hf-music-xl generate --num-samples` and the app do)
against one sample after another (what they did before), in one run.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_samples.py        # the released model, ~3 min
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_samples.py --model runs/tiny/final

For 1, 4 and 8 samples of --bars bars continuing the first 4 bars of the first validation chorale (conservative
preset, seeds 0..n-1): seconds for all of them each way, the ratio, and whether both ways gave the same tokens (they
must: each row draws from its own seed). The two ways alternate, best of --repeats, so they share the machine's load.
"""

import argparse
import time

import numpy as np
import torch

from hf_music_xl.data.corpus import load_corpus
from hf_music_xl.generate import generate_batch, load_model_and_tokenizer
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest, prompt_ids


def timed(run) -> tuple[float, list]:
    start = time.perf_counter()
    samples = run()
    return time.perf_counter() - start, samples


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model directory or Hub id; default: the released model")
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--samples", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model_and_tokenizer(args.model)
    validation = load_corpus("bach-chorales")["validation"]
    first = int(np.argmin(validation["name"]))
    prompt = prompt_ids(validation[first]["input_ids"], 4)
    request = SamplingRequest(bars=args.bars, preset="conservative")
    print(f"{model.name_or_path}: continuing {validation[first]['name']} by {args.bars} bars")
    print("samples  batched s  one by one s  speed-up  same tokens")
    for count in map(int, args.samples.split(",")):
        seeds = list(range(count))
        batched, alone = [], []
        for _ in range(args.repeats):
            batched.append(timed(lambda seeds=seeds: generate_batch(model, prompt, request, seeds, progress=False)))
            alone.append(
                timed(
                    lambda seeds=seeds: [generate_batch(model, prompt, request, [s], progress=False)[0] for s in seeds]
                )
            )
        (batch_s, batch_ids), (alone_s, alone_ids) = min(batched, key=lambda r: r[0]), min(alone, key=lambda r: r[0])
        same = all(np.array_equal(a, b) for a, b in zip(batch_ids, alone_ids))
        print(f"{count:>7}  {batch_s:>9.2f}  {alone_s:>12.2f}  {alone_s / batch_s:>7.2f}x  {same}")


if __name__ == "__main__":
    main()
