"""Running the matrix anywhere: one cell (harness), a backend per child process with crash and hang
isolation (runner), shards, devices and the torch-free device-name helpers the pytest controller uses.

May import every layer below the faces: problem, judge, backends, kernels, contract, perf, reports.
This ``__init__`` imports nothing, so ``parity.run.device_names`` stays torch-free."""
