"""How an output is judged: guarded buffers (sentinels around every output), the checks (mask,
values, out-of-bounds with the stray writes located, determinism) and the top-k consumer contract.

May import :mod:`parity.problem` only."""
