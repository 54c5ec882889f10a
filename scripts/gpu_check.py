"""The checks to run the day a CUDA GPU is at hand (under 5 minutes), written to a JSON file.

    .venv/bin/python scripts/gpu_check.py                                 # on CUDA; exits cleanly without it
    .venv/bin/python scripts/gpu_check.py --device cpu --preset tiny      # the same checks on CPU (a dry run)

Checks, each recorded as {"ok": ..., figures or "error"} so that one failure does not hide the others:
  1. training steps (forward, backward, AdamW) in bf16 and fp16 autocast (fp16 with a GradScaler) through the
     relative attention: the losses are finite and fall on a repeated batch; tokens/s;
  2. cached generation equals recomputation: greedy tokens with the memory cache and with use_cache=False are the
     same, and the cached step's logits match a full forward's;
  3. torch.compile of the model's forward: its logits against eager, first-call seconds, speed against eager;
  3t. the training step with its attention compiled (`hf-music-xl train --compile`, on by default with CUDA): loss
     and gradients against eager (float32), first-call seconds, tokens/s against eager in bf16 (fp16) autocast;
  4. generation tokens/s at 1, 16 and 64 rows against GPT-2 of the same dims with SDPA attention, same device.
Figures from a GPU run are GPU figures: quote them as such (BENCHMARKS.md), with the device name from the file.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from bench_generate import step_rate
from bench_model import PROMPT, build_models


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_training(model, device, dtype, batch, length, steps=4):
    """Losses of `steps` training steps on one repeated batch in autocast `dtype`, and tokens/s after the first."""
    model.train()
    ids = torch.randint(9, 298, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    losses, start = [], None
    for step in range(steps):
        if step == 1:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            loss = model(ids, labels=ids).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    synchronize(device)
    seconds = time.perf_counter() - start
    finite = all(torch.isfinite(torch.tensor(losses)))
    return {
        "ok": bool(finite and losses[-1] < losses[0]),
        "losses": losses,
        "tokens_per_s": batch * length * (steps - 1) / seconds,
    }


def check_cache_equals_recomputation(model, device, new_tokens):
    """Greedy tokens with and without the memory cache, and the cached step's logits against a full forward."""
    model.eval()
    prompt = torch.tensor(PROMPT, device=device).repeat(2, 1)
    common = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    mask = torch.ones_like(prompt)
    cached = model.generate(prompt, attention_mask=mask, use_cache=True, **common)
    recomputed = model.generate(prompt, attention_mask=mask, use_cache=False, **common)
    cache = model(cached[:, :-1], use_cache=True).past_key_values
    step_logits = model(cached[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
    full_logits = model(cached).logits[:, -1]
    difference = (step_logits - full_logits).abs().max().item()
    same = torch.equal(cached, recomputed)
    return {"ok": bool(same and difference < 1e-3), "same_tokens": same, "max_logit_difference": difference}


def check_compile(model, device, length):
    """torch.compile of the forward: logits against eager, first-call seconds, steady speed against eager."""
    model.eval()
    ids = torch.randint(9, 298, (4, length), generator=torch.Generator().manual_seed(1)).to(device)
    compiled = torch.compile(model)
    start = time.perf_counter()
    got = compiled(ids).logits
    synchronize(device)
    first_call = time.perf_counter() - start
    expected = model(ids).logits
    seconds = {"eager": 0.0, "compiled": 0.0}
    for _ in range(3):  # alternated
        for name, forward in (("eager", model), ("compiled", compiled)):
            synchronize(device)
            start = time.perf_counter()
            forward(ids)
            synchronize(device)
            seconds[name] += time.perf_counter() - start
    difference = (got - expected).abs().max().item()
    return {
        "ok": difference < 1e-3,
        "max_logit_difference": difference,
        "first_call_s": first_call,
        "compiled_over_eager_speed": seconds["eager"] / seconds["compiled"],
    }


def check_compiled_training(preset, device, dtype, batch, length):
    """The training step with the attention compiled (`hf-music-xl train --compile`) against eager: loss and
    gradients of one batch in float32 without dropout (they must agree), the first compiled step's seconds (the
    compile), and tokens/s of both in autocast `dtype` (`check_training`)."""
    ids = torch.randint(9, 298, (batch, length), generator=torch.Generator().manual_seed(2)).to(device)
    models, steps, first_step = {}, {}, {}
    for name in ("eager", "compiled"):
        model = build_models(preset, length, dropout=0.0)[0].to(device).train()  # the same weights (seeded)
        model.compile_training_attention(name == "compiled")
        synchronize(device)
        start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        loss.backward()
        synchronize(device)
        first_step[name] = time.perf_counter() - start
        steps[name] = (loss.item(), [parameter.grad for parameter in model.parameters()])
        models[name] = model
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = steps["eager"], steps["compiled"]
    grad_difference = max((a - b).abs().max().item() for a, b in zip(eager_grads, compiled_grads))
    largest_grad = max(grad.abs().max().item() for grad in eager_grads)
    speed = {name: check_training(models[name], device, dtype, batch, length)["tokens_per_s"] for name in models}
    return {
        "ok": abs(eager_loss - compiled_loss) < 1e-4 and grad_difference < 1e-3 * largest_grad,
        "loss_difference": abs(eager_loss - compiled_loss),
        "max_grad_difference": grad_difference,
        "largest_grad": largest_grad,
        "first_call_s": first_step["compiled"],
        "eager_step_s": first_step["eager"],
        "tokens_per_s": speed,
        "compiled_over_eager_speed": speed["compiled"] / speed["eager"],
    }


def check_generation_speed(xl, gpt2, new_tokens):
    """Generation tokens/s (cached steps) of MusicXL and GPT-2 (SDPA) at 1, 16 and 64 rows."""
    gpt2.set_attn_implementation("sdpa")
    rows = {}
    for batch in (1, 16, 64):
        xl_rate, gpt2_rate = step_rate(xl.eval(), batch, new_tokens)[0], step_rate(gpt2.eval(), batch, new_tokens)[0]
        rows[str(batch)] = {"musicxl": xl_rate, "gpt2_sdpa": gpt2_rate, "musicxl_over_gpt2": xl_rate / gpt2_rate}
    return {"ok": True, "tokens_per_s": rows}


def run_check(results, name, check, *args):
    """Run one check, recording its figures or the error it raised."""
    print(f"{name} ...", flush=True)
    start = time.perf_counter()
    try:
        results[name] = check(*args)
    except Exception as error:  # a failing check is a result: record it and go on to the next
        results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    results[name]["seconds"] = time.perf_counter() - start
    print(f"{name}: {json.dumps(results[name])}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the point of this script) or cpu (a dry run)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check.json"))
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False; this torch is "
            f"{torch.__version__}): nothing checked, no file written. Run it on a machine with a GPU and a CUDA "
            "build of torch, or with --device cpu --preset tiny for a dry run of the checks.",
            file=sys.stderr,
        )
        return 0
    device = torch.device(args.device)
    dry_run = device.type == "cpu"
    batch, length, new_tokens = (2, 64, 16) if dry_run else (8, 512, 256)
    xl, gpt2 = build_models(args.preset, len(PROMPT[0]) + new_tokens + 8, dropout=0.0)
    xl, gpt2 = xl.to(device), gpt2.to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "preset": args.preset, "dry_run": dry_run}
    for label, dtype in (("train_bf16", torch.bfloat16), ("train_fp16", torch.float16)):
        run_check(results, label, check_training, xl, device, dtype, batch, length)
    fast_dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    run_check(results, "train_compiled", check_compiled_training, args.preset, device, fast_dtype, batch, length)
    with torch.no_grad():
        fresh, _ = build_models(args.preset, len(PROMPT[0]) + new_tokens + 8, dropout=0.0)  # untrained by step 1
        fresh = fresh.to(device)
        run_check(results, "cache_equals_recomputation", check_cache_equals_recomputation, fresh, device, 64)
        run_check(results, "compile", check_compile, fresh, device, length)
        run_check(results, "generation_speed", check_generation_speed, fresh, gpt2, new_tokens)
    results["all_ok"] = all(value["ok"] for value in results.values() if isinstance(value, dict))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"gpu_check: all ok {results['all_ok']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
