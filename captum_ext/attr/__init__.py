"""Attribution methods (Captum ``GradientAttribution`` subclasses)."""

from .caso import CAFO, CASO, AttributionDetails

__all__ = ["CASO", "CAFO", "AttributionDetails"]
