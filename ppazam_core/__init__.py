"""ppazam_core: audio, libraries, augmentation, features and datasets for song identification.

The model package of ppazam. It imports nothing from the harness (``fixtures``, ``suites``,
``reports``, ``bench``) and can be used on its own.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ppazam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
