"""The caller's contract: the buffer strategies servers use (exact, padded, cached, fresh per call),
their checks across the layers of a step, and CUDA/HIP graph capture and replay.

May import problem, judge and backends."""
