"""What the kernel is asked, and the right answer: the cases and their grids, the fp8 cache layouts and
the MXFP4 format, the float64 reference and its on-disk cache.

The bottom layer: it imports nothing else of ``parity``."""
