"""Exception groups from trio nurseries, flattened to the errors inside them; exceptions as one log line."""

from __future__ import annotations


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception in ``group`` and its nested groups, in order, without the groups."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def describe(exc: BaseException) -> str:
    """One line for a log: the exception's type and message (for a group, each error inside)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in leaves(exc))
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
