"""ppazam_core: audio, libraries, augmentation, features and datasets for song identification.

The model package of ppazam. It imports nothing from the harness (``fixtures``, ``suites``,
``reports``, ``bench``) and can be used on its own.
"""

from importlib.metadata import PackageNotFoundError, version

from ppazam_core.quiet import without_stderr_lines

try:
    __version__ = version("ppazam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# brevitas and concrete-ml import torch.utils.cpp_extension, which prints "No CUDA runtime is
# found, using CUDA_HOME=..." where nvcc is installed but no GPU is usable, once per process
# (spawned workers import this package again); importing it first here drops that line only
with without_stderr_lines("No CUDA runtime is found"):
    import torch.utils.cpp_extension  # noqa: F401
