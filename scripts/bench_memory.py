"""Memory of a long generation: a 100,000-token piece runs in constant model-state memory (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_memory.py                   # 100,000 tokens: several minutes
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_memory.py --tokens 5000 --sample-every 1000

Generates with ``generate.generate_continuation`` (chunks of ``--chunk`` tokens, each generate() call resuming the
memory cache the previous one returned) from a tiny random model (1 layer, d_model 32, mem_len 64: speed and
memory of the state do not depend on the weights). After every chunk it records:

- the bytes held by the ``MusicXLCache`` (key/value buffers, per-token records, projected relative encodings):
  what must stay constant; its buffers hold ``2 * (mem_len + segment_len)`` rows whatever the length;
- the process's resident memory (VmRSS from /proc/self/status) and its peak (VmHWM);
- the ids generated so far, which generate() keeps as ``input_ids`` (8 bytes a token, 0.8 MB at 100,000 tokens,
  plus an attention mask of the same size while a call runs): the one thing that does grow, by design.

Prints one row per sample and the RSS growth between the first sample and the end. ``--loop`` runs the model
alone (forward with the cache, one token at a time, no generate(), ids not kept): the model state by itself.

Measured on the 2-core box under load from other jobs (per-token times depend on that load):
- generate_continuation, 100,000 tokens in chunks of 1,000: the cache 41,104 bytes (128 = 2 * mem_len rows) at
  every sample from 10,000 to 100,000 tokens; RSS 364.7 MB at 10,000 tokens, 372.2 MB at 100,000 (+7.5 MB, 2%:
  the growing ids and attention mask generate() keeps, 1.6 MB, and the allocator around them); 524 s.
- --loop, 100,000 tokens: cache 41,104 bytes and RSS 362.4 MB from 10,000 to 100,000 tokens (+0.0 MB); 295 s.
"""

import argparse
import time

import torch

from hf_music_xl import MusicXLConfig, MusicXLForCausalLM
from hf_music_xl.generate import empty_prompt, generate_continuation
from hf_music_xl.models.music_xl.sampling_music_xl import SamplingRequest


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def tiny_model(mem_len: int = 64) -> MusicXLForCausalLM:
    config = MusicXLConfig.from_preset(
        "tiny",
        n_layer=1,
        d_model=32,
        n_head=2,
        d_head=16,
        d_inner=64,
        segment_len=mem_len,
        mem_len=mem_len,
        dropout=0.0,
    )
    torch.manual_seed(0)
    return MusicXLForCausalLM(config).eval()


def run(tokens: int, chunk: int, sample_every: int, mem_len: int = 64, report=print) -> list[dict]:
    """Generate ``tokens`` new tokens; return a sample (tokens, cache rows/bytes, RSS) every ``sample_every``."""
    model = tiny_model(mem_len)
    samples, started = [], time.perf_counter()
    generate = model.generate

    def recording_generate(*args, **kwargs):  # generate_continuation calls this once per chunk
        out = generate(*args, **kwargs)
        done = out.sequences.shape[1] - 2
        if done // sample_every > (done - chunk) // sample_every or done >= tokens:
            cache = out.past_key_values
            sample = dict(
                tokens=done,
                cache_rows=cache.keys[0].shape[2],
                cache_bytes=cache.nbytes(),
                rss_mb=rss_kb() / 1024,
                peak_mb=rss_kb("VmHWM") / 1024,
                seconds=time.perf_counter() - started,
            )
            samples.append(sample)
            report(
                f"{sample['tokens']:>8} {sample['cache_rows']:>6} {sample['cache_bytes']:>9} {sample['rss_mb']:>9.1f} "
                f"{sample['peak_mb']:>9.1f} {sample['seconds']:>8.1f}"
            )
        return out

    model.generate = recording_generate
    report(f"{'tokens':>8} {'rows':>6} {'cache B':>9} {'RSS MB':>9} {'peak MB':>9} {'seconds':>8}")
    request = SamplingRequest(bars=0, max_new_tokens=tokens, chunk_tokens=chunk)
    ids = generate_continuation(model, empty_prompt(), request, progress=False)
    assert len(ids) == tokens + 2
    return samples


@torch.no_grad()
def run_loop(tokens: int, sample_every: int, mem_len: int = 64, report=print) -> list[dict]:
    """The model alone: one token at a time through forward() with the cache, keeping no sequence (the ids are
    counted, not stored), so whatever grows here would be the model state's."""
    model = tiny_model(mem_len)
    torch.manual_seed(0)
    out = model(torch.tensor([[0, 1]]), use_cache=True)
    cache, samples, started = out.past_key_values, [], time.perf_counter()
    report(f"{'tokens':>8} {'rows':>6} {'cache B':>9} {'RSS MB':>9} {'peak MB':>9} {'seconds':>8}")
    for done in range(1, tokens + 1):
        next_token = torch.multinomial(out.logits[:, -1].softmax(-1), 1)
        out = model(next_token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        if done % sample_every == 0:
            sample = dict(
                tokens=done,
                cache_rows=cache.keys[0].shape[2],
                cache_bytes=cache.nbytes(),
                rss_mb=rss_kb() / 1024,
                peak_mb=rss_kb("VmHWM") / 1024,
                seconds=time.perf_counter() - started,
            )
            samples.append(sample)
            report(
                f"{sample['tokens']:>8} {sample['cache_rows']:>6} {sample['cache_bytes']:>9} {sample['rss_mb']:>9.1f} "
                f"{sample['peak_mb']:>9.1f} {sample['seconds']:>8.1f}"
            )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1000, help="tokens per generate() call")
    parser.add_argument("--sample-every", type=int, default=10_000)
    parser.add_argument("--mem-len", type=int, default=64)
    parser.add_argument("--loop", action="store_true", help="the model alone in a loop (no generate(), no ids kept)")
    args = parser.parse_args()
    if args.loop:
        samples = run_loop(args.tokens, args.sample_every, args.mem_len)
    else:
        samples = run(args.tokens, args.chunk, args.sample_every, args.mem_len)
    first, last = samples[0], samples[-1]
    print(
        f"cache: {first['cache_bytes']} B at {first['tokens']} tokens, {last['cache_bytes']} B at {last['tokens']}; "
        f"RSS {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB ({last['rss_mb'] - first['rss_mb']:+.1f} MB), "
        f"peak {last['peak_mb']:.1f} MB; {1000 * last['seconds'] / last['tokens']:.2f} ms a token"
    )


if __name__ == "__main__":
    main()
