"""Results: saved predictions and scores, the run card, file names of checkpoints and
predictions, the leaderboard.

NumPy/pandas (matplotlib for the leaderboard plot); no TensorFlow at import, so the leaderboard
and the ensembles read results without it. May import `tpuflow.prep` (the dataset a run read),
`tpuflow.storage` and `tpuflow.cli`.
"""
