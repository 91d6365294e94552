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
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=who, unit="example", disable=not enabled, leave=False)
