"""Kubernetes label selectors, evaluated the way the API server evaluates them."""

from __future__ import annotations

from collections.abc import Mapping

from edgefleet.operator.resources import LabelSelector


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics: every term must hold."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for term in selector.match_expressions:
        present = term.key in labels
        if term.operator == "In" and not (present and labels[term.key] in term.values):
            return False
        if term.operator == "NotIn" and present and labels[term.key] in term.values:
            return False
        if term.operator == "Exists" and not present:
            return False
        if term.operator == "DoesNotExist" and present:
            return False
    return True


def selector_conflict(selector: LabelSelector) -> str | None:
    """Why no set of labels can ever satisfy the selector, or None if some can."""
    allowed: dict[str, set[str]] = {}  # key -> the only values it may take
    excluded: dict[str, set[str]] = {}
    must_exist: set[str] = set()
    must_not_exist: set[str] = set()
    for key, value in selector.match_labels.items():
        allowed[key] = {value}
    for term in selector.match_expressions:
        if term.operator == "In":
            allowed[term.key] = allowed.get(term.key, set(term.values)) & set(term.values)
        elif term.operator == "NotIn":
            excluded.setdefault(term.key, set()).update(term.values)
        elif term.operator == "Exists":
            must_exist.add(term.key)
        else:
            must_not_exist.add(term.key)
    for key in sorted(must_not_exist):
        if key in must_exist or key in allowed:
            return f"label {key!r} is required to exist and to be absent at once"
    for key, values in sorted(allowed.items()):
        if not values - excluded.get(key, set()):
            return f"no value of label {key!r} satisfies every term of the selector"
    return None
