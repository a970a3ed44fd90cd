"""Estimator parameters, listed once: the keyword-only arguments of ``__init__`` (scikit-learn style)."""

from __future__ import annotations

import inspect


def keyword_params(cls: type) -> list[str]:
    """Names of the keyword-only ``__init__`` parameters of ``cls`` and its bases (subclass first)."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return names
