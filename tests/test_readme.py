"""The README's configuration example must stay a valid configuration."""

import re
import tomllib
from pathlib import Path

from ppazam_core.config import ExperimentConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_example_parses():
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its TOML example"
    config = ExperimentConfig.from_dict(tomllib.loads(blocks[0]))
    assert config.data.eval_spec("phone").policy.some_of == 2
    assert config.model.blocks[0].stride == 4 and config.clusters.n_clusters == 5
