"""Placeholder."""


def install() -> None:
    pass
