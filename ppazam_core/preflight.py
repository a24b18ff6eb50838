"""What a run can check before it opens its library.

Opening a library renders it (minutes for the generator's thousands of songs) or decodes every
file of a folder; a configuration that names a missing encoder, embedder or noise folder, more
clusters than the library can hold, or CNN blocks that shrink its patches to nothing, would
otherwise fail only afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ppazam_core.audio.decode import audio_files
from ppazam_core.audio.library import tracks_at_most
from ppazam_core.config import ExperimentConfig
from ppazam_core.errors import ConfigError, LibraryError
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
        LibraryError: ``[data] noise_dir`` is not a folder, or holds no audio file.
        ConfigError: ``[embedding] embedder`` cannot be imported as a HEAR module,
            ``[clusters] n_clusters`` is above the most tracks ``source`` can hold, or a family
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
        noise = Path(config.data.noise_dir).expanduser()
        if not noise.is_dir():
            raise LibraryError(f"data.noise_dir = {config.data.noise_dir!r}: {noise} does not exist or is not a folder")
        files, _ = audio_files(noise)
        if not files:
            raise LibraryError(f"data.noise_dir = {config.data.noise_dir!r}: no audio file under {noise}")
    wanted = config.clusters.n_clusters
    most = tracks_at_most(source, config.data.synthetic)
    if wanted is not None and most is not None and wanted > most:
        raise ConfigError.bad_value("clusters.n_clusters", wanted,
                                    f"at most the {most} tracks the library {source} can hold")
