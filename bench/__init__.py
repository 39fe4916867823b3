"""Benchmark harness for nbdist-provisioner.

Run ``python -m bench --help``. It measures the performance figures of
the project's goals (README "Benchmark": start, ``pass`` round trip, print latency, stream
throughput, multiplexer memory) for a plain ipykernel baseline, for the
multi-rank kernel, and for the peers (ipyparallel, nbdistributed), all in one
run on one machine, and reports absolute values and ratios to the baseline.
"""
