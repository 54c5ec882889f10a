"""Speed of MusicXL against transformers' GPT2LMHeadModel at the same dims, in the same run (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_model.py            # full: a few minutes
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_model.py --quick    # shorter sequences, about a minute

Measures (random weights: speed does not depend on them):
  1. training: forward + backward + AdamW step, tokens/s, MusicXL vs GPT-2 (same d_model, layers, heads, d_inner,
     dropout, batch and row length; MusicXL runs each row as segments of segment_len with memory, as it trains),
     in fp32 and in bf16 autocast (what ``--precision auto`` picks on a CPU with AVX-512 BF16 or AMX), and MusicXL
     in bf16 against MusicXL in fp32; 1s. the same MusicXL step carrying the memory from the step before (stream
     training: every segment has a memory) against the window step (the first segment has none);
  2. generation with the cache vs use_cache=False at --new-tokens (the cached time is the mean of a run before and
     one after the uncached run);
  3. flat cost: over --long-tokens new tokens, tokens/s of the last 1,024 vs the first 1,024 (per-step timestamps);
     3b. as a load-robust check, cached steps after 1,024 and after 4,096 tokens, alternated step by step;
  4. MusicXL generate with its memory vs GPT-2 generate with its KV cache, --long-tokens new tokens;
  5. MusicXL generation in bf16 autocast against fp32, --new-tokens new tokens, one sequence.
Timed sections alternate between the compared runs to share the machine's load fairly.
"""

import argparse
import contextlib
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, StoppingCriteria, StoppingCriteriaList

from hf_music_xl import MusicXLConfig, MusicXLForCausalLM

PROMPT = [[0, 1, 69, 141, 64, 145, 8, 141, 71, 141]]  # xxbos xxpad n60 d4 n55 d8 xxsep d4 n62 d4


class StepClock(StoppingCriteria):
    """Records the time of every generation step (called once per new token); never stops."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def build_models(preset, max_positions, dropout):
    config = MusicXLConfig.from_preset(preset, dropout=dropout)
    torch.manual_seed(0)
    xl = MusicXLForCausalLM(config)
    gpt2_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=max_positions,
        n_embd=config.d_model,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.d_inner,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=0.0,  # MusicXL's attn_dropout is 0 by default
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    gpt2 = GPT2LMHeadModel(gpt2_config)
    return xl, gpt2


def count(model):
    return sum(p.numel() for p in model.parameters())


def precision(name):
    """The autocast context of a precision name: "bf16" (CPU autocast) or "fp32" (none)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()


def bench_training(runs, batch, length, steps):
    """tokens/s of forward + backward + AdamW of each run (name -> (model, precision, carry memory)), alternating
    the runs step by step so that they share the machine's load."""
    ids = torch.randint(9, 298, (batch, length), generator=torch.Generator().manual_seed(0))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _, _) in runs.items()}
    memories = dict.fromkeys(runs)
    elapsed = dict.fromkeys(runs, 0.0)
    for step in range(steps + 2):  # two warm-up steps
        for name, (model, dtype, carry_memory) in runs.items():
            model.train()
            inputs = {"past_key_values": memories[name], "use_cache": True} if carry_memory else {}
            start = time.perf_counter()
            with precision(dtype):
                out = model(input_ids=ids, labels=ids, **inputs)
            out.loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if step >= 2:
                elapsed[name] += time.perf_counter() - start
            memories[name] = out.past_key_values if carry_memory else None
    return {name: batch * length * steps / seconds for name, seconds in elapsed.items()}


def timed_generate(model, new_tokens, use_cache=True):
    """(seconds, per-step timestamps) of greedy generation of exactly new_tokens tokens."""
    model.eval()
    clock = StepClock()
    prompt = torch.tensor(PROMPT)
    start = time.perf_counter()
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=use_cache,
        stopping_criteria=StoppingCriteriaList([clock]),
    )
    seconds = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return seconds, [start] + clock.times


def interleaved_step_ratio(model, early_tokens, late_tokens, steps=200):
    """Speed of a cached step after late_tokens vs after early_tokens consumed, the two alternated step by step so
    that both see the same machine load: (median ms early, median ms late, early/late)."""
    ids = torch.randint(9, 298, (1, late_tokens), generator=torch.Generator().manual_seed(0))
    early = model(ids[:, :early_tokens], use_cache=True).past_key_values
    late = model(ids, use_cache=True).past_key_values
    token = torch.tensor([[69]])
    times = {"early": [], "late": []}
    for _ in range(steps):
        for name, cache in (("early", early), ("late", late)):
            start = time.perf_counter()
            model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            times[name].append(time.perf_counter() - start)
    early_ms, late_ms = (torch.tensor(times[name]).median().item() * 1000 for name in ("early", "late"))
    return early_ms, late_ms, early_ms / late_ms


def window_rate(times, first, last):
    """tokens/s between steps first and last of the timestamps."""
    return (last - first) / (times[last] - times[first])


def median_rate(times, first, last):
    """1 / median step time between steps first and last: robust to other processes taking the CPU for a while."""
    steps = torch.tensor(times[first : last + 1], dtype=torch.float64).diff()
    return 1.0 / steps.median().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--quick", action="store_true", help="shorter runs (about a minute)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512, help="training row length (MusicXL: 2 segments)")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--long-tokens", type=int, default=4096)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length, args.train_steps, args.new_tokens, args.long_tokens = 4, 256, 3, 256, 2048
    torch.set_num_threads(args.threads)
    window = min(1024, args.long_tokens // 4)

    xl, gpt2 = build_models(args.preset, len(PROMPT[0]) + args.long_tokens + 8, dropout=0.1)
    c = xl.config
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"dims: preset {args.preset}, d_model {c.d_model}, layers {c.n_layer}, heads {c.n_head}, d_inner {c.d_inner}; "
        f"MusicXL segment_len {c.segment_len}, mem_len {c.mem_len}; params MusicXL {count(xl) / 1e6:.2f}M, "
        f"GPT-2 {count(gpt2) / 1e6:.2f}M"
    )

    runs = {
        f"{model} {dtype}": (module, dtype, False)
        for dtype in ("fp32", "bf16")
        for model, module in (("MusicXL", xl), ("GPT-2", gpt2))
    }
    rates = bench_training(runs, args.batch, args.length, args.train_steps)
    print(
        f"1. training (batch {args.batch} x {args.length}), tokens/s: "
        + ", ".join(f"{n} {r:.0f}" for n, r in rates.items())
    )
    for dtype in ("fp32", "bf16"):
        print(f"   {dtype}: MusicXL / GPT-2 {rates[f'MusicXL {dtype}'] / rates[f'GPT-2 {dtype}']:.2f}x (target >= 1.0)")
    print(f"   MusicXL bf16 / fp32 {rates['MusicXL bf16'] / rates['MusicXL fp32']:.2f}x (target >= 1.6)")
    best = "bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32"
    carry = bench_training(
        {"stream": (xl, best, True), "windows": (xl, best, False)}, args.batch, args.length, args.train_steps
    )
    print(
        f"1s. stream training ({best}, memory carried from the step before) {carry['stream']:.0f} tok/s, "
        f"window training (first segment without memory) {carry['windows']:.0f} tok/s: "
        f"stream / windows {carry['stream'] / carry['windows']:.2f}x"
    )

    with torch.no_grad():
        # the uncached run takes minutes: time the cached one before and after it, to share the machine's load
        cached_before, _ = timed_generate(xl, args.new_tokens)
        uncached, _ = timed_generate(xl, args.new_tokens, use_cache=False)
        cached_after, _ = timed_generate(xl, args.new_tokens)
        cached = (cached_before + cached_after) / 2
        print(
            f"2. generation of {args.new_tokens} tokens: cached {args.new_tokens / cached:.1f} tok/s "
            f"(mean of runs before and after), "
            f"use_cache=False {args.new_tokens / uncached:.1f} tok/s, speed-up {uncached / cached:.1f}x (target >= 10)"
        )

        xl_long, xl_times = timed_generate(xl, args.long_tokens)
        gpt2_long, gpt2_times = timed_generate(gpt2, args.long_tokens)
        n = args.long_tokens
        first, last = window_rate(xl_times, 0, window), window_rate(xl_times, n - window, n)
        median_first, median_last = median_rate(xl_times, 0, window), median_rate(xl_times, n - window, n)
        gpt2_first, gpt2_last = window_rate(gpt2_times, 0, window), window_rate(gpt2_times, n - window, n)
        print(
            f"3. flat cost over {n} tokens: MusicXL first {window} {first:.1f} tok/s, last {window} {last:.1f} tok/s, "
            f"ratio {last / first:.2f} (target >= 0.8); by median step time {median_first:.1f} -> "
            f"{median_last:.1f} tok/s, ratio {median_last / median_first:.2f}; GPT-2 for comparison "
            f"{gpt2_first:.1f} -> {gpt2_last:.1f} tok/s, ratio {gpt2_last / gpt2_first:.2f}"
        )
        early_ms, late_ms, ratio = interleaved_step_ratio(xl.eval(), window, n)
        print(
            f"3b. the same, load-robust: a cached step after {n} tokens vs after {window}, alternated step by step: "
            f"{late_ms:.2f} ms vs {early_ms:.2f} ms (median), speed ratio {ratio:.2f}"
        )
        print(
            f"4. {n} new tokens: MusicXL {n / xl_long:.1f} tok/s ({xl_long:.1f} s), GPT-2 with KV cache "
            f"{n / gpt2_long:.1f} tok/s ({gpt2_long:.1f} s), MusicXL {gpt2_long / xl_long:.2f}x faster (target > 1)"
        )
        seconds = {"fp32": 0.0, "bf16": 0.0}
        for _ in range(2):  # alternated
            for dtype in seconds:
                with precision(dtype):
                    seconds[dtype] += timed_generate(xl, args.new_tokens)[0]
        print(
            f"5. generation of {args.new_tokens} tokens in bf16 autocast "
            f"{2 * args.new_tokens / seconds['bf16']:.1f} tok/s, "
            f"fp32 {2 * args.new_tokens / seconds['fp32']:.1f} tok/s: "
            f"bf16 / fp32 {seconds['fp32'] / seconds['bf16']:.2f}x"
        )


if __name__ == "__main__":
    main()
