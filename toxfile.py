"""tox plugin: the ``tests`` and ``bench`` environments share one virtualenv.

tox 4 records the name of the environment that set a virtualenv up and rebuilds it when an
environment of another name uses the same folder, which would reinstall torch (several GB)
on every switch. After a shared environment finishes, this drops only that name from the
record; tox still rebuilds the folder when Python, the dependencies or the package change.
"""

from __future__ import annotations

import json

from tox.plugin import impl
from tox.tox_env.api import ToxEnv

SHARED_ENVIRONMENTS = frozenset({"tests", "bench"})


@impl
def tox_env_teardown(tox_env: ToxEnv) -> None:
    info = tox_env.env_dir / ".tox-info.json"
    if tox_env.name not in SHARED_ENVIRONMENTS or not info.is_file():
        return
    record = json.loads(info.read_text())
    if record.pop("ToxEnv", None) is not None:
        info.write_text(json.dumps(record, indent=2))
