"""The multiplexer: the one kernel the frontend sees, fronting N rank kernels.

``streams``, ``rich`` and ``output`` are the sans-I/O merge core (events in,
messages out, time passed in); ``requests`` tracks frontend requests across
ranks; ``rank_link``, ``frontend`` and ``kernel`` are the thin socket shell.
"""
