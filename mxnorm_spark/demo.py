"""The quick-start job: `make run` (python -m mxnorm_spark.demo).

Generates drifting sample data, folds it batch by batch into an MXNorm state with the
pure-numpy core, and prints how the state follows the drift.
"""

from __future__ import annotations

import numpy as np

from mxnorm_spark import Moments, MXNormState


def main() -> None:
    rng = np.random.default_rng(42)
    features = ["temperature", "pressure", "latency_ms"]
    state = MXNormState.create(features, alpha=0.2)
    print("MXNorm numpy demo: 10 batches of 10,000 rows, the mean of 'temperature' drifts")
    for batch_id in range(10):
        x = rng.normal([20.0 + batch_id, 1013.0, 1e9], [2.0, 5.0, 1.0], size=(10_000, 3))
        state = state.update(Moments.from_array(x), batch_id=batch_id)
        z = state.normalize(x)
        print(
            f"batch {batch_id}: mean(temperature)={state.mean[0]:.4f} "
            f"var(latency_ms)={state.var[2]:.6f} normalized mean={z.mean(0).round(3).tolist()}"
        )
    print(state.summary())


if __name__ == "__main__":
    main()
