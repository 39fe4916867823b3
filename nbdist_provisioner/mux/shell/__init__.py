"""The I/O shell around the request core: sockets, rank processes, timers."""
