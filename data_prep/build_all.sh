#!/usr/bin/env bash
# Usage: data_prep/build_all.sh DATA_DIR [OUT_DIR] [extra create_tfrecords.py flags...]
#
# Builds the reference batch of 15 datasets (data_prep/reference_specs.txt) in one pass over the
# frames. Safe to re-run: complete datasets are skipped and only missing or damaged shards are
# rewritten. Flags (--workers=1, --shards_per_fold=8, ...) may follow DATA_DIR or OUT_DIR.
set -euo pipefail
if [[ $# -lt 1 || "$1" == --* ]]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
data_dir="$1"
shift
out_dir="$data_dir"
if [[ $# -ge 1 && "$1" != --* ]]; then
  out_dir="$1"
  shift
fi
# The spec list and the two dirs are this script's: a flag that sets them again would be ignored
# (or, worse, win): refuse it.
for arg in "$@"; do
  case "$arg" in
    --specs|--specs=*|--spec_file|--spec_file=*|--data_dir|--data_dir=*|--out_dir|--out_dir=*|--explain|--explain=*)
      echo "build_all.sh: error: ${arg%%=*} conflicts with build_all.sh's own (DATA_DIR, OUT_DIR and" \
           "the spec list $here/reference_specs.txt); run data_prep/create_tfrecords.py for other ones" >&2
      exit 2 ;;
  esac
done
exec "${PYTHON:-python}" "$here/create_tfrecords.py" --data_dir="$data_dir" --out_dir="$out_dir" \
  --spec_file="$here/reference_specs.txt" "$@"
