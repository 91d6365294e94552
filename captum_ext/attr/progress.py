"""A progress bar over the examples of a batch (tqdm, off unless asked for)."""

from __future__ import annotations

from typing import Any


def example_progress(total: int, enabled: bool, who: str) -> Any:
    """A tqdm bar counting ``total`` examples (``update(k)`` after each chunk); a silent one when not
    ``enabled``. ``leave=False``: the bar disappears when the call returns.

    Examples:
        >>> with example_progress(4, False, "CASO") as bar:  # silent: draws nothing
        ...     bar.update(4)
        >>> bar.disable
        True
    """
    if not enabled:  # no tqdm object at all (it costs ~0.2 ms even disabled)
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=who, unit="example", leave=False)


class _Silent:
    """The disabled bar: a context manager whose ``update`` does nothing."""

    disable = True

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None
