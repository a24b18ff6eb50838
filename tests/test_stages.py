"""The bench's stage builder on the tiny library (the quick suite's library)."""

import numpy as np

from fixtures.stages import Stages
from suites import load_suite


def test_query_tracks_queries_the_same_seeded_choice_of_tracks(tiny_library, session_cache):
    config = load_suite("quick").config(4, 6)
    every = Stages("synthetic", session_cache, workers=1).queries("embedding-head", config, "small")
    capped = [Stages("synthetic", session_cache, workers=1, query_tracks=2).queries("embedding-head", config, "small")
              for _ in range(2)]
    queried = np.unique(capped[0].y)
    assert len(queried) == 2 and len(capped[0]) == 2 * config.data.eval_queries
    assert capped[0].track_ids == every.track_ids == tuple(t.id for t in tiny_library)
    np.testing.assert_array_equal(capped[0].y, capped[1].y)
    np.testing.assert_array_equal(np.asarray(capped[0].X), np.asarray(every.X[np.isin(every.y, queried)]))
