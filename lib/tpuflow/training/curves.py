"""Training curves per fold: loss and metrics of every epoch as CSV and as a PNG plot.

Files: `<output_dir>/curves/fold_<k>.csv` (one row per epoch: epoch, then every value Keras and
the runner's callbacks logged, e.g. loss, rmse, val_loss, val_rmse_rounded, learning_rate) and
`fold_<k>.png`. Both are rewritten atomically after every epoch, so a long run on a remote
machine can be watched (and a preempted one still leaves its curves). A fold resumed after a
kill keeps the rows of the epochs it does not redo (a `val_rmse` column, as runs made before the
two RMSEs had two names wrote the `--metric` score, is read under that score's name).
"""
from __future__ import annotations

import io

import keras
import matplotlib

matplotlib.use("Agg")  # files only: no display on TPU VMs and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

from tpuflow import storage  # noqa: E402


def curve_paths(output_dir: str, fold: int) -> tuple[str, str]:
    """(CSV path, PNG path) of a fold's curves."""
    base = storage.join(output_dir, "curves", f"fold_{fold}")
    return base + ".csv", base + ".png"


OLD_SCORE_COLUMN = "val_rmse"  # the --metric's validation score, before it was logged under its own name


def panel(column: str) -> str:
    """The quantity a column shows: training and validation values share a panel, the batches'
    raw `rmse` with the validation `val_rmse_rounded`, `val_rmse_raw` (or an old `val_rmse`)."""
    return column.removeprefix("val_").removesuffix("_rounded").removesuffix("_raw")


def plot_curves(table: pd.DataFrame, title: str) -> bytes:
    """PNG bytes: one panel per quantity (training and validation values together), over epochs."""
    columns = [c for c in table.columns if c != "epoch"]
    names = sorted({panel(c) for c in columns})
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for column in (c for c in columns if panel(c) == name):
            ax.plot(table["epoch"], table[column], marker="o", label=column)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


class TrainingCurves(keras.callbacks.Callback):
    """Keeps every epoch's logs and writes the fold's CSV and PNG after each epoch.

    Put it after the callbacks that add values to the logs (validation score, LR schedule) so
    their values are included. `score`: the epoch-log key of the validation score, under which a
    resumed fold reads its earlier rows' old `val_rmse` column.
    """

    def __init__(self, output_dir: str, fold: int, title: str = "", score: str | None = None):
        super().__init__()
        self.score = score
        self.csv_path, self.png_path = curve_paths(output_dir, fold)
        self.title = f"{title} fold {fold}".strip()
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        self.rows = None  # known at the first epoch: which earlier rows (if resumed) to keep

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is None:
            earlier = pd.read_csv(io.BytesIO(storage.read_bytes(self.csv_path))) \
                if epoch and storage.exists(self.csv_path) else pd.DataFrame({"epoch": []})
            if self.score and OLD_SCORE_COLUMN in earlier and self.score not in earlier:
                earlier = earlier.rename(columns={OLD_SCORE_COLUMN: self.score})
            self.rows = earlier[earlier["epoch"] <= epoch].to_dict("records")

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        table = pd.DataFrame(self.rows)
        storage.write_text(self.csv_path, table.to_csv(index=False))
        storage.write_bytes(self.png_path, plot_curves(table, self.title))
