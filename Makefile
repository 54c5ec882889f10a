# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# 2 cores: one thread per process keeps torch and numpy from oversubscribing.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint format bench quality-report release-model release-report constraints mutation

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,audio,app]'
	touch $@

demo: install
	$(BIN)/hf-music-xl demo

test: install
	$(BIN)/python -m pytest -q

# ruff, the house style (configured in pyproject.toml): `make lint` checks, `make format` rewrites.
lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: install
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

bench: install
	$(BIN)/python scripts/bench_tokenizer.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_model.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_compile.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_generate.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_samples.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_streams.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_peak.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_corpus.py

quality-report: install
	OMP_NUM_THREADS=1 $(BIN)/python scripts/quality_report.py

# The released model (models/chorale-xl): trained from seed 0 (~100 min on 2 cores: one thread, while the GPT-2 of
# the same size that the report compares with trains on the other), then measured; replaces the folder.
release-model: install
	OMP_NUM_THREADS=1 $(BIN)/python scripts/train_release.py --threads 1 --anchor
	$(MAKE) release-report

release-report: install
	OMP_NUM_THREADS=1 $(BIN)/python scripts/release_report.py

constraints:
	$(BIN)/python -m pip freeze --exclude-editable | sed -e 's/^torch==\([0-9.]*\)+cpu/torch==\1/' > constraints.txt.new
	(head -2 constraints.txt; cat constraints.txt.new) > constraints.txt.tmp && rm constraints.txt.new && mv constraints.txt.tmp constraints.txt

# Mutation testing of the core (slow: not part of `make test` or CI; see TESTING.md). mutmut mutates each module in
# turn and runs, per mutant, only the tests of the pool in pyproject.toml ([tool.mutmut]) that call the mutated
# function. Starts from scratch each time; the chorale MIDI files are made once for all its pytest sessions. HOME and
# $HF_MUSIC_XL_CACHE point into mutants/: a mutant of the corpus cache must not write into the real ~/.cache.
# `make mutation SAMPLE=80` runs a seeded random sample of 80 mutants per module (the corpus cache's _slug first,
# which makes every module's mutants): about 45 minutes on 2 cores, against many hours for all of them.
MUTATE = models.music_xl.generation_music_xl data.windows data.pieces models.music_xl.encoding \
	models.music_xl.modeling_music_xl models.music_xl.attention_music_xl models.music_xl.positions_music_xl models.music_xl.cache_music_xl
CORPUS_CACHE = default_cache_dir cache_key _slug build_corpus _copy_corpus load_corpus read_report
SAMPLE ?= 0
MUTMUT = nice -n 19 $(BIN)/mutmut run --max-children 2
mutation: install
	rm -rf mutants
	mkdir -p mutants/home
	export HF_MUSIC_XL_TEST_MIDI_CACHE=$(CURDIR)/mutants/midi-cache HOME=$(CURDIR)/mutants/home \
		HF_MUSIC_XL_CACHE=$(CURDIR)/mutants/home/cache; \
	if [ "$(SAMPLE)" != 0 ]; then \
		$(MUTMUT) "hf_music_xl.data.corpus.x__slug__mutmut_*" && \
		$(MUTMUT) $$($(BIN)/python scripts/mutation_report.py --sample $(SAMPLE) --names) || exit 1; \
	else \
		for module in $(MUTATE); do $(MUTMUT) "hf_music_xl.$$module.*" || exit 1; done; \
		$(MUTMUT) $(foreach f,$(CORPUS_CACHE),"hf_music_xl.data.corpus.x_$(f)__mutmut_*"); \
	fi
	$(BIN)/python scripts/mutation_report.py --sample $(SAMPLE) --survivors
