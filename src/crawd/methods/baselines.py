"""Deprecated: the five baselines now have a module each (``crawd.methods.cda``, ``blind``, ``adversarial``,
``ear``, ``debias_tuning``); this path re-exports their names."""

import warnings

from crawd.methods.adversarial import DEFAULTS as _ADVERSARIAL
from crawd.methods.adversarial import AdversarialModel, GradientReversal, grad_reverse
from crawd.methods.blind import DEFAULTS as _BLIND
from crawd.methods.blind import blind_transform
from crawd.methods.cda import DEFAULTS as _CDA
from crawd.methods.cda import cda_transform
from crawd.methods.debias_tuning import DEFAULTS as _DEBIAS_TUNING
from crawd.methods.debias_tuning import DebiasTuningModel, gendered_mass_penalty, gendered_token_ids
from crawd.methods.ear import DEFAULTS as _EAR
from crawd.methods.ear import EARModel, attention_entropy
from crawd.methods.loss_term import LossTermModel

DEFAULTS = {**_CDA, **_BLIND, "data_dir": None, **_ADVERSARIAL, **_EAR, **_DEBIAS_TUNING}

__all__ = ["DEFAULTS", "AdversarialModel", "DebiasTuningModel", "EARModel", "GradientReversal", "LossTermModel",
           "attention_entropy", "blind_transform", "cda_transform", "gendered_mass_penalty", "gendered_token_ids",
           "grad_reverse"]

warnings.warn("crawd.methods.baselines is deprecated: import from crawd.methods.<name> (cda, blind, adversarial, "
              "ear, debias_tuning)", DeprecationWarning, stacklevel=2)
