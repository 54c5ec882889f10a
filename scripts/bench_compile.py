"""torch.compile of the training step: MusicXL eager against MusicXL with the attention of its training chunks
compiled (``hf-music-xl train --compile``), in fp32 and in bf16 autocast, and against GPT-2 eager of the same dims,
in the same run (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_compile.py            # small preset, batch 8 x 512
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_compile.py --quick    # shorter rows, fewer steps

Prints, per precision: the first compiled step's seconds (it compiles the attention's graphs) against an eager
step's; tokens/s of forward + backward + AdamW of MusicXL eager, MusicXL compiled and GPT-2 eager, alternated step by
step (scripts/bench_model.py's ``bench_training``), with the ratios compiled / eager and MusicXL / GPT-2; and how far
the compiled step's loss and gradients are from eager's on the same batch (dropout 0, so both compute the same).
Before them, the attention of one chunk with a full memory alone (forward + backward, no projections), in the
query blocks training uses against all queries over all keys, alternated call by call (median).
"""

import argparse
import statistics
import time

import torch
from bench_model import bench_training, build_models, precision

from hf_music_xl.models.music_xl.attention_music_xl import (
    attention_block_mask,
    attention_in_query_blocks,
    relative_attention,
)


def training_step(model, ids, dtype):
    """Forward + backward of one batch in `dtype` ("fp32" or "bf16"); returns the loss."""
    with precision(dtype):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach()


def first_step_seconds(model, ids, dtype):
    """Seconds of the first training step of `model` (compiled: it compiles the attention's graphs)."""
    model.train()
    start = time.perf_counter()
    training_step(model, ids, dtype)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def largest_differences(preset, ids, dtype):
    """(loss difference, largest gradient difference, largest gradient) of a compiled step against eager, both
    from the same weights without dropout."""
    steps = []
    for compiled in (False, True):
        model, _ = build_models(preset, ids.shape[1], dropout=0.0)
        model.compile_training_attention(compiled)
        model.train()
        loss = training_step(model, ids, dtype)
        steps.append((loss, [p.grad for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = steps
    grad_difference = max((a - b).abs().max().item() for a, b in zip(eager_grads, compiled_grads))
    return (eager_loss - compiled_loss).abs().item(), grad_difference, max(g.abs().max().item() for g in eager_grads)


def attention_alone(preset, batch, dtype, repeats):
    """Median seconds of forward + backward of the attention of one training chunk with a full memory (no
    projections): the queries in blocks, as training runs it, and all queries over all keys (the plain
    `relative_attention`), alternated call by call: a load-robust measure of what the blocks save."""
    config = build_models(preset, 8, dropout=0.0)[0].config
    heads, d_head, length, memory = config.n_head, config.d_head, config.segment_len, config.mem_len
    generator = torch.Generator().manual_seed(3)
    # (B, H, T, Dh) as the model's queries are: a view of the (B, T, H * Dh) projection
    query = torch.randn(batch, length, heads, d_head, generator=generator).transpose(1, 2).requires_grad_()
    keys, values = (torch.randn(batch, heads, memory + length, d_head, generator=generator) for _ in range(2))
    relative = torch.randn(heads, memory + length, d_head, generator=generator, requires_grad=True)
    bias = torch.zeros(heads, d_head, requires_grad=True)
    mask = attention_block_mask(length, memory, 0, "cpu")
    inputs = (query, keys, values, relative, bias, bias, mask, 0.0)
    ways = {
        "blocks": lambda: attention_in_query_blocks(relative_attention, *inputs),
        "whole": lambda: relative_attention(*inputs)[0],
    }
    seconds = {name: [] for name in ways}
    for _ in range(repeats):
        for name, attend in ways.items():
            start = time.perf_counter()
            with precision(dtype):
                out = attend()
            out.float().square().mean().backward()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--quick", action="store_true", help="rows of 256 tokens, batch 4, 3 steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512, help="training row length (MusicXL: 2 segments)")
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length, args.train_steps = 4, 256, 3
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch} x {args.length}")
    ids = torch.randint(9, 298, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    for dtype in args.precisions.split(","):
        alone = attention_alone(args.preset, args.batch, dtype, repeats=4 * args.train_steps)
        print(
            f"{dtype}: the attention of a chunk with memory, forward + backward (median): in query blocks "
            f"{alone['blocks'] * 1000:.0f} ms, all queries over all keys {alone['whole'] * 1000:.0f} ms: "
            f"{alone['whole'] / alone['blocks']:.2f}x"
        )
        eager, gpt2 = build_models(args.preset, args.length, dropout=0.1)
        compiled, _ = build_models(args.preset, args.length, dropout=0.1)
        compiled.compile_training_attention()
        first = first_step_seconds(compiled, ids, dtype)
        runs = {"eager": (eager, dtype, False), "compiled": (compiled, dtype, False), "GPT-2": (gpt2, dtype, False)}
        rates = bench_training(runs, args.batch, args.length, args.train_steps)
        loss_difference, grad_difference, grad_size = largest_differences(args.preset, ids, dtype)
        eager_step = args.batch * args.length / rates["eager"]
        print(
            f"{dtype}: first compiled step {first:.1f} s (the compile; an eager step takes {eager_step:.1f} s); "
            f"tokens/s MusicXL eager {rates['eager']:.0f}, MusicXL compiled {rates['compiled']:.0f}, GPT-2 eager "
            f"{rates['GPT-2']:.0f}"
        )
        print(
            f"   compiled / eager {rates['compiled'] / rates['eager']:.2f}x; MusicXL / GPT-2 eager: eager "
            f"{rates['eager'] / rates['GPT-2']:.2f}x, compiled {rates['compiled'] / rates['GPT-2']:.2f}x "
            f"(target >= 1.0); compiled vs eager: loss {loss_difference:.1e}, gradients {grad_difference:.1e} "
            f"(largest gradient {grad_size:.1e})"
        )


if __name__ == "__main__":
    main()
