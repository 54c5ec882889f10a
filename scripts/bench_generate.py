"""Batched generation speed: MusicXL with its memory against GPT-2 (same dims) with its KV cache, in one run (CPU).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_generate.py              # a few minutes
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_generate.py --profile    # + top ops of a step
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_generate.py --variants   # + compiled, bf16 weights

For 1, 4, 16 and 64 rows (greedy, exactly --new-tokens new tokens a row; --new-tokens-64 at 64 rows, to keep the run
short), prints each model's tokens/s (MusicXL in float32, as GPT-2, and with its linears in bfloat16, as the sampling
commands run it on a CPU with native bf16) over the cached steps (the prompt's forward excluded), the floor of each: the
step's linears (every layer's projections and the output head) timed alone at that batch, as tokens/s, and the
fraction of the floor reached. Then the flat-cost check: one row, --long-tokens new tokens, tokens/s of the last
1,024 against the first 1,024. Random weights (speed does not depend on them); the two models and their floors
alternate at each batch size so that they share the machine's load; each figure is the best of --repeats runs. The
target at one row, a step within 1.5x its floor, is a fraction of at least 0.67. The token counts are the issue's
(1,024 a row, 512 at 64 rows): GPT-2's KV cache grows with them while MusicXL's memory stops at mem_len +
segment_len, so shorter runs hide the difference at large batches, where reading the keys and values costs more than
the linears.

--variants also measures, against the eager fp32 model in the same run at 1, 16 and 64 rows: the blocks' linear
weights stored in bfloat16 (`store_linears_in`, what the sampling commands do on a CPU with native bf16), the whole
model in bfloat16, and every block compiled (torch.compile, dynamic shapes, since the memory grows step by step; the
first call's compile time is reported, and a failure to compile is reported, not raised); each with the share of
greedy tokens equal to the fp32 eager ones. Then the released model (--release) in fp32 and with bf16 linears: NLL on
the validation chorales and --quality-tokens greedy tokens from four of their openings.
"""

import argparse
import copy
import time
from pathlib import Path

import torch
from bench_model import PROMPT, StepClock, build_models, count, window_rate
from torch.profiler import ProfilerActivity, profile
from transformers import StoppingCriteriaList

ROWS = (1, 4, 16, 64)


def step_rate(model, rows, new_tokens):
    """(tokens/s over the cached steps, per-step timestamps) of greedy generation of new_tokens tokens per row."""
    prompt = torch.tensor(PROMPT).repeat(rows, 1)
    clock = StepClock()
    start = time.perf_counter()
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        stopping_criteria=StoppingCriteriaList([clock]),
    )
    assert out.shape == (rows, prompt.shape[1] + new_tokens)
    times = [start] + clock.times  # times[1]: after the prompt's forward and the first token
    return rows * (new_tokens - 1) / (times[new_tokens] - times[1]), times


def step_linears(model):
    """The linear layers one generation step runs, in order, and the output head."""
    if hasattr(model, "transformer") and hasattr(model.transformer, "layers"):  # MusicXL
        per_layer = [
            (layer.attention.qkv_proj, layer.attention.out_proj, layer.ff_in, layer.ff_out)
            for layer in model.transformer.layers
        ]
    else:  # GPT-2 (Conv1D layers)
        per_layer = [(b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj) for b in model.transformer.h]
    return [linear for layer in per_layer for linear in layer] + [model.lm_head]


def floor_rate(model, rows, steps=50):
    """tokens/s if a step cost only its linears at this batch: (rows, 1, in) through each, median of `steps`."""
    linears = step_linears(model)
    inputs = [
        torch.randn(rows, 1, (m.in_features if hasattr(m, "in_features") else m.weight.shape[0])) for m in linears
    ]
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        for linear, x in zip(linears, inputs):
            linear(x)
        seconds.append(time.perf_counter() - start)
    return rows / torch.tensor(seconds).median().item()


def print_profile(model, rows, steps=20):
    """Top ops (self CPU time) of `steps` cached steps at `rows` rows."""
    ids = torch.tensor(PROMPT).repeat(rows, 1)
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache, token = out.past_key_values, out.logits.argmax(-1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            out = model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits.argmax(-1)
    print(f"--- {type(model).__name__}, {rows} rows, {steps} cached steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def greedy(model, rows, new_tokens, prompt=PROMPT):
    """(seconds, tokens (rows, new_tokens)) of greedy generation of exactly new_tokens tokens a row."""
    ids = torch.tensor(prompt).repeat(rows, 1)
    start = time.perf_counter()
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
    )
    return time.perf_counter() - start, out[:, ids.shape[1] :]


def compiled(model):
    """A copy of `model` with every block compiled, and the seconds the first calls took (compiling); or None and the
    error where torch.compile does not work here."""
    model = copy.deepcopy(model)
    try:
        for layer in model.transformer.layers:
            layer.forward = torch.compile(layer.forward, dynamic=True)
        start = time.perf_counter()
        for rows in (1, 16):  # each batch size compiles once
            greedy(model, rows, 4)
        return model, time.perf_counter() - start
    except Exception as error:  # no compiler (e.g. no C++ toolchain): report it, the bench goes on
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def print_variants(xl, new_tokens, repeats):
    """tok/s of the compiled and bf16 variants against eager fp32 at 1 and 16 rows, and their greedy tokens."""
    variants = {
        "bf16 linears (`store_linears_in`)": (copy.deepcopy(xl).store_linears_in(torch.bfloat16), None),
        "all bf16 (`model.to(torch.bfloat16)`)": (copy.deepcopy(xl).to(torch.bfloat16), None),
    }
    model, compile_seconds = compiled(xl)
    if model is None:
        print(f"torch.compile failed: {compile_seconds}")
    else:
        variants["compiled blocks"] = (model, compile_seconds)
    print("| variant | rows | fp32 eager tok/s | variant tok/s | variant / eager | greedy tokens equal | first call |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, first_call) in variants.items():
        for rows in (1, 16, 64):
            best = {"eager": 0.0, "variant": 0.0}
            for _ in range(repeats):  # alternated, so that they share the load
                seconds, eager_tokens = greedy(xl, rows, new_tokens)
                best["eager"] = max(best["eager"], rows * new_tokens / seconds)
                seconds, tokens = greedy(model, rows, new_tokens)
                best["variant"] = max(best["variant"], rows * new_tokens / seconds)
            equal = (tokens == eager_tokens).double().mean().item()
            first = f"{first_call:.0f} s compiling" if first_call else "-"
            print(
                f"| {name} | {rows} | {best['eager']:.0f} | {best['variant']:.0f} | "
                f"{best['variant'] / best['eager']:.2f}x | {equal:.3f} | {first} |",
                flush=True,
            )


def print_release_quality(path, new_tokens, prompts=4, prompt_tokens=64):
    """The released model in fp32 and with bf16 linears: NLL on the validation chorales, and greedy tokens from the
    openings of the first `prompts` of them."""
    from transformers import AutoModelForCausalLM

    from hf_music_xl.data.corpus import load_corpus
    from hf_music_xl.evaluate import corpus_nll

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    validation = load_corpus("bach-chorales")["validation"]
    nll, same, total, first_differences = {}, 0, 0, []
    for dtype in (torch.float32, torch.bfloat16):
        nll[dtype] = corpus_nll(model.store_linears_in(dtype), validation, progress=False)["nll_per_note"]
    for piece in validation.select(range(prompts)):
        opening = piece["input_ids"][:prompt_tokens]
        fp32 = greedy(model.store_linears_in(torch.float32), 1, new_tokens, [opening])[1][0]
        bf16 = greedy(model.store_linears_in(torch.bfloat16), 1, new_tokens, [opening])[1][0]
        differs = (fp32 != bf16).nonzero()
        same, total = same + int((fp32 == bf16).sum()), total + new_tokens
        first_differences.append(differs[0].item() if len(differs) else None)
    print(
        f"released model ({path}): NLL per note on the {len(validation)} validation chorales {nll[torch.float32]:.5f} "
        f"in fp32, {nll[torch.bfloat16]:.5f} with bf16 linears ({nll[torch.bfloat16] / nll[torch.float32] - 1:+.4%}); "
        f"{new_tokens} greedy tokens from {prompts} openings: {same / total:.3f} equal, first differences at "
        f"{first_differences}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=1024, help="new tokens a row at 1, 4 and 16 rows")
    parser.add_argument("--new-tokens-64", type=int, default=512, help="new tokens a row at 64 rows")
    parser.add_argument("--long-tokens", type=int, default=4096, help="the flat-cost check (one row)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the top ops of a step at each batch")
    parser.add_argument("--variants", action="store_true", help="also bf16 linears, all bf16 and compiled blocks")
    parser.add_argument("--variant-tokens", type=int, default=256, help="new tokens a row for --variants")
    parser.add_argument("--release", default=str(Path(__file__).resolve().parents[1] / "models" / "chorale-xl"))
    parser.add_argument("--quality-tokens", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    xl, gpt2 = build_models(args.preset, len(PROMPT[0]) + args.long_tokens + 8, dropout=0.0)
    xl.eval(), gpt2.eval()
    c = xl.config
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; preset {args.preset}: d_model {c.d_model}, "
        f"layers {c.n_layer}, heads {c.n_head}, d_inner {c.d_inner}, segment_len {c.segment_len}, mem_len "
        f"{c.mem_len}; params MusicXL {count(xl) / 1e6:.2f}M, GPT-2 {count(gpt2) / 1e6:.2f}M"
    )
    with torch.no_grad():
        if args.profile:
            for rows in ROWS:
                print_profile(xl, rows)
        print(
            "| rows | new tokens a row | MusicXL tok/s | its floor | fraction | GPT-2 tok/s | its floor | fraction "
            "| MusicXL / GPT-2 | MusicXL bf16 linears tok/s | its floor | fraction | bf16 linears / GPT-2 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        models = {"xl": xl, "gpt2": gpt2, "bf16": copy.deepcopy(xl).store_linears_in(torch.bfloat16)}
        for rows in ROWS:
            new_tokens = args.new_tokens_64 if rows == 64 else args.new_tokens
            rates, floors = dict.fromkeys(models, 0.0), dict.fromkeys(models, 0.0)
            for _ in range(args.repeats):  # generation and floors alternated, so that they share the load
                for name, model in models.items():
                    rates[name] = max(rates[name], step_rate(model, rows, new_tokens)[0])
                    floors[name] = max(floors[name], floor_rate(model, rows))
            columns = [rows, new_tokens]
            for name in ("xl", "gpt2"):
                columns += [f"{rates[name]:.0f}", f"{floors[name]:.0f}", f"{rates[name] / floors[name]:.2f}"]
            columns += [f"{rates['xl'] / rates['gpt2']:.2f}x"]
            columns += [f"{rates['bf16']:.0f}", f"{floors['bf16']:.0f}", f"{rates['bf16'] / floors['bf16']:.2f}"]
            columns += [f"{rates['bf16'] / rates['gpt2']:.2f}x"]
            print("| " + " | ".join(str(column) for column in columns) + " |", flush=True)
        n, window = args.long_tokens, min(1024, args.long_tokens // 4)
        _, times = step_rate(xl, 1, n)
        first, last = window_rate(times, 1, window), window_rate(times, n - window, n)
        print(
            f"flat cost, one row, {n} new tokens: first {window} {first:.1f} tok/s, last {window} {last:.1f} tok/s, "
            f"ratio {last / first:.2f} (target 0.8-1.25)"
        )
        if args.variants:
            print_variants(xl, args.variant_tokens, args.repeats)
            if Path(args.release).is_dir():
                print_release_quality(args.release, args.quality_tokens)


if __name__ == "__main__":
    main()
