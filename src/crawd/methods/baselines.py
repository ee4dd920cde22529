"""The baselines CrAWD is compared against, each behind the method interface.

Every baseline is exactly one of: a data transform (``transform``, train split
only), a model change, or a loss term (an :class:`~crawd.adapted.AdaptedModel`
subclass whose training loss adds a term). All use the same LoRA / full
fine-tuning as ``vanilla``, so a comparison differs in the method alone.
Hyperparameters live in ``CrawdConfig.extra`` (YAML: ``crawd: {extra: {...}}`` or a
method entry's ``overrides: {extra: {...}}``); the defaults are in :data:`DEFAULTS`.

=================  ===========  ===============================================================
method             kind         definition (source)
=================  ===========  ===============================================================
``cda``            transform    two-sided counterfactual data augmentation: every training
                                text also appears with its gendered words and first names
                                swapped (Zmigrod et al. 2019, ACL; Webster et al. 2020,
                                arXiv:2010.06032). ``cda_mode="append"`` (default, Webster
                                et al.: original + swapped copy, the data doubles) or
                                ``"replace"`` (each row swapped with probability 1/2).
``blind``          transform    the sensitive words (gender lexicon of ``cda`` + the reference
                                words ``CrawdConfig.words``) replaced in the TRAIN texts by
                                ``blind_token`` (default ``"person"``). Test texts are left
                                as they are (the transform interface only sees training data,
                                and the test split is the shared yardstick): the model is
                                blind to these words during fine-tuning only.
``adversarial``    loss + head  adversarial debiasing (Zhang et al. 2018, AIES; Elazar and
                                Goldberg 2018, EMNLP): an MLP adversary predicts the sensitive
                                attribute (column ``adv_column``, default ``"gender"``) from
                                the pooled representation through a gradient reversal layer
                                (Ganin and Lempitsky 2015). Loss = task + ``adv_weight`` *
                                CE(adversary(GRL_lambda(pooled)), attribute). The encoder gets
                                ``-adv_lambda`` times the adversary's gradient, the adversary
                                its own gradient. Defaults: lambda 1.0, weight 1.0, hidden
                                size 256 (ReLU, dropout 0.1).
``ear``            loss         entropy-based attention regularisation (Attanasio et al. 2022,
                                Findings of ACL): loss = task + ``ear_strength`` * R with
                                R = - sum over layers of the mean (over non-padding query
                                tokens, then examples) entropy of the head-averaged attention
                                rows; minimising R maximises attention entropy. Strength 0.01
                                (the paper's alpha). Their code re-applies softmax to the
                                attention probabilities before the entropy; we take the
                                entropy of the attention distribution itself (the paper's
                                equation), restricted to non-padding keys.
``debias_tuning``  loss (LM)    Debias Tuning, simplified (Dong et al. 2024, "Disclosure and
                                Mitigation of Gender Bias in LLMs"): loss = CE +
                                ``debias_weight`` * mean_t [P_f(t) + P_m(t)] +
                                ``debias_gap_weight`` * mean_t |P_f(t) - P_m(t)|, where
                                P_f / P_m is the next-token probability mass on the 14 female
                                / 14 male GAS words (single-token spellings: bare and with a
                                leading space, lower case and capitalised) at every non-padding
                                position t. Defaults 1.0 and 1.0. Causal LMs only.
=================  ===========  ===============================================================

The ``crawd`` method itself (both heads, the ablation grid) is registered in
:mod:`crawd.methods`; see ``configs/``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from datasets import DatasetDict
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.adapted import AdaptedModel
from crawd.config import CrawdConfig
from crawd.lexicon import _PRONOUNS, _WORD, gender_lexicon, swap_text, wordlist_dir
from crawd.methods import Method, register_method

#: Default hyperparameters of the baselines (override through ``CrawdConfig.extra``).
DEFAULTS: dict[str, Any] = {
    "cda_mode": "append",          # "append" (two-sided, data doubles) or "replace"
    "cda_seed": 0,                 # rows swapped in "replace" mode
    "cda_pairs": [],               # extra [word, word] pairs, e.g. race terms
    "blind_token": "person",
    "blind_words": None,           # None: gender lexicon + CrawdConfig.words
    "data_dir": None,              # folder with wordlists/ (None: $CRAWD_DATA_DIR or ../shared/data)
    "adv_column": "gender",
    "adv_lambda": 1.0,
    "adv_weight": 1.0,
    "adv_hidden": 256,
    "ear_strength": 0.01,
    "debias_weight": 1.0,
    "debias_gap_weight": 1.0,
}


def option(config: CrawdConfig, name: str) -> Any:
    return config.extra.get(name, DEFAULTS[name])


def _swap_value(value: Any, swaps: dict[str, str]) -> Any:
    return swaps.get(value.lower(), value) if isinstance(value, str) else value


def cda_transform(data: DatasetDict, config: CrawdConfig, data_dir: str | None = None) -> DatasetDict:
    """Counterfactual data augmentation of the train split (see the module doc)."""
    extra = tuple(tuple(p) for p in option(config, "cda_pairs"))
    swaps, names = gender_lexicon(data_dir or wordlist_dir(config), extra)
    mode = option(config, "cda_mode")
    if mode not in ("append", "replace"):
        raise ValueError(f"cda_mode must be 'append' or 'replace', got {mode!r}")
    train = data["train"]

    def swapped(row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        row["text"] = swap_text(row["text"], swaps, names)
        for column in ("gender", "identity"):  # the attribute follows the text
            if column in row:
                row[column] = _swap_value(row[column], swaps)
        return row

    if mode == "append":
        flipped = train.map(swapped, desc="CDA")
        from datasets import concatenate_datasets

        new_train = concatenate_datasets([train, flipped.cast(train.features)])
    else:
        rng = random.Random(option(config, "cda_seed"))
        chosen = [rng.random() < 0.5 for _ in range(len(train))]
        new_train = train.map(lambda row, i: swapped(row) if chosen[i] else row, with_indices=True, desc="CDA")
    return DatasetDict({**data, "train": new_train})


def blind_transform(data: DatasetDict, config: CrawdConfig, data_dir: str | None = None) -> DatasetDict:
    """The sensitive words of the train texts replaced by ``blind_token`` (see the module doc)."""
    words = option(config, "blind_words")
    if words is None:
        swaps, names = gender_lexicon(data_dir or wordlist_dir(config))
        words = set(swaps) | _PRONOUNS | {w.lower() for w in config.words}
        name_set = set(names)
    else:
        words, name_set = {w.lower() for w in words}, set()
    token = option(config, "blind_token")
    phrases = sorted((w for w in words if " " in w), key=len, reverse=True)
    phrase_re = re.compile(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b", re.IGNORECASE) if phrases else None

    def blind(text: str) -> str:
        if phrase_re is not None:
            text = phrase_re.sub(token, text)
        return _WORD.sub(lambda m: token if m.group(0).lower() in words or m.group(0) in name_set else m.group(0),
                         text)

    train = data["train"].map(lambda row: {"text": blind(row["text"])}, desc="blinding")
    return DatasetDict({**data, "train": train})


# ======================================================================================
# Loss-term models
# ======================================================================================

class LossTermModel(AdaptedModel):
    """An AdaptedModel whose TRAINING loss adds :meth:`penalty`; eval outputs are vanilla's.

    Subclasses set ``encode_options`` (extra backbone outputs the penalty needs) and
    ``extra_inputs`` (batch keys the penalty consumes, e.g. ``sensitive_labels``).
    """

    encode_options: ClassVar[dict[str, Any]] = {}
    extra_inputs: tuple[str, ...] = ()

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor,
                **inputs: Any) -> torch.Tensor | None:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("num_items_in_batch", None)
        inputs = {k: kwargs.pop(k) for k in self.extra_inputs if k in kwargs}
        regularise = self.training and labels is not None
        out = self.encode(input_ids, attention_mask, **kwargs, **(self.encode_options if regularise else {}))
        logits = self.head(out.last_hidden_state, attention_mask)
        loss = self.task_loss(logits, labels)
        if regularise:
            term = self.penalty(out, logits, attention_mask, labels=labels, **inputs)
            if term is not None:
                loss = loss + term
        return self.output(loss, logits, out)


# ---- adversarial debiasing ------------------------------------------------------------

class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-lambda`` (Ganin and Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, lambd)


class AdversarialModel(LossTermModel):
    """Adversarial debiasing: an adversary on the pooled representation, through gradient reversal.

    The adversary's classes are the sorted distinct values of the sensitive column in
    the training data; it is built when :func:`crawd.train.train` hands them over
    (:meth:`sensitive_ids`), or at once from ``extra["adv_values"]``. It is a training
    device only: :meth:`save_pretrained` writes the deployable model without it (a
    ``vanilla`` adapter); training checkpoints keep it, so a resumed run is exact.
    """

    extra_inputs = ("sensitive_labels",)

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig | None = None) -> None:
        super().__init__(base, tokenizer, config)
        self.sensitive_column = option(self.config, "adv_column")
        self.lambd = float(option(self.config, "adv_lambda"))
        self.weight = float(option(self.config, "adv_weight"))
        self.sensitive_values: list[str] | None = None
        self.adversary: nn.Module | None = None
        if self.config.extra.get("adv_values"):
            self.build_adversary([str(v) for v in self.config.extra["adv_values"]])

    def build_adversary(self, values: list[str]) -> None:
        if len(values) < 2:
            raise ValueError(f"adversarial: the sensitive column {self.sensitive_column!r} needs at least two "
                             f"values in the training data, found {values}")
        hidden = int(option(self.config, "adv_hidden"))
        param = next(self.hf.parameters())
        self.sensitive_values = list(values)
        self.adversary = nn.Sequential(
            nn.Linear(self.hidden_size, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, len(values)),
        ).to(device=param.device, dtype=param.dtype)

    def sensitive_ids(self, values: list[Any]) -> list[int]:
        """Integer ids of the sensitive attribute per training row (builds the adversary once)."""
        values = [str(v) for v in values]
        if self.adversary is None:
            self.build_adversary(sorted(set(values)))
        index = {v: i for i, v in enumerate(self.sensitive_values)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"adversarial: sensitive values {unknown[:5]} were not seen when the adversary was built")
        return [index[v] for v in values]

    def adversary_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.adversary(grad_reverse(self.pooled(hidden, attention_mask), self.lambd))

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor,
                sensitive_labels: torch.Tensor | None = None, **_: Any) -> torch.Tensor | None:
        if sensitive_labels is None or self.adversary is None:
            return None
        adv = self.adversary_logits(out.last_hidden_state, attention_mask)
        return self.weight * F.cross_entropy(adv.float(), sensitive_labels)

    def save_pretrained(self, directory: str) -> None:
        """The deployable model only (LoRA / classifier): loads back with :func:`crawd.load` as vanilla."""
        from crawd.serialization import save_adapter

        adversary, self.adversary = self.adversary, None
        try:
            save_adapter(self, directory)
        finally:
            self.adversary = adversary


# ---- EAR -------------------------------------------------------------------------------

def attention_entropy(attentions: Iterable[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """EAR's quantity: sum over layers of the mean entropy of the head-averaged attention rows.

    ``attentions``: one (B, H, n, n) tensor per layer; ``attention_mask``: (B, n).
    Each layer's attention is averaged over heads, each query row (non-padding query)
    is restricted to non-padding keys and renormalised, its entropy -sum a log a is
    taken, averaged over the example's queries, then over the batch; layers are summed.
    """
    mask = attention_mask.bool()
    keys = mask[:, None, :].to(torch.float32)  # (B, 1, n)
    total = 0.0
    for layer in attentions:
        rows = layer.float().mean(1) * keys  # (B, n, n), padding keys dropped
        rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        entropy = -(rows * rows.clamp_min(1e-12).log()).sum(-1)  # (B, n)
        per_example = (entropy * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        total = total + per_example.mean()
    return total if isinstance(total, torch.Tensor) else torch.tensor(total)


class EARModel(LossTermModel):
    """Entropy-based attention regularisation (Attanasio et al. 2022): loss = task - alpha * entropy."""

    encode_options: ClassVar[dict[str, Any]] = {"output_attentions": True}

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig | None = None) -> None:
        super().__init__(base, tokenizer, config)
        self.strength = float(option(self.config, "ear_strength"))
        # attention maps need the eager implementation (sdpa / flash kernels return none)
        self.hf.set_attn_implementation("eager")

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        if not out.attentions:
            raise ValueError("EAR: the backbone returned no attention maps (needs attn_implementation='eager')")
        return -self.strength * attention_entropy(out.attentions, attention_mask)


# ---- Debias Tuning ---------------------------------------------------------------------

def gendered_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids of the female / male GAS words: every spelling that is ONE token.

    Spellings: "word", " word", "Word", " Word". Multi-token spellings are left out (their
    first piece is often an ordinary sub-word).
    """
    from crawd.metrics.gas import FEMALE_WORDS, MALE_WORDS

    def ids(words: tuple[str, ...]) -> list[int]:
        found: set[int] = set()
        unk = tokenizer.unk_token_id
        for word in words:
            for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
                pieces = tokenizer(form, add_special_tokens=False)["input_ids"]
                if len(pieces) == 1 and pieces[0] != unk:
                    found.add(pieces[0])
        return sorted(found)

    female, male = ids(FEMALE_WORDS), ids(MALE_WORDS)
    if not female or not male:
        raise ValueError("debias_tuning: the tokenizer has no single-token spelling of the gendered words")
    return female, male


def gendered_mass_penalty(logits: torch.Tensor, attention_mask: torch.Tensor, female: torch.Tensor,
                          male: torch.Tensor, weight: float, gap_weight: float) -> torch.Tensor:
    """weight * mean_t (P_f + P_m) + gap_weight * mean_t |P_f - P_m| over non-padding positions."""
    probs = logits.float().softmax(-1)
    p_f, p_m = probs[..., female].sum(-1), probs[..., male].sum(-1)  # (B, n)
    valid = attention_mask.bool()
    term = weight * (p_f + p_m) + gap_weight * (p_f - p_m).abs()
    return term[valid].mean()


class DebiasTuningModel(LossTermModel):
    """Debias Tuning (Dong et al. 2024), simplified: penalise next-token mass on gendered words."""

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig | None = None) -> None:
        super().__init__(base, tokenizer, config)
        if self.task != "lm":
            raise ValueError("debias_tuning applies to causal LMs (task lm), not to classifiers")
        female, male = gendered_token_ids(tokenizer)
        self.register_buffer("female_ids", torch.tensor(female, dtype=torch.long), persistent=False)
        self.register_buffer("male_ids", torch.tensor(male, dtype=torch.long), persistent=False)
        self.weight = float(option(self.config, "debias_weight"))
        self.gap_weight = float(option(self.config, "debias_gap_weight"))

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        return gendered_mass_penalty(logits, attention_mask, self.female_ids, self.male_ids,
                                     self.weight, self.gap_weight)


# ======================================================================================
# Registration
# ======================================================================================

register_method(Method("cda", AdaptedModel, "counterfactual data augmentation: train texts plus their "
                       "gender-swapped copies (Zmigrod et al. 2019; Webster et al. 2020)", cda_transform))
register_method(Method("blind", AdaptedModel, "sensitive words replaced by a neutral word in the training "
                       "texts (naive baseline)", blind_transform))
register_method(Method("adversarial", AdversarialModel, "adversarial debiasing: adversary on the pooled "
                       "representation through gradient reversal (Zhang et al. 2018; Elazar and Goldberg 2018)"))
register_method(Method("ear", EARModel, "entropy-based attention regularisation, strength 0.01 "
                       "(Attanasio et al. 2022)"))
register_method(Method("debias_tuning", DebiasTuningModel, "penalty on the next-token mass of gendered words "
                       "(Debias Tuning, Dong et al. 2024; causal LMs)"))
