"""The sans-I/O request core: no sockets, no processes, no clock.

``KernelCore.handle(event, now)`` returns effects; ``events`` and ``effects``
are its whole vocabulary.
"""

from .kernel import CoreConfig, KernelCore

__all__ = ["CoreConfig", "KernelCore"]
