"""Attribution methods (Captum ``GradientAttribution`` subclasses)."""

from .caso import CAFO, CASO, SmoothCASO
from .details import AttributionDetails

__all__ = ["CASO", "CAFO", "SmoothCASO", "AttributionDetails"]
