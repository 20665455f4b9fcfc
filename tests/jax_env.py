"""Environment for test subprocesses under the JAX backend: XLA:CPU skips its expensive compiler
passes, so the tiny test models compile in about a third less time (their run speed is not
what the tests measure)."""
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def env(base: dict, backend: str) -> dict:
    """`base` with fast-compiling XLA flags added when `backend` is jax (other flags kept)."""
    if backend != "jax":
        return base
    return {**base, "XLA_FLAGS": " ".join(filter(None, [base.get("XLA_FLAGS", ""), FAST_COMPILE]))}
