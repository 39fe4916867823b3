"""The multiplexer: the one kernel the frontend sees, fronting N rank kernels.

``core/`` is the sans-I/O request core (events in, effects out, time passed in):
``kernel.KernelCore`` and the pure pieces it composes, with the output merge in
``core/output/``. ``shell/`` is the thin I/O around it: bound frontend sockets,
rank links, rank processes, timers (``shell.runner.Multiplexer``).
"""
