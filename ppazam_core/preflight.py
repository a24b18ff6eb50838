"""What a run can check before it opens its library.

Opening a library renders it (minutes for the generator's thousands of songs) or decodes every
file of a folder; a configuration that names a missing encoder, embedder or noise folder, more
clusters than the library can hold, or CNN blocks that shrink its patches to nothing, would
otherwise fail only afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ppazam_core.audio.decode import audio_files, probe
from ppazam_core.audio.library import tracks_at_most
from ppazam_core.config import ExperimentConfig
from ppazam_core.errors import AudioError, ConfigError, LibraryError
from ppazam_core.families import get_family
from ppazam_core.models.encoder.shipped import encoder_folder
from ppazam_core.models.hear import hear_module


def check_before_opening(config: ExperimentConfig, source: str | Path, families: Sequence[str] = ()) -> None:
    """Check what ``config`` names outside itself against the library at ``source``
    (``"synthetic"`` or a folder), and against the ``families`` that will use it, before
    :func:`~ppazam_core.audio.library.open_library`.

    Raises:
        ArtifactError: ``[embedding] encoder`` names a folder that holds no encoder.
        DamagedArtifactError: the encoder's weights differ from its manifest.
        LibraryError: ``[data] noise_dir`` is not a folder, or holds no audio file; a custom
            policy's ``sounds_path`` or ``ir_path`` is neither an audio file nor a folder of them.
        ConfigError: ``[embedding] embedder`` cannot be imported as a HEAR module,
            ``[clusters] n_clusters`` is above the most tracks ``source`` can hold,
            ``[identify] cluster_top_k`` above the clusters they are split into, or a family
            that trains the CNN of ``[model]`` (they sweep its rounding) would see its blocks
            shrink the ``[features]`` patch to nothing.
    """
    if config.embedding.uses_fingerprint_encoder:
        encoder_folder(config.embedding.encoder)
    elif config.embedding.embedder:
        hear_module(config.embedding.embedder)
    if any(get_family(name).sweeps_rounding for name in families):
        config.model.cnn(2, config.data.features.shape)
    if config.data.noise_dir:
        _check_sounds("data.noise_dir", config.data.noise_dir, file_allowed=False)
    for policy in config.data.policies:
        for key, value in policy.named_folders():
            _check_sounds(key, value, file_allowed=True)
    wanted = config.clusters.n_clusters
    most = tracks_at_most(source, config.data.synthetic)
    if wanted is not None and most is not None and wanted > most:
        raise ConfigError.bad_value("clusters.n_clusters", wanted,
                                    f"at most the {most} tracks the library {source} can hold")
    if wanted is None and most is not None and config.cluster_top_k > config.clusters.resolve(most):
        raise ConfigError.bad_value("identify.cluster_top_k", config.cluster_top_k,
                                    f"at most the {config.clusters.resolve(most)} cluster(s) the {most} tracks of the "
                                    f"library {source} are split into")


def _check_sounds(key: str, value: str, file_allowed: bool) -> None:
    """A :class:`LibraryError` unless ``value`` is a folder holding audio (or, where
    ``file_allowed``, an audio file). Where ``file_allowed`` (audiomentations reads those files
    itself, not through ppazam's decoder), every file must be readable audio too."""
    path = Path(value).expanduser()
    if file_allowed and path.is_file():
        files = [path]
    elif path.is_dir():
        files, _ = audio_files(path)
        if not files:
            raise LibraryError(f"{key} = {value!r}: no audio file under {path}")
    else:
        what = "a folder or an audio file" if file_allowed else "a folder"
        raise LibraryError(f"{key} = {value!r}: {path} does not exist or is not {what}")
    if not file_allowed:
        return
    unreadable = []
    for file in files:
        try:
            probe(file)
        except AudioError as e:
            unreadable.append(f"{file.name}: {e.reason}")
    if unreadable:
        raise LibraryError(f"{key} = {value!r}: {len(unreadable)} of {len(files)} file(s) are not readable audio "
                           f"({'; '.join(unreadable[:3])})")
