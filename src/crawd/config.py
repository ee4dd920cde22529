"""CrawdConfig: every setting of the CrAWD block, validated, with a JSON round trip.

Defaults follow the paper (Haque et al., EMNLP Findings 2025) where it is explicit
and the project's documented decisions where it is not (see the method spec,
section 3). Each field below says which.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawd.sensitive import GROUPS

HEADS = ("concat", "residual")
SCOPES = ("example", "row")
MODES = ("cross", "self")
#: Options of earlier rounds of the mitigation, removed with the code behind them (their figures stay in
#: docs/results.md with the commit that produced them), and the values under which they did nothing.
REMOVED = {"counterfactual": 0.0, "probe_subject": "name", "probe_backward_layers": None,
           "neutralize_through": "model", "equalize_through": "model", "readout_where": "all"}
LAST_COMMIT_WITH_REMOVED = "d5f2194"


#: Named settings, one per task, that ``CrawdConfig.preset(name, task)`` and ``--preset NAME`` give
#: on top of the defaults. ``debias``: the mitigation chosen on validation data (docs/method.md).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"lm": {}, "classification": {}},
    "debias": {
        "lm": {"mode": "self", "equalize": 0.3},
        "classification": {"mode": "self", "erase": True},
    },
    "neutral": {
        # decay 1.0: the decay off (it lowered the right pronoun after a named man; docs/results.md, issue 28)
        "lm": {"mode": "self", "decay": 1.0, "even_open": True, "neutralize": 1.0, "probe_share": 0.25},
        "classification": {"mode": "self", "erase": True},
    },
}


@dataclass
class CrawdConfig:
    """Settings of a CrAWD model.

    Args:
        sensitive_words: words of the reference sensitive sequence b, in order
            (paper, Bias in Bios: ``("he", "she")``).
        groups: built-in groups from the paper whose words are appended to
            ``sensitive_words`` (see :data:`crawd.sensitive.GROUPS`).
        top_k: share K of the largest cross-attention weights that are decayed, in [0, 1]
            (paper: 0.4). 0 disables the decay.
        decay: factor lambda applied to those weights, in [0, 1] (paper: 0.2). 1 disables it.
        num_heads: heads of the cross-attention (paper: 8); must divide the hidden size.
        dropout: dropout of the cross-attention weights and the block's FFN (paper: 0.1).
        ffn_dim: inner width of the block's FFN; ``None`` means the hidden size d.
        head: ``"concat"`` (paper: Linear(2d -> out) on [H_x, H_cross], started as
            [W_base, 0]) or ``"residual"`` (out = base_head(H_x + H_cross P), P a
            zero-started d x d matrix: d^2 new weights instead of d * vocab).
        topk_scope: ``"example"`` (project default: one cut-off per example and head over
            its valid (input, reference) pairs; for causal LMs the cut-off of position i
            covers positions <= i only, so no output depends on a later token) or
            ``"row"`` (one per input position).
        renormalize: rescale the decayed weights of each row to sum to 1 (paper: no).
        decay_at_inference: apply the decay in eval mode too (project default: yes).
        mode: ``"cross"`` (the paper's design, default) or ``"self"`` (decay the base
            model's own self-attention to the tokens most associated with b).
        self_layers: for ``mode="self"``: indices of the base layers whose attention is
            decayed; ``None`` means the last third.
        lora: put a LoRA adapter on the base; ``None`` means on for decoders, off
            (full fine-tuning) for encoders.
        lora_r, lora_alpha, lora_dropout: LoRA settings (paper: 16, 32, 0.1).
        lora_target_modules: modules LoRA adapts; ``None`` means peft's default for the
            architecture.
        equalize: weight of the equalizing loss of Qian et al. (2019) (0: off): |log P(she) - log P(he)|
            and the like for every pair of gendered words, at every position of the rows; it trains the
            whole model.
        even_open: the gendered-word readout (:mod:`crawd.mitigation`) evens each gendered pair (he and
            she, his / him and her / hers, ...) wherever the text has not given a gender yet, as the gender
            cues say: a gender the text never gave is not preferred (to within 1% of the pair's log-odds: it
            never ties or reverses the side the model prefers).
        neutralize: weight of the neutralizing term (0: off): at the neutral probes (each row's text with its
            person hidden, cut before its first gendered word), -log(1 - P(the next word is gendered)),
            training only the readout's shift of the gendered words' logits (a gender the text never gave is
            not assumed).
        probe_share: the share of a batch's rows that get a probe, in (0, 1] (the probe terms are
            means over probes: fewer probes give the same expected term at a lower cost per step).
        gender_cue_layer: the readout acts until the text has given a gender, as a linear probe of each
            token's state entering this body layer says (:class:`crawd.mitigation.cues.GenderCues`);
            ``None``: the layer at a third of the depth.
        gender_cue_refit_steps: fit that probe again every this many steps while LoRA moves (0: once,
            before training; 40 and 20 gave the same validation figures, docs/results.md).
        erase: fit a LEACE eraser of the sensitive attribute on the training rows' last hidden
            states and apply it to H_x before the block and head (:mod:`crawd.erasure`).
        erase_column: the training data's column holding the sensitive attribute.
        erase_refit_steps: fit the eraser again every this many steps while LoRA moves (0: once).
        erase_fit_rows: training rows whose states the eraser is fitted on.
    """

    sensitive_words: tuple[str, ...] = ("he", "she")
    groups: tuple[str, ...] = ()
    top_k: float = 0.4
    decay: float = 0.2
    num_heads: int = 8
    dropout: float = 0.1
    ffn_dim: int | None = None
    head: str = "concat"
    topk_scope: str = "example"
    renormalize: bool = False
    decay_at_inference: bool = True
    mode: str = "cross"
    self_layers: tuple[int, ...] | None = None
    lora: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: tuple[str, ...] | None = None
    equalize: float = 0.0
    even_open: bool = False
    neutralize: float = 0.0
    probe_share: float = 1.0
    gender_cue_layer: int | None = None
    gender_cue_refit_steps: int = 40
    erase: bool = False
    erase_column: str = "gender"
    erase_refit_steps: int = 50
    erase_fit_rows: int = 256
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.sensitive_words = _as_tuple(self.sensitive_words, "sensitive_words")
        self.groups = _as_tuple(self.groups, "groups")
        if self.lora_target_modules is not None:
            self.lora_target_modules = _as_tuple(self.lora_target_modules, "lora_target_modules")
        if self.self_layers is not None:
            self.self_layers = tuple(int(i) for i in _as_tuple(self.self_layers, "self_layers"))
        for group in self.groups:
            if group not in GROUPS:
                raise ValueError(f"groups: unknown group {group!r}; choose from {', '.join(GROUPS)}")
        if not self.sensitive_words and not self.groups:
            raise ValueError("sensitive_words and groups are both empty: give at least one sensitive word or group")
        if any(not w.strip() for w in self.sensitive_words):
            raise ValueError("sensitive_words: empty word in the list")
        _check_range("top_k", self.top_k, 0.0, 1.0)
        if isinstance(self.probe_share, bool) or not isinstance(self.probe_share, (int, float)) \
                or not 0 < self.probe_share <= 1:
            raise ValueError(f"probe_share must be in (0, 1], got {self.probe_share!r}")
        if self.gender_cue_layer is not None and (isinstance(self.gender_cue_layer, bool) or not isinstance(
                self.gender_cue_layer, int) or self.gender_cue_layer < 1):
            raise ValueError(f"gender_cue_layer must be a whole number >= 1 or None, got {self.gender_cue_layer!r}")
        _check_range("decay", self.decay, 0.0, 1.0)
        _check_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        _check_range("lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        _check_choice("head", self.head, HEADS)
        _check_choice("topk_scope", self.topk_scope, SCOPES)
        _check_choice("mode", self.mode, MODES)
        if not isinstance(self.even_open, bool):
            raise ValueError(f"even_open must be true or false, got {self.even_open!r}")
        for name in ("equalize", "neutralize"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name} must be a weight >= 0, got {value!r}")
        for name in ("erase_refit_steps", "gender_cue_refit_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("num_heads", "lora_r", "lora_alpha", "erase_fit_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.ffn_dim is not None and (not isinstance(self.ffn_dim, int) or self.ffn_dim < 1):
            raise ValueError(f"ffn_dim must be a positive integer or None, got {self.ffn_dim!r}")

    @property
    def mitigates(self) -> bool:
        """Whether a part of :mod:`crawd.mitigation` is asked for (equalizing, evening or neutralizing)."""
        return self.equalize > 0 or self.even_open or self.neutralize > 0

    @property
    def has_readout(self) -> bool:
        """Whether the gendered words' readout is asked for (:class:`crawd.mitigation.readout.GenderedReadout`):
        evening, or the neutralizing term that trains its shift."""
        return self.even_open or self.neutralize > 0

    @property
    def words(self) -> tuple[str, ...]:
        """The reference sensitive words: ``sensitive_words`` then each group's words."""
        out = list(self.sensitive_words)
        for group in self.groups:
            out += [w for w in GROUPS[group] if w not in out]
        return tuple(out)

    @classmethod
    def preset(cls, name: str, task: str = "lm", **overrides: Any) -> "CrawdConfig":
        """The named settings for ``task`` (``"lm"`` or ``"classification"``), then ``overrides``.

        ``"paper"`` is the faithful method (the defaults); ``"debias"`` the mitigation that
        lowered bias on validation data (see docs/method.md for what it is and why).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        if task not in PRESETS[name]:
            raise ValueError(f"task must be one of {', '.join(PRESETS[name])}, got {task!r}")
        return cls(**{**PRESETS[name][task], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrawdConfig":
        """The settings of :meth:`to_dict`. A removed option (:data:`REMOVED`) at the value under which it did
        nothing is dropped; at another value it is an error naming it (the model needs the code it had)."""
        names = {f.name for f in dataclasses.fields(cls)}
        used = sorted(k for k in set(data) & set(REMOVED) if data[k] != REMOVED[k])
        if data.get("equalize_positions", "all") != "all" and data.get("equalize"):  # "all": what equalize does now
            used.append("equalize_positions")
        if used:
            raise ValueError(f"option(s) {', '.join(f'{k}={data[k]!r}' for k in used)} were removed from crawd with the "
                             f"mitigation round they belonged to (docs/results.md; the code is at commit "
                             f"{LAST_COMMIT_WITH_REMOVED}): retrain without them, or use that commit")
        data = {k: v for k, v in data.items() if k not in REMOVED and k != "equalize_positions"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown CrawdConfig key(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "CrawdConfig":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, str):
        value = [w.strip() for w in value.split(",") if w.strip()]
    try:
        return tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a list, got {value!r}") from None


def _check_range(name: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
