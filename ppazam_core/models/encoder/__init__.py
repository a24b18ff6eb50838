"""The fingerprint encoder: one contrastive audio encoder, trained once on a corpus of its own
and shipped as package data, that every embedding family and the two-stage CNN's clusters use.

* :mod:`.model`: the encoder (1-s log-mel windows to unit vectors) and its front-end;
* :mod:`.corpus`: the training corpus (generated songs under a seed of their own, real music of
  Debian packages no evaluated library uses), streamed to disk;
* :mod:`.views`: the degradations of its training views;
* :mod:`.training`: ``ppazam encoder train``;
* :mod:`.shipped`: the encoder shipped with ppazam and its manifest.
"""
