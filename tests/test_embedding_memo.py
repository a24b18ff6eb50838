"""Client-side embeddings reused within a block (``ppazam_core.models.embedding_memo``): the
same rankings as embedding every time, one embedding for every family holding the same encoder
and every mode, and none reused outside the block (what is timed pays for its embedding)."""

import numpy as np

from ppazam_core.families import family_features
from ppazam_core.models import embedding_memo
from ppazam_core.models.embedding_memo import EmbeddingMemo, embed, reused_embeddings
from ppazam_core.recognition import Mode, predict
from test_families import family_models, queries_for  # noqa: F401 (fixture)

SHARING = ("embedding-head", "embedding-head-packed", "embedding-prototypes")  # one front-end, one encoder


def test_families_holding_one_encoder_embed_a_condition_once(family_models, tiny_library, tiny_config, session_cache,
                                                            monkeypatch):
    config, _ = tiny_config
    assert len({family_features(f, config) for f in SHARING}) == 1
    queries = queries_for(SHARING[0], tiny_library, config, session_cache, "small")
    models = [family_models[f] for f in SHARING]
    embedded = []
    assert len({id(m.embedder) for m in models}) == len(models)  # each model holds its own copy of the encoder
    (kind,) = {type(m.embedder) for m in models}
    original = kind.embed_patches
    monkeypatch.setattr(kind, "embed_patches", lambda self, patches: embedded.append(len(patches)) or original(self, patches))
    plain = {(m.family, mode): predict(m, queries, mode) for m in models for mode in (Mode.FP32, Mode.QUANT)}
    assert len(embedded) == 2 * len(models)
    embedded.clear()
    memo = EmbeddingMemo()
    with reused_embeddings(memo):
        reused = {(m.family, mode): predict(m, queries, mode) for m in models for mode in (Mode.FP32, Mode.QUANT)}
    assert embedded == [len(queries.X)] and (memo.misses, memo.hits) == (1, 2 * len(models) - 1)
    for key, result in plain.items():
        np.testing.assert_array_equal(reused[key].ranking, result.ranking)
        np.testing.assert_allclose(reused[key].confidence, result.confidence, rtol=1e-6)
    predict(models[0], queries, Mode.FP32)  # outside the block: embedded again
    assert len(embedded) == 2


def test_other_patches_or_weights_are_embedded_anew(family_models, tiny_library, tiny_config, session_cache):
    config, _ = tiny_config
    model = family_models["embedding-head"]
    queries = queries_for("embedding-head", tiny_library, config, session_cache, "small")
    X = np.asarray(queries.X[:8])
    memo = EmbeddingMemo()
    with reused_embeddings(memo):
        first = embed(model.embedder, X)
        first[:] = 0  # a caller's copy: the stored one is untouched
        again = embed(model.embedder, X)
        moved = X.copy()
        moved[0, 0, 0, 0] += 1.0
        embed(model.embedder, moved)
    assert (memo.misses, memo.hits) == (2, 1) and np.abs(again).sum() > 0
    np.testing.assert_array_equal(again, model.embedder.embed_patches(X))
    changed = type(model.embedder).__new__(type(model.embedder))
    changed.__dict__.update(model.embedder.__dict__)  # another object, same weights: shared
    assert embedding_memo._fingerprint(changed) == embedding_memo._fingerprint(model.embedder)
