"""Mixing weights: how many groups of each scan an epoch holds, set per scan or per tag.

One mode per dataset:

- ``repeat``: a multiplier; a scan of ``n`` groups weighted ``w`` gives ``round(w n)``
  groups an epoch (halves up).
- ``choose``: a count of groups an epoch; a tag's count is shared among its scans in
  proportion to their groups.
- ``proportion``: a share of the epoch (``epoch_size`` groups, default every group once);
  the scans no weight names share what the weights leave (``1 - sum``).

A scan takes the weight that names it, else the first tag weight that matches it, else the
default (multiplier 1, all its groups once, or the share left). Each weight that matches a
scan is a *stratum* for ``batching="stratified"``, and the scans no weight names are one
more, ``"other"``. Whole parts are copies of every group; fractional parts choose groups
by a key of the scan's groups (see :class:`~ptychodata.dataset.GroupKeys`), anew each epoch
(``resample="epoch"``) or once (``"fixed"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychodata.dataset._order import Mixing
from ptychodata.errors import ParameterError

__all__ = ["BATCHING", "MODES", "RESAMPLE", "WeightRule", "Weights"]

MODES = ("repeat", "choose", "proportion")
RESAMPLE = ("epoch", "fixed")
BATCHING = ("random", "stratified")
OTHER = "other"
_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class WeightRule:
    """One weight: of the scan ``uid``, or of the scans tagged ``tag = (key, value)``."""

    value: float
    uid: str | None = None
    tag: tuple[str, str] | None = None

    @property
    def label(self) -> str:
        """``"scan <uid>"`` or ``"key=value"``: the stratum's name."""
        return f"scan {self.uid}" if self.uid is not None else f"{self.tag[0]}={self.tag[1]}"

    def matches(self, uid: str, tags: Mapping[str, str]) -> bool:
        if self.uid is not None:
            return uid == self.uid
        return tags.get(self.tag[0]) == self.tag[1]

    def to_dict(self) -> dict[str, Any]:
        where = {"scan": self.uid} if self.uid is not None else {"tag": f"{self.tag[0]}={self.tag[1]}"}
        return {**where, "value": self.value}


@dataclass(frozen=True)
class Weights:
    """A dataset's mixing weights (see the module's description).

    Parameters
    ----------
    mode : {"repeat", "choose", "proportion"}
    rules : tuple of WeightRule
        Scan weights (kept sorted by uid) and tag weights (in the order given: the first that
        matches a scan applies).
    resample : {"epoch", "fixed"}
    batching : {"random", "stratified"}
        ``"stratified"``: each global batch holds each stratum within one of its quota.
    epoch_size : int, optional
        Groups an epoch in ``proportion`` mode; default the groups served.
    """

    mode: str
    rules: tuple[WeightRule, ...]
    resample: str = "epoch"
    batching: str = "random"
    epoch_size: int | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (("mode", self.mode, MODES), ("resample", self.resample, RESAMPLE),
                                     ("batching", self.batching, BATCHING)):
            if value not in allowed:
                raise ParameterError(f"{name}={value!r}; expected one of {', '.join(repr(a) for a in allowed)}")
        if not self.rules:
            raise ParameterError("weights: none given; expected a weight per scan or tag (or clear the weights)")
        rules = []
        for rule in self.rules:
            value = _check_value(rule, self.mode)
            rules.append(WeightRule(value, rule.uid, rule.tag))
        labels = [rule.label for rule in rules]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ParameterError(f"weights: {', '.join(twice)} weighted twice; expected one weight each")
        scans = sorted((r for r in rules if r.uid is not None), key=lambda r: r.uid)
        object.__setattr__(self, "rules", tuple(scans + [r for r in rules if r.uid is None]))
        if self.mode == "proportion":
            total = math.fsum(rule.value for rule in self.rules)
            if total > 1 + _SUM_TOLERANCE:
                raise ParameterError(
                    f"proportion weights sum to {total:g}; expected at most 1 (shares of the epoch; the scans no "
                    "weight names share what is left)"
                )
        if self.epoch_size is not None:
            if self.mode != "proportion":
                raise ParameterError(f"epoch_size={self.epoch_size} with mode={self.mode!r}; it sets the size of a "
                                     "proportion epoch (repeat and choose give it by their counts)")
            if isinstance(self.epoch_size, bool) or not isinstance(self.epoch_size, (int, np.integer)) \
                    or self.epoch_size < 1:
                raise ParameterError(f"epoch_size={self.epoch_size!r}; expected a positive integer")
            object.__setattr__(self, "epoch_size", int(self.epoch_size))

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "resample": self.resample,
            "batching": self.batching,
            "epoch_size": self.epoch_size,
            "rules": [rule.to_dict() for rule in self.rules],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "weights") -> Weights:
        try:
            rules = []
            for item in values["rules"]:
                if "scan" in item:
                    rules.append(WeightRule(item["value"], uid=str(item["scan"])))
                else:
                    key, sep, value = str(item["tag"]).partition("=")
                    if not sep:
                        raise ParameterError(f"tag {item['tag']!r} is not KEY=VALUE")
                    rules.append(WeightRule(item["value"], tag=(key, value)))
            return cls(values["mode"], tuple(rules), values["resample"], values["batching"], values["epoch_size"])
        except (KeyError, TypeError, AttributeError, ParameterError) as exc:
            raise ParameterError(f"{where}: malformed weights ({exc})") from None

    def keeping(self, uids: set[str]) -> Weights | None:
        """These weights less the scan weights of scans not in ``uids`` (None when none is left)."""
        rules = tuple(rule for rule in self.rules if rule.uid is None or rule.uid in uids)
        if rules == self.rules:
            return self
        if not rules:
            return None
        return Weights(self.mode, rules, self.resample, self.batching, self.epoch_size)

    # ------------------------------------------------------------------ an epoch's counts
    def plan(self, uids: Sequence[str], tags: Sequence[Mapping[str, str]], sizes: Sequence[int]) -> Mixing:
        """Groups an epoch of each scan, and the strata.

        Parameters
        ----------
        uids, tags : sequences of length S
            The scans, in the dataset's order, and their tags.
        sizes : sequence of int, length S
            The groups of each scan served (all of them, or those of a split).

        Returns
        -------
        Mixing
        """
        sizes = [int(n) for n in sizes]
        rule_of = [self._rule_of(uid, scan_tags) for uid, scan_tags in zip(uids, tags)]
        matched = sorted({r for r in rule_of if r is not None})
        names = [self.rules[r].label for r in matched] + ([OTHER] if None in rule_of else [])
        stratum_of = {r: i for i, r in enumerate(matched)} | {None: len(matched)}
        strata = np.array([stratum_of[r] for r in rule_of], np.int64)
        if self.mode == "repeat":
            counts = [_round(self.rules[r].value * n) if r is not None else n for r, n in zip(rule_of, sizes)]
        elif self.mode == "choose":
            counts = self._choose(rule_of, sizes)
        else:
            counts = self._proportion(rule_of, strata, len(names), sizes)
        return Mixing(np.array(counts, np.int64), strata, tuple(names), self.resample, self.batching,
                      self.describe())

    def _rule_of(self, uid: str, tags: Mapping[str, str]) -> int | None:
        for index, rule in enumerate(self.rules):  # scan weights come first
            if rule.matches(uid, tags):
                return index
        return None

    def _choose(self, rule_of: list[int | None], sizes: list[int]) -> list[int]:
        counts = [n if r is None else 0 for r, n in zip(rule_of, sizes)]
        for r, rule in enumerate(self.rules):
            members = [k for k, owner in enumerate(rule_of) if owner == r]
            shares = _apportion(int(rule.value), [sizes[k] for k in members])
            for k, share in zip(members, shares):
                counts[k] = share
        return counts

    def _proportion(self, rule_of: list[int | None], strata: np.ndarray, n_strata: int, sizes: list[int]) -> list[int]:
        total = self.epoch_size if self.epoch_size is not None else sum(sizes)
        rest = max(0.0, 1.0 - math.fsum(rule.value for rule in self.rules))
        share = [0.0] * n_strata
        for k, r in enumerate(rule_of):
            share[strata[k]] = self.rules[r].value if r is not None else rest
        held = [sum(n for k, n in enumerate(sizes) if strata[k] == s) for s in range(n_strata)]
        share = [value if held[s] else 0.0 for s, value in enumerate(share)]  # strata with no groups here
        per_stratum = _apportion_shares(total, share)
        counts = [0] * len(sizes)
        for s in range(n_strata):
            members = [k for k in range(len(sizes)) if strata[k] == s]
            for k, count in zip(members, _apportion(per_stratum[s], [sizes[k] for k in members])):
                counts[k] = count
        return counts

    def describe(self) -> str:
        """One line: ``repeat: scan 1f2e…=2, kind=sim=0.5 (resample epoch, random batches)``."""
        rules = ", ".join(f"{rule.label}={rule.value:g}" for rule in self.rules)
        size = f", epoch_size {self.epoch_size}" if self.epoch_size is not None else ""
        return f"{self.mode}: {rules} (resample {self.resample}, {self.batching} batches{size})"


def _check_value(rule: WeightRule, mode: str) -> float | int:
    value = rule.value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ParameterError(f"weight of {rule.label}: {value!r}; expected a finite number >= 0")
    if mode == "choose":
        if float(value) != int(value):
            raise ParameterError(f"weight of {rule.label}: {value!r}; mode 'choose' counts groups: expected an integer")
        return int(value)
    if mode == "proportion" and value > 1:
        raise ParameterError(f"weight of {rule.label}: {value!r}; a proportion is a share of the epoch in [0, 1]")
    return float(value)


def _round(value: float) -> int:
    """Nearest integer, halves up."""
    return int(math.floor(value + 0.5))


def _apportion(total: int, sizes: list[int]) -> list[int]:
    """``total`` split in proportion to ``sizes`` (integers; largest remainders, ties to the first)."""
    whole = sum(sizes)
    if not whole:
        return [0] * len(sizes)
    parts = [total * n // whole for n in sizes]
    remainders = sorted(range(len(sizes)), key=lambda k: (-(total * sizes[k] % whole), k))
    for k in remainders[: total - sum(parts)]:
        parts[k] += 1
    return parts


def _apportion_shares(total: int, shares: list[float]) -> list[int]:
    """``total`` split in proportion to ``shares`` (floats; largest remainders, ties to the first)."""
    whole = math.fsum(shares)
    if whole <= 0:
        return [0] * len(shares)
    quotas = [total * share / whole for share in shares]
    parts = [int(math.floor(q)) for q in quotas]
    remainders = sorted(range(len(shares)), key=lambda s: (-(quotas[s] - parts[s]), s))
    for s in remainders[: max(0, total - sum(parts))]:
        parts[s] += 1
    return parts
