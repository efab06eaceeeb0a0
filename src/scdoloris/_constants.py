"""Registry keys and defaults shared by the model, its module and its fields."""

from __future__ import annotations

from typing import NamedTuple


class _RegistryKeys(NamedTuple):
    X_KEY: str = "X"
    CELL_TYPE_KEY: str = "labels"
    TOKENS_KEY: str = "perturbation_tokens"
    DOSE_KEY: str = "dose"


REGISTRY_KEYS = _RegistryKeys()
TOKENS_OBSM_KEY = "_scdoloris_tokens"
PAD = -1
# a token the model has no vocabulary entry, gene node or molecule row for: it is embedded as
# the generic perturbation (see DolorisModule.inference and DolorisModel.predict(allow_unknown=))
UNKNOWN = -2
DEFAULT_CELL_TYPE = "all"
