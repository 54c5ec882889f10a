"""Mutation score per module from mutmut's results (run `make mutation` first), and the surviving mutants.

    python scripts/mutation_report.py                 # scores per module
    python scripts/mutation_report.py --survivors     # and every surviving mutant's name
    python scripts/mutation_report.py --sample 80 --names   # a seeded random sample of 80 mutants per module
    python scripts/mutation_report.py --sample 80 --survivors   # the scores and survivors of that sample only

Reads mutants/src/hf_music_xl/**/*.meta (mutmut 3 writes one per mutated file). A module's score is the share of the
mutants run that a test caught (failed, crashed or timed out); a mutant that no test of the pool reaches counts as
survived. For corpus.py only the cache logic is mutation-tested (CORPUS_CACHE_FUNCTIONS), as `make mutation` runs
it. A sampled run (`make mutation SAMPLE=N`) scores the sampled mutants only: the score is an estimate of the
module's, within about +-1/sqrt(N) at worst (95%).
"""

import argparse
import json
import random
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants/src/hf_music_xl")
MODULES = (  # paths under src/hf_music_xl, without .py
    "models/music_xl/encoding",
    "models/music_xl/modeling_music_xl",
    "models/music_xl/positions_music_xl",
    "models/music_xl/cache_music_xl",
    "models/music_xl/generation_music_xl",
    "data/windows",
    "data/pieces",
    "data/corpus",
)
# the corpus cache: where a build goes, its key, and whether it is reused, replaced or copied
CORPUS_CACHE_FUNCTIONS = (
    "default_cache_dir",
    "cache_key",
    "_slug",
    "build_corpus",
    "_copy_corpus",
    "load_corpus",
    "read_report",
)
# mutmut's exit codes; a test run that crashed (killed by a signal: -9, -11) or ran out of time did not pass: the
# mutant is caught, and counted killed (the timeouts are also shown apart)
STATUS = {
    1: "killed",
    3: "killed",
    -9: "killed",
    -11: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    None: "not run",
    36: "timeout",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
}


def function_of(mutant: str) -> str:
    """'hf_music_xl.data.windows.xǁTrainTransformǁwindow__mutmut_3' -> 'TrainTransform.window'."""
    name = mutant.split(".")[-1].rsplit("__mutmut_", 1)[0].removeprefix("x_").removeprefix("x")
    return ".".join(part for part in name.split("ǁ") if part)


def selected(module: str, mutant: str) -> bool:
    return module != "data/corpus" or function_of(mutant) in CORPUS_CACHE_FUNCTIONS


def results(module: str, sample: int = 0, seed: int = 0) -> dict[str, str]:
    """mutant name -> status, for the mutants of the module that `make mutation` runs (a seeded random sample of
    ``sample`` of them, if given)."""
    meta = MUTANTS / f"{module}.py.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    names = sorted(name for name in codes if selected(module, name))
    if sample:
        names = random.Random(f"{seed}-{module}").sample(names, min(sample, len(names)))
    return {name: STATUS.get(codes[name], "suspicious") for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    parser.add_argument("--sample", type=int, default=0, help="only N mutants per module, drawn at random (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--names", action="store_true", help="print the names of the mutants, not the scores")
    args = parser.parse_args()
    if args.names:
        print("\n".join(name for module in MODULES for name in results(module, args.sample, args.seed)))
        return
    print("| module | mutants | run | killed | survived | no tests | timeout | caught (killed + timeout) / run |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for module in MODULES:
        statuses = results(module, args.sample, args.seed)
        counts = Counter(statuses.values())
        run = len(statuses) - counts["not run"]
        caught = counts["killed"] + counts["timeout"]
        decided = caught + counts["survived"] + counts["no tests"]
        score = f"{100 * caught / decided:.1f}%" if decided else "-"
        print(
            f"| {module}.py | {len(statuses)} | {run} | {counts['killed']} | {counts['survived']} | "
            f"{counts['no tests']} | {counts['timeout']} | {score} |"
        )
    if args.survivors:
        for module in MODULES:
            for name, status in results(module, args.sample, args.seed).items():
                if status in ("survived", "no tests", "suspicious"):
                    print(f"{status:9} {name}")


if __name__ == "__main__":
    main()
