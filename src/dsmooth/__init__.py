"""dsmooth: denoised smoothing (Salman et al. 2020) on Gaussian randomized smoothing
(Cohen et al. 2019): certify any pretrained image classifier against l2 attacks."""

from dsmooth._version import __version__
from dsmooth.certify.smooth import ABSTAIN, Smooth
from dsmooth.errors import UserError
from dsmooth.models.loading import load
from dsmooth.models.pretrained import list_pretrained, pretrained
from dsmooth.pipeline.compose import SigmaMismatchWarning, compose
from dsmooth.runs.job import CertifyJob
from dsmooth.runs.local import certify_dataset
from dsmooth.sources import load_model

__all__ = [
    "ABSTAIN",
    "CertifyJob",
    "SigmaMismatchWarning",
    "Smooth",
    "UserError",
    "__version__",
    "certify_dataset",
    "compose",
    "list_pretrained",
    "load",
    "load_model",
    "pretrained",
]
