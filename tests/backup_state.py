"""A test run's backup state, read while it trains, and stopping the run at a chosen state: the
tests that kill or preempt a run mid-fold share these."""
import json
import time

from tpuflow import storage


def read(out: str, fold: int = 0) -> dict | None:
    """`<out>/backup/fold_<fold>/state.json`, or None while there is none (or it is being replaced)."""
    try:
        return json.loads(storage.read_bytes(storage.join(out, "backup", f"fold_{fold}", "state.json")))
    except Exception:  # not there yet (or, on Cloud Storage, not listed yet)
        return None


def stop_when(proc, out: str, ready, sig, fold: int = 0) -> tuple[str, dict | None]:
    """Sends `sig` to `proc` once fold `fold`'s backup state satisfies `ready` (or the run ended);
    returns (the run's log, the state seen then)."""
    state = None
    while proc.poll() is None:
        state = read(out, fold)
        if state and ready(state):
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc.communicate(timeout=120)[0], state
