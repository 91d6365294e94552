"""Attribution methods (Captum ``GradientAttribution`` subclasses)."""

from .caso import CAFO, CASO, AttributionDetails, SmoothCASO

__all__ = ["CASO", "CAFO", "SmoothCASO", "AttributionDetails"]
