"""Attribution methods (Captum ``GradientAttribution`` subclasses)."""

from .cafo import CAFO
from .caso import CASO, SmoothCASO
from .details import AttributionDetails

__all__ = ["CASO", "CAFO", "SmoothCASO", "AttributionDetails"]
