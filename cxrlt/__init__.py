"""cxrlt: long-tailed multi-label chest X-ray classification (CXR-LT), the shared core.

trainers/, synth/, ensembles/ and cluster/ import common code from here and never from each other.
"""

__version__ = "0.1.0"
