"""The check model shared by every stored record: one comparison, expected against actual.

Verification records (``verify-<time>.json``) and drill reports (``drills/<id>.json``) both list
checks. They were written with two spellings before the catalog owned them, and both stay
readable and writable exactly as they are stored:

- verify records: ``{"artifact", "check", "expected", "actual", "ok"}``
- drill reports:  ``{"phase", "name", "ok", "expected", "actual"}``

In memory there is one type, :class:`Check`, whose ``subject`` is the artifact (``db``,
``globals``) for a verification and the phase (``pre``, ``restore``, ``post``) for a drill.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# What a check compares: whatever JSON can hold (a size, a hash, a list of names, a dict of counts).
CheckValue = object


@dataclass(frozen=True)
class Check:
    """One comparison: what was checked (``subject`` and ``name``), expected and actual, and whether they agree.

    ``subject`` is the artifact a verification read (``db``, ``globals``) or the phase of a
    drill (``pre``, ``restore``, ``post``); ``name`` says what was compared (``stored sha256``).
    """

    subject: str
    name: str
    expected: CheckValue
    actual: CheckValue
    ok: bool

    def to_verify_dict(self) -> dict[str, CheckValue]:
        """Return the form stored in a verification record (keys ``artifact`` and ``check``)."""
        return {
            "artifact": self.subject,
            "check": self.name,
            "expected": self.expected,
            "actual": self.actual,
            "ok": self.ok,
        }

    def to_drill_dict(self) -> dict[str, CheckValue]:
        """Return the form stored in a drill report (keys ``phase`` and ``name``)."""
        return {
            "phase": self.subject,
            "name": self.name,
            "ok": self.ok,
            "expected": self.expected,
            "actual": self.actual,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, CheckValue]) -> Check:
        """Build a Check from either stored spelling (verify record or drill report).

        Raises KeyError when neither the subject nor the name can be found, TypeError when
        ``data`` is not a mapping; record readers turn both into ManifestError.
        """
        subject = data["artifact"] if "artifact" in data else data["phase"]
        name = data["check"] if "check" in data else data["name"]
        return cls(str(subject), str(name), data.get("expected"), data.get("actual"), bool(data["ok"]))
