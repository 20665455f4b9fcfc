"""Copy a directory tree to or from Cloud Storage: parallel, skipping files that already match,
verifying every transfer by checksum, resuming big uploads, manifests last.

Usage: python tools/gcs_sync.py --src=DIR --dst=gs://bucket/prefix [--workers=8] [--dry_run]
       python tools/gcs_sync.py --src=gs://bucket/prefix --dst=DIR [--workers=8] [--dry_run]

Credentials come from the standard Google environment (`gcloud auth application-default login`,
a service account on the VM, or GOOGLE_APPLICATION_CREDENTIALS); they are never printed. Nothing
is deleted at the destination; a file that a symlink leads out of --src is not uploaded (one line
names it). An endpoint that does not answer, or credentials that do not work, fail within
--timeout_s seconds. Exit status 0 on success, 1 with a message naming the bucket, object or path
on failure.
"""
from __future__ import annotations

from absl import app, flags

from tpuflow import cli
from tpuflow.storage import sync

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Local directory or gs://bucket/prefix to copy from.")
flags.DEFINE_string("dst", None, "gs://bucket/prefix or local directory to copy to.")
flags.DEFINE_integer("workers", 8, "Parallel transfers.")
flags.DEFINE_bool("dry_run", False, "List what would be copied, copy nothing.")
flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"],
                  "Progress on stderr; 'auto': a redrawn line on a terminal, a line every 10 s in a log.")
flags.DEFINE_integer("resumable_threshold_mb", 32,
                     "Upload files of at least this many MiB through resumable sessions.")
flags.DEFINE_integer("chunk_size_mb", 16, "Chunk size of resumable uploads in MiB.")
flags.DEFINE_string("state_dir", sync.DEFAULT_STATE_DIR,
                    "Where resumable upload sessions are remembered between runs.")
flags.DEFINE_integer("retries", 3, "Attempts per file before a checksum mismatch is an error.")
flags.DEFINE_float("timeout_s", 30, "Seconds the storage endpoint may take to answer a first request "
                   "before the sync fails, naming it (a dead endpoint, bad credentials).")
flags.mark_flags_as_required(["src", "dst"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # OSError / ValueError (a missing bucket, object or path; a checksum mismatch): one line, exit 1
    report = sync.sync(
        FLAGS.src, FLAGS.dst, workers=FLAGS.workers, dry_run=FLAGS.dry_run,
        progress={"auto": None, "on": True, "off": False}[FLAGS.progress],
        retries=FLAGS.retries, resumable_threshold=FLAGS.resumable_threshold_mb << 20,
        chunk_size=FLAGS.chunk_size_mb << 20, state_dir=FLAGS.state_dir, timeout_s=FLAGS.timeout_s)
    for t in report.planned if report.dry_run else []:
        print(f"would copy {t.name} ({t.size} bytes, {t.reason})")
    print(report.summary())
    return 0


if __name__ == "__main__":
    cli.run_main(main)
