"""The rank ladder: which LoRA ranks a sweep tries.

ranksweep trains the same adapter at r = start, start*factor, start*factor**2, ... up to max_rank (by
default a rank-doubling ladder) and stops when the stop rule says so: :mod:`ranksweep.sweep.rules`
(the default rule: :class:`~ranksweep.sweep.rules.margin.MarginRule`).
"""

from __future__ import annotations

__all__ = ["rank_ladder"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def rank_ladder(start_rank: int, factor: int, max_rank: int) -> list[int]:
    """The ranks to try: ``start_rank, start_rank*factor, ...`` up to and including ``max_rank``.

    >>> rank_ladder(8, 2, 256)
    [8, 16, 32, 64, 128, 256]

    The inputs are checked where a user sets them (:class:`ranksweep.sweep.settings.SweepSettings`).
    """
    if not (_is_int(start_rank) and start_rank > 0 and _is_int(factor) and factor >= 2):
        raise ValueError(f"rank_ladder needs start_rank >= 1 and factor >= 2, got {start_rank!r}, {factor!r}")
    ranks = [start_rank]
    while ranks[-1] * factor <= max_rank:
        ranks.append(ranks[-1] * factor)
    return ranks
