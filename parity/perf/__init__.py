"""Performance: the roofline benchmark (time, x roofline, x read floor, ratios between backends), the
roofline's measured bandwidth and fp8 throughput, and the Triton kernel's option sweep.

May import problem, judge, backends and kernels."""
