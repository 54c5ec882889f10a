"""Training speed as a fraction of this CPU's measured matmul peak, MusicXL and GPT-2, in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_peak.py [--preset small] [--threads 1]

1. matmul peak: best GFLOP/s of fp32 square matmuls (1024, 1536, 2048) on ``--threads`` threads;
2. FLOPs of one training step counted exactly with ``torch.utils.flop_counter.FlopCounterMode`` (every matmul,
   attention included, forward and backward; the AdamW update is not counted);
3. tokens/s of forward + backward + AdamW for MusicXL and GPT-2 of the same dims (``bench_model.build_models``
   and ``bench_model.bench_training``, so the same step as the model benchmark), turned into achieved GFLOP/s and
   a fraction of the peak. The matmul probe runs before and after the training steps (the mean counts), so a
   change of the machine's load during the run shows as a gap between the two probes.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import bench_training, build_models  # noqa: E402  (helper-1's definitions: one step, one way)


def matmul_peak(sizes=(1024, 1536, 2048), repeats: int = 5) -> float:
    """Best GFLOP/s of an fp32 n x n matmul over sizes and repeats."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def step_flops(model, batch: int, length: int) -> int:
    """Matmul FLOPs of one forward + backward on a (batch, length) row of random ids."""
    ids = torch.randint(9, 298, (batch, length), generator=torch.Generator().manual_seed(0))
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512, help="row length (MusicXL: segments of segment_len)")
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    xl, gpt2 = build_models(args.preset, args.length, dropout=0.1)
    models = {"musicxl": xl, "gpt2": gpt2}
    flops = {name: step_flops(model, args.batch, args.length) for name, model in models.items()}
    peak_before = matmul_peak()
    rates = bench_training(models, args.batch, args.length, args.train_steps)
    peak_after = matmul_peak()
    peak = (peak_before + peak_after) / 2
    c = xl.config
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; preset {args.preset} (d_model {c.d_model}, "
        f"layers {c.n_layer}, segment_len {c.segment_len}, mem_len {c.mem_len}); batch {args.batch} x {args.length}"
    )
    print(f"matmul peak: {peak_before:.1f} GFLOP/s before, {peak_after:.1f} after, mean {peak:.1f}")
    for name, rate in rates.items():
        per_token = flops[name] / (args.batch * args.length)
        achieved = rate * per_token / 1e9
        print(
            f"{name}: {per_token / 1e6:.2f} MFLOP per token (fwd+bwd matmuls), {rate:.0f} tokens/s, "
            f"{achieved:.1f} GFLOP/s = {achieved / peak:.0%} of the matmul peak"
        )
    ratio = (rates["musicxl"] * flops["musicxl"]) / (rates["gpt2"] * flops["gpt2"])
    print(f"MusicXL / GPT-2: tokens/s {rates['musicxl'] / rates['gpt2']:.2f}x, achieved GFLOP/s {ratio:.2f}x")


if __name__ == "__main__":
    main()
