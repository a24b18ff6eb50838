"""ppazam_core: the model package of ppazam. It imports nothing from the harness (``fixtures``,
``suites``, ``reports``, ``bench``) and can be used on its own.

Its wings, each importing only from those before it: ``audio`` (decoding, libraries, noise,
rooms), ``queries`` (augmentation, conditions, front-ends, datasets), ``models`` (CNNs,
training, clustering, embeddings, the fingerprint encoder), ``fhe`` (Concrete ML circuits, the
packed CKKS head, the channel, serving), ``families`` (every model family behind
:class:`~ppazam_core.recognition.Recognizer`) and ``results`` (result rows, metrics, open-set
rules, the privacy ledger); beside them the package's base modules (``config``, ``errors``,
``store``, ``artifacts``, ``manifest``, ``seeding``, ``threads``, ``parallel``, ``provenance``) and the
command line (``cli``).
"""

import importlib.abc
import sys
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


# modules of the flat layout before the wings, and where they went (plug-ins importing an old
# name get an error naming the new one instead of a bare "No module named")
MOVED = {
    "library": "audio.library",
    "synth": "audio.synth",
    "noise": "audio.noise",
    "rooms": "audio.rooms",
    "debian": "audio.debian",
    "augment": "queries.augment",
    "conditions": "queries.conditions",
    "dataset": "queries.dataset",
    "features": "queries.features",
    "training": "models.training",
    "clustering": "models.clustering",
    "embeddings": "models.embeddings",
    "pipeline": "models.pipeline",
    "identifier": "models.identifier",
    "hear": "models.hear",
    "encoder": "models.encoder",
    "fhe_packed": "fhe.packed",
    "deployment": "fhe.deployment",
    "serving": "fhe.serving",
    "wire": "fhe.wire",
    "top1_head": "fhe.top1_head",
    "costs": "fhe.costs",
    "metrics": "results.metrics",
    "open_set": "results.open_set",
    "privacy": "results.privacy",
    "calibration": "results.calibration",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        head, _, rest = name.partition(".")
        old = rest.split(".")[0]
        if head == "ppazam_core" and old in MOVED and rest.split(".")[0] == rest.partition(".")[0]:
            new = "ppazam_core." + MOVED[old] + rest[len(old):]
            raise ModuleNotFoundError(f"{name} moved to {new}; import it from there", name=name)
        return None


sys.meta_path.append(_MovedModules())
