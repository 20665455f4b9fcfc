# The two commands of the README: `make demo` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

DEMO    ?= demo_out
DATA     = $(DEMO)/data
export TF_CPP_MIN_LOG_LEVEL = 3

.PHONY: setup test demo clean

setup: $(STAMP)

# Re-install only when setup.py changes (or the venv is new).
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,beam,tpu-aot]'  # beam, tpu-aot: CI tests the Beam builds and TPU plans too
	touch $(STAMP)

# Run serially, the suite keeps one core busy (subprocess start-up, tiny models: 436 tests took
# 18.5 min at 94% of one core); one pytest worker per core (pytest-xdist) ran 478 in 12.3 min on 2.
test: $(STAMP)
	$(PY) -m pytest -q -n auto tests

# Small synthetic storms -> CV split -> records of all four kinds and the frame store -> three 5-fold
# experiments with TTA (single frame, stacked history, and a CNN-LSTM over a 6-frame sequence
# assembled from the frame store) -> their ensemble -> the
# leaderboard of the three. Under 10 minutes on a 2-core CPU.
RUNS      = $(DEMO)/runs
DEMO_FLAGS = --job=train_val_test_score_subm --data_dir=$(DATA) --backbone=MobileNetV3Small --weights=None \
	--dim=64 --bn_momentum=0.9 --n_epochs=6 --batch_size=32 --lr=3e-3 --tta_number=3

demo: $(STAMP)
	$(PY) data_prep/make_synthetic.py --out_dir=$(DATA) --overwrite --size=64 --n_storms=30 \
		--n_test_only_storms=5 --min_frames=15 --max_frames=50
	$(PY) data_prep/create_cv_split.py --data_dir=$(DATA)
	$(PY) data_prep/create_tfrecords.py --data_dir=$(DATA) --specs=single,stacked:s2,mean:s2,sequence:n6:s1,frames
	$(PY) experiments/run-20261121-1300-cnn-1ch/run.py $(DEMO_FLAGS) \
		--data_tfrec_dir=$(DATA)/data-tfrec-single-frames001-step001 --output_dir=$(RUNS)/run-20261121-1300-cnn-1ch
	$(PY) experiments/run-20261121-1310-cnn-3ch-ind/run.py $(DEMO_FLAGS) \
		--data_tfrec_dir=$(DATA)/data-tfrec-stacked-frames003-step002 --output_dir=$(RUNS)/run-20261121-1310-cnn-3ch-ind
	$(PY) experiments/run-20261121-1330-cnn-lstm/run.py $(DEMO_FLAGS) \
		--frame_store=$(DATA)/data-frames --assemble=sequence:n6:s1 --output_dir=$(RUNS)/run-20261121-1330-cnn-lstm
	$(PY) tools/ensemble.py --data_dir=$(DATA) --model_dirs='$(RUNS)/run-*' --out_dir=$(DEMO)/ensemble \
		--method=pairwise
	$(PY) tools/leaderboard.py --runs=$(RUNS) --out_csv=$(DEMO)/experiments.csv --plot=$(DEMO)/leaderboard.png

clean:
	rm -rf $(DEMO)
