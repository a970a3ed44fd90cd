"""Every scorer by the name a model directory and the CLI use; one explicit table, no import side effects."""

from __future__ import annotations

from machine_monitor.errors import ConfigError
from machine_monitor.scorers.postclassifiers import POST_CLASSIFIERS
from machine_monitor.scorers.residual import MahalanobisScorer, MSEScorer, Scorer

SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in (MSEScorer, MahalanobisScorer, *POST_CLASSIFIERS)}


def make_scorer(name: str, **params) -> Scorer:
    """A scorer by registry name, with its saved parameters."""
    try:
        cls = SCORERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"scorer must be one of {', '.join(sorted(SCORERS))}, not {name!r}") from None
    try:
        return cls(**params)
    except TypeError as exc:  # a parameter this scorer does not have
        raise ConfigError(f"scorer {name!r}: {exc}") from None
