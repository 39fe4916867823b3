"""Names the multiplexer and the rank kernels agree on, beyond the Jupyter protocol.

Kept in one place so that neither side imports the other.
"""

from __future__ import annotations

#: Rank stream messages carry a per-rank counter and the characters sent before them
#: in their metadata; a gap tells the multiplexer that ZMQ dropped output.
SEQ_KEY = "nbdist_seq"
OFFSET_KEY = "nbdist_offset"
#: Metadata of an execute_request to a rank: the execution count the rank's IPython
#: must use for the cell, so every rank numbers its cells as the kernel does.
EXECUTION_COUNT_KEY = "nbdist_execution_count"
