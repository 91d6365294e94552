"""Data sets with known discriminative features: the BlockMNIST family, the ``x = y e_j`` toy.

See :mod:`captum_ext.datasets.block` for the data sets and :mod:`captum_ext.datasets.digits` for the
digit sources (offline scikit-learn digits, torchvision's MNIST).
"""

from .block import BlockMNIST, SignedBasisToy, SimplifiedBlockMNIST, null_patch
from .digits import DigitSource, SklearnDigits, TorchvisionMNIST, get_digit_source

__all__ = [
    "BlockMNIST",
    "DigitSource",
    "SignedBasisToy",
    "SimplifiedBlockMNIST",
    "SklearnDigits",
    "TorchvisionMNIST",
    "get_digit_source",
    "null_patch",
]
