"""dsmooth: denoised smoothing (Salman et al. 2020) on Gaussian randomized smoothing
(Cohen et al. 2019): certify any pretrained image classifier against l2 attacks."""

from dsmooth.base import SigmaMismatchWarning, compose
from dsmooth.certify_job import CertifyJob
from dsmooth.errors import UserError
from dsmooth.jobs import certify_dataset
from dsmooth.models.loading import load
from dsmooth.models.pretrained import list_pretrained, pretrained
from dsmooth.smoothing import ABSTAIN, Smooth
from dsmooth.sources import load_model

__version__ = "0.2.0"

__all__ = [
    "ABSTAIN",
    "CertifyJob",
    "SigmaMismatchWarning",
    "Smooth",
    "UserError",
    "certify_dataset",
    "compose",
    "list_pretrained",
    "load",
    "load_model",
    "pretrained",
    "__version__",
]
