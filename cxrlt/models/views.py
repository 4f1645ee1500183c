"""View types of a chest radiograph: the three classes the study model embeds and routes encoders by.

Source spellings (MIMIC-CXR ViewPosition, CheXpert's Frontal/Lateral, NIH's PA/AP) map onto frontal,
lateral or unknown; obliques, swimmer's views and missing values are unknown rather than guessed.
"""

from __future__ import annotations

VIEW_TYPES = ("frontal", "lateral", "unknown")
FRONTAL, LATERAL, UNKNOWN_VIEW = range(3)

_FRONTAL_NAMES = frozenset({"pa", "ap", "ap axial", "ap lld", "ap rld", "pa lld", "pa rld", "frontal"})
_LATERAL_NAMES = frozenset({"lateral", "ll", "rl", "xtable lateral"})


def view_type_index(view: str | None) -> int:
    """FRONTAL (0), LATERAL (1) or UNKNOWN_VIEW (2) for a view name of any supported source."""
    name = (view or "").strip().lower()
    if name in _FRONTAL_NAMES:
        return FRONTAL
    if name in _LATERAL_NAMES:
        return LATERAL
    return UNKNOWN_VIEW
