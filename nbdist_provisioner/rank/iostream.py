"""The rank's stdout/stderr: ipykernel's OutStream, always capturing C-level output."""

from __future__ import annotations

from typing import Any

from ipykernel.iostream import OutStream


class RankOutStream(OutStream):
    """OutStream that also captures file-descriptor output (``os.write``, C ``printf``,
    subprocesses) when the kernel was started from within pytest.

    ipykernel turns fd capture off whenever ``PYTEST_CURRENT_TEST`` is set, which
    every rank inherits when a notebook runs under pytest (nbclient, nbval, papermill
    in CI): C-level and subprocess output would then bypass the cell.
    """

    def __init__(self, *args: Any, watchfd: Any = True, **kwargs: Any) -> None:
        super().__init__(*args, watchfd="force" if watchfd else False, **kwargs)
