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
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Small synthetic storms -> CV split -> records of all four kinds -> a 5-fold CNN with TTA ->
# CV scores next to the mean baseline, and a submission. A few minutes on a 2-core CPU.
demo: $(STAMP)
	$(PY) data_prep/make_synthetic.py --out_dir=$(DATA) --overwrite --size=64 --n_storms=30 \
		--n_test_only_storms=5 --min_frames=15 --max_frames=50
	$(PY) data_prep/create_cv_split.py --data_dir=$(DATA)
	$(PY) data_prep/create_tfrecords.py --data_dir=$(DATA) --specs=single,stacked:s2,mean:s2,sequence:n6:s1
	$(PY) experiments/run-20261121-1300/run.py --job=train_val_test_score_subm \
		--data_dir=$(DATA) --data_tfrec_dir=$(DATA)/data-tfrec-single-frames001-step001 \
		--output_dir=$(DEMO)/runs/run-20261121-1300 --backbone=MobileNetV3Small --weights=None \
		--dim=64 --bn_momentum=0.9 --n_epochs=6 --batch_size=32 --lr=3e-3 --tta_number=3

clean:
	rm -rf $(DEMO)
