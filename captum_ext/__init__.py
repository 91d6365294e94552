"""captum_ext: second-order attributions, gradient manipulation, attribution metrics and
gradient regularizers for Captum users. Public names only; no logic here."""

from .attr import CAFO, CASO, AttributionDetails, SmoothCASO

__version__ = "0.1.0"

__all__ = ["CASO", "CAFO", "SmoothCASO", "AttributionDetails", "__version__"]
