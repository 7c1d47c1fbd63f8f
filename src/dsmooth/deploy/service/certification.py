"""One image's certification in the service: the method's resumable state machine.

The state machines are pure and live beside the methods (dsmooth.certify.resumable);
each method builds its own (`Certifier.resumable`), so the service runs whatever method
its settings hold and never switches on a method's name. With the same noise an answer
equals offline `dsmooth certify`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsmooth.certify.resumable import (
    ABSTAIN,
    SEQUENTIAL_REASONS,
    Certification,
    CPCertification,
    Need,
    Outcome,
    SequentialCertification,
)

if TYPE_CHECKING:
    from dsmooth.deploy.service.policy import CertifySettings

__all__ = [
    "ABSTAIN",
    "SEQUENTIAL_REASONS",
    "CPCertification",
    "Certification",
    "Need",
    "Outcome",
    "SequentialCertification",
    "make_certification",
]


def make_certification(num_classes: int, settings: CertifySettings) -> Certification:
    """The state machine for one image under `settings`, from its method object."""
    return settings.certifier.resumable(num_classes, settings.sigma)
