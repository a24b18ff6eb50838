"""The README's configuration examples must stay valid configurations."""

import re
import tomllib
from pathlib import Path

from ppazam_core.config import ExperimentConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_examples_parse():
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    configs = [ExperimentConfig.from_dict(tomllib.loads(block)) for block in blocks]
    full = [c for c, block in zip(configs, blocks) if "[policies." in block]
    assert len(full) == 1, "the README lost its full TOML example"
    config = full[0]
    assert config.data.eval_spec("phone").policy.some_of == 2
    assert config.model.blocks[0].stride == 4 and config.clusters.n_clusters == 5
