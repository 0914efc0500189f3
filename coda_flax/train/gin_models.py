"""The gin names of the model and variant files (gin/models/*.gin, gin/variants/*.gin),
registered on import: `model_config` (coda_flax.config.model_config) and `CodaConfig`.

Both engines read the same files: `coda train` (coda_flax/train/gin_config.py) and T5X's
train.py (gin/t5x/model.gin). Each model / variant file starts with
`import coda_flax.train.gin_models`, so the names exist whichever file gin parses first. A
dynamic-registration file (T5X's) binding `coda_config.model_config.dtype` or
`coda_config.CodaConfig.num_routed` (`from coda_flax import config as coda_config`) reaches the
same configurables.
"""

import gin

from coda_flax.config import CodaConfig, model_config

gin.external_configurable(model_config, "model_config")
gin.external_configurable(CodaConfig, "CodaConfig")
