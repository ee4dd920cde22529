"""Counterfactual twins, neutral probes, and the loss terms built on them.

Twins (:class:`DebiasCollator`): each training row's text with its gendered words and first
names swapped, tokenized again and aligned to the row token by token; they ride in the same
batch. Probes: each row's text with the person's gender hidden (gender-neutral first names, or
"the person" for the name), cut before its first gendered word, in the same batch. The
consistency term makes a row's and its twin's next-token distributions agree up to the swap;
the equalizing term (Qian et al. 2019) pushes the paired gendered words' probabilities
together; the neutralizing term lowers the probability of any gendered word at the probes.
docs/method.md says why each is built this way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from crawd.config import CrawdConfig
from crawd.mitigation.lexicon import first_gendered, neutral_names, swap_text, unnamed

#: Pronouns whose swap depends on context (see :func:`crawd.mitigation.lexicon.swap_text`), as word pairs.
PRONOUN_PAIRS = (("his", "her"), ("him", "her"), ("his", "hers"))


# ---- twins ------------------------------------------------------------------------------

def align(original: list[int], twin: list[int]) -> list[int]:
    """For each twin position, the aligned original position (-1: none)."""
    source = [-1] * len(twin)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, original, twin, autojunk=False).get_opcodes():
        if tag == "equal":
            source[j1:j2] = range(i1, i2)
        elif tag == "replace":
            source[j2 - 1] = i2 - 1
    return source


def carried(mask: list[bool], source: list[int]) -> list[bool]:
    """A row's per-token flags carried over to a rewritten row through ``source`` (see :func:`align`);
    a token without a source takes the flag of the next token that has one (the end of its word)."""
    out, last = [False] * len(source), False
    for j in range(len(source) - 1, -1, -1):
        last = mask[source[j]] if source[j] >= 0 else last
        out[j] = last
    return out


class DebiasCollator:
    """Wrap a collator: add, for each row of a right-padded batch, what the loss terms need.

    ``twins``: ``twin_input_ids``, ``twin_attention_mask``, ``twin_labels`` (causal LMs: the
    twin's ids where the original target was supervised, else -100; classifiers: the row's
    label) and ``twin_source`` (aligned row position per twin position, -1 none).
    ``probes`` (for the first ``probe_share`` of the rows): ``probe_input_ids``,
    ``probe_attention_mask``: the row's text with the gender hidden (``probe_subject``: ``"name"``,
    neutral first names; ``"person"``, "the person" for a first name and its surname), cut before
    its first gendered word, so that every position of a probe has a prefix that does not tell
    the gender (a row that opens with a gendered word has none).
    """

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
                 tokenizer: PreTrainedTokenizerBase, swaps: dict[str, str], names: dict[str, str],
                 task: str, twins: bool, probes: bool, probe_subject: str = "name", probe_share: float = 1.0) -> None:
        self.collate, self.tokenizer, self.swaps, self.names, self.task = collate, tokenizer, swaps, names, task
        self.twins, self.probes, self.probe_subject, self.probe_share = twins, probes, probe_subject, probe_share

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def twin_ids(self, ids: list[int]) -> list[int]:
        """The ids of the text of ``ids`` with its gendered words and first names swapped."""
        text = self.text(ids)
        swapped = swap_text(text, self.swaps, self.names)
        return ids if swapped == text else self.encode(swapped)

    def probe_ids(self, ids: list[int]) -> list[int]:
        """The ids of the neutral prefix of ``ids`` (see the class doc)."""
        text = (unnamed if self.probe_subject == "person" else neutral_names)(self.text(ids), self.names)
        cut = first_gendered(text, self.swaps, self.names)
        return self.encode((text if cut is None else text[:cut]).rstrip())

    def padded(self, rows: list[list[int]], value: int) -> torch.Tensor:
        out = torch.full((len(rows), max(1, max(map(len, rows)))), value, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate(features)
        lm = self.task == "lm"
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows = [(ids[mask].tolist(), (labels[mask] != -100).tolist() if lm else [])
                for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"].bool(), batch["labels"])]
        if self.twins:
            twins = [self.twin_ids(own) for own, _ in rows]
            sources = [align(own, twin) for (own, _), twin in zip(rows, twins)]
            batch["twin_input_ids"] = self.padded(twins, pad)
            batch["twin_attention_mask"] = self.padded([[1] * len(r) for r in twins], 0)
            batch["twin_source"] = self.padded(sources, -1)
            batch["twin_labels"] = batch["labels"].clone() if not lm else self.padded(
                [[t if s else -100 for t, s in zip(twin, carried(supervised, source))]
                 for (_, supervised), twin, source in zip(rows, twins, sources)], -100)
        if self.probes:
            probes = [self.probe_ids(own) for own, _ in rows[:math.ceil(self.probe_share * len(rows))]]
            batch["probe_input_ids"] = self.padded(probes, pad)
            batch["probe_attention_mask"] = self.padded([[1] * len(r) for r in probes], 0)
        return batch


# ---- output classes -----------------------------------------------------------------------

def _single_token(tokenizer: PreTrainedTokenizerBase, form: str) -> int | None:
    ids = tokenizer(form, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def token_pairs(tokenizer: PreTrainedTokenizerBase, word_pairs: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """Single-token spellings of each pair (word, " word", Word, " Word"), as id pairs."""
    out = set()
    for a, b in word_pairs:
        for spell in (lambda w: w, lambda w: " " + w, lambda w: w[:1].upper() + w[1:],
                      lambda w: " " + w[:1].upper() + w[1:]):
            ia, ib = _single_token(tokenizer, spell(a)), _single_token(tokenizer, spell(b))
            if ia is not None and ib is not None and ia != ib:
                out.add((ia, ib))
    return sorted(out)


def bipartite_groups(pairs: list[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """Connected groups of linked tokens, each split into its two sides; groups whose links
    are not two-sided (a token on both sides) are left out."""
    links: dict[int, set[int]] = {}
    for a, b in pairs:
        links.setdefault(a, set()).add(b)
        links.setdefault(b, set()).add(a)
    side: dict[int, int] = {}
    groups = []
    for start in sorted(links):
        if start in side:
            continue
        side[start], stack, members, ok = 0, [start], [start], True
        while stack:
            node = stack.pop()
            for other in links[node]:
                if other not in side:
                    side[other] = 1 - side[node]
                    stack.append(other), members.append(other)
                elif side[other] == side[node]:
                    ok = False
        if ok:
            groups.append((sorted(m for m in members if side[m] == 0), sorted(m for m in members if side[m] == 1)))
    return groups


class GenderedClasses(nn.Module):
    """The vocabulary as classes: each side of a gendered group is one class, every other token its own.

    ``class_logprobs`` gives log-probabilities over the kept classes (K = V minus the
    merged-away tokens); ``swap`` (K,) maps each class to its gender counterpart;
    ``word_pairs`` (P, 2) are the class indices of the paired gendered words (names excluded);
    ``pair_logratios`` their log-probability ratios, read from the pairs' own logits only.
    """

    def __init__(self, vocab_size: int, groups: list[tuple[list[int], list[int]]], word_tokens: set[int]) -> None:
        super().__init__()
        sides = [side for group in groups for side in group]
        merged = [side for side in sides if len(side) > 1]
        width = max((len(side) for side in merged), default=1)
        members = torch.full((len(merged), width), vocab_size, dtype=torch.long)  # vocab_size: a -inf column
        for row, side in enumerate(merged):
            members[row, :len(side)] = torch.tensor(side)
        dropped = sorted(t for side in merged for t in side[1:])
        keep = torch.ones(vocab_size, dtype=torch.bool)
        keep[dropped] = False
        kept = keep.nonzero().squeeze(-1)
        position = torch.full((vocab_size,), -1, dtype=torch.long)
        position[kept] = torch.arange(len(kept))
        swap = torch.arange(len(kept))
        pairs, pair_sides = [], []
        for a, b in groups:
            swap[position[a[0]]], swap[position[b[0]]] = position[b[0]], position[a[0]]
            if set(a + b) & word_tokens:
                pairs.append((int(position[a[0]]), int(position[b[0]])))
                pair_sides.append((a, b))
        side_width = max((len(side) for sides in pair_sides for side in sides), default=1)
        pair_tokens = torch.zeros((len(pair_sides), 2, side_width), dtype=torch.long)
        pair_valid = torch.zeros((len(pair_sides), 2, side_width), dtype=torch.bool)
        for row, sides in enumerate(pair_sides):
            for column, side in enumerate(sides):
                pair_tokens[row, column, :len(side)] = torch.tensor(side)
                pair_valid[row, column, :len(side)] = True
        self.register_buffer("members", members, persistent=False)
        self.register_buffer("merged_rep", torch.tensor([side[0] for side in merged], dtype=torch.long), persistent=False)
        self.register_buffer("kept", kept, persistent=False)
        self.register_buffer("swap", swap, persistent=False)
        self.register_buffer("word_pairs", torch.tensor(pairs, dtype=torch.long).view(-1, 2), persistent=False)
        self.register_buffer("pair_tokens", pair_tokens, persistent=False)
        self.register_buffer("pair_valid", pair_valid, persistent=False)

    def class_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(-1)
        if len(self.merged_rep):
            padded = F.pad(logp, (0, 1), value=float("-inf"))
            logp = logp.index_copy(-1, self.merged_rep, padded[..., self.members].logsumexp(-1))
        return logp[..., self.kept]

    def pair_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., P, 2): the logsumexp of each paired word's side's logits (unnormalised log-probabilities)."""
        scores = logits[..., self.pair_tokens].float().masked_fill(~self.pair_valid, float("-inf"))
        return scores.logsumexp(-1)

    def pair_logratios(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., P): log P(one side) - log P(the other) for each paired word. The softmax normaliser
        cancels in the difference, so only the pairs' logits are read (no pass over the vocabulary)."""
        sides = self.pair_scores(logits)
        return sides[..., 0] - sides[..., 1]

    def open_terms(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(...,) each: the symmetric KL between the next gendered word's distribution and its swap
        (0: every word as likely as its counterpart), and log P(the next word is a paired gendered word)."""
        sides = self.pair_scores(logits)
        flat = sides.flatten(-2)
        q = (flat - flat.logsumexp(-1, keepdim=True)).view_as(sides)
        swap_kl = ((q[..., 0].exp() - q[..., 1].exp()) * (q[..., 0] - q[..., 1])).sum(-1)
        return swap_kl, flat.logsumexp(-1) - logits.float().logsumexp(-1)


def gender_giving_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int, swaps: dict[str, str],
                         names: dict[str, str]) -> torch.Tensor:
    """(vocab_size,) bool: the tokens that are, stripped, a word :func:`swap_text` would change
    (a gendered word or first name) and that start a word (after another word they are set apart
    by a space, or they are capitalised, as a text's first word is; so "son" inside "Jackson" is
    not one): after one of them the text has given a gender."""
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
    start = len(tokenizer.decode(anchor))
    gives = torch.zeros(vocab_size, dtype=torch.bool)
    for token in range(min(vocab_size, len(tokenizer))):
        word = tokenizer.decode([token]).strip()
        if word.isalpha() and first_gendered(word, swaps, names) == 0:
            gives[token] = word[0].isupper() or tokenizer.decode(anchor + [token])[start:start + 1].isspace()
    return gives


def gender_giving_spellings(tokenizer: PreTrainedTokenizerBase, swaps: dict[str, str],
                            names: dict[str, str]) -> torch.Tensor:
    """(S, L) long: the gendered words and first names that the tokenizer spells in several tokens
    (" Chloe": " Ch", "l", "oe"), as they start a text or follow a space, lowercase and capitalised,
    each right-padded with -1: a text has given a gender at the last token of one of them.
    :func:`gender_giving_tokens` holds the words spelled in one token. A spelling without its space
    also matches inside a longer word; on StereoSet those were gendered compounds ("Schoolgirls",
    "great-grandmothers"), and a wrong match only turns the readout off from there."""
    spellings = set()
    for word in set(swaps) | set(names):
        for form in {word, word.capitalize()}:
            for text in (form, " " + form):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(ids) > 1:
                    spellings.add(tuple(ids))
    width = max(map(len, spellings), default=0)
    return torch.tensor([list(ids) + [-1] * (width - len(ids)) for ids in sorted(spellings)],
                        dtype=torch.long).reshape(len(spellings), width)


def spelling_ends(ids: torch.Tensor, spellings: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """(B, n) bool: where one of ``spellings`` ((S, L), right-padded with -1, of the given ``lengths``,
    each length once) ends in ``ids`` (B, n)."""
    ends = torch.zeros_like(ids, dtype=torch.bool)
    spelled = (spellings >= 0).sum(-1)
    for length in lengths:
        if length <= ids.shape[1]:
            windows = ids.unfold(1, length, 1)  # (B, n - length + 1, length)
            chosen = spellings[spelled == length, :length]
            ends[:, length - 1:] |= (windows[:, :, None, :] == chosen).all(-1).any(-1)
    return ends


class GenderedReadout(nn.Module):
    """A correction of the paired gendered words' logits by linear functions of the last hidden state h.

    ``delta`` (P, d; with ``shared``): logits[..., t] += h . delta_{pair(t)}, the same for both sides
    of each word pair (he and she, his / him and her / hers, ...), so it changes how likely a
    gendered word is and never which gender (the neutralizing term's). ``gate`` (d; with ``evening``):
    g = h . gate moves each side's log-probability a share g of the way to an even split of its
    pair's probability (g = 1: both sides equally likely, their sum unchanged), so it changes which
    gender and, for g in [0, 1], barely how likely a gendered word is (the equalizing term's; one gate
    for every pair and spelling, so what it learns where "She" comes next holds where " she" does).
    Both start at zero (the model is exactly its base). With ``gives_gender`` (a (V,) bool of the
    tokens that give a gender, :func:`gender_giving_tokens`) and ``giving_spellings`` (the words
    that give one in several tokens, :func:`gender_giving_spellings`) it acts only at the open
    positions (:meth:`open_positions`): where no such token or spelling has come yet.
    """

    def __init__(self, pair_tokens: torch.Tensor, pair_valid: torch.Tensor, hidden_size: int,
                 gives_gender: torch.Tensor | None = None, giving_spellings: torch.Tensor | None = None,
                 shared: bool = True, evening: bool = False) -> None:
        super().__init__()
        pairs = torch.arange(len(pair_tokens))[:, None, None].expand_as(pair_tokens)
        sides = torch.arange(2)[None, :, None].expand_as(pair_tokens)
        self.register_buffer("pair_tokens", pair_tokens, persistent=False)
        self.register_buffer("pair_valid", pair_valid, persistent=False)
        self.register_buffer("tokens", pair_tokens[pair_valid], persistent=False)
        self.register_buffer("pair_of_token", pairs[pair_valid], persistent=False)
        self.register_buffer("side_of_token", sides[pair_valid], persistent=False)
        self.register_buffer("gives_gender", gives_gender, persistent=False)
        spellings = torch.zeros(0, 0, dtype=torch.long) if giving_spellings is None else giving_spellings
        self.register_buffer("giving_spellings", spellings, persistent=False)
        self.spelling_lengths = tuple(sorted(set((spellings >= 0).sum(-1).tolist())))
        self.delta = nn.Parameter(torch.zeros(len(pair_tokens), hidden_size)) if shared else None
        self.gate = nn.Parameter(torch.zeros(hidden_size)) if evening else None

    def open_positions(self, ids: torch.Tensor, state: dict | None = None) -> torch.Tensor | None:
        """(B, n) bool: positions at and before which no token of ``ids`` gives a gender (None: this
        readout acts everywhere). ``state`` carries what came before ``ids`` in cached generation."""
        if self.gives_gender is None:
            return None
        given = self.gives_gender[ids]
        if self.spelling_lengths:  # a spelling may begin in the tokens before ``ids`` (cached generation)
            context = ids if state is None else torch.cat([state.get("tail", ids[:, :0]), ids], 1)
            given = given | spelling_ends(context, self.giving_spellings, self.spelling_lengths)[:, -ids.shape[1]:]
            if state is not None:
                state["tail"] = context[:, 1 - max(self.spelling_lengths):]
        given = given.cumsum(-1) > 0
        if state is not None:
            given = given | state.get("gender_given", torch.zeros_like(given[:, :1]))
            state["gender_given"] = given[:, -1:]
        return ~given

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts this readout has: ``"delta"`` (the shared shift) and / or ``"gate"`` (the evening)."""
        return tuple(name for name in ("delta", "gate") if getattr(self, name) is not None)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, open_positions: torch.Tensor | None = None,
                trained: str | None = None) -> torch.Tensor:
        """``logits`` corrected. ``trained``: a part whose weight alone gets a gradient (pass ``hidden`` and
        ``logits`` detached: the terms through the readout train it as if it were the only weight)."""
        def weight(part: str) -> torch.Tensor:
            value = getattr(self, part)
            return (value if trained in (None, part) else value.detach()).to(hidden.dtype)

        def opened(shift: torch.Tensor) -> torch.Tensor:
            return shift if open_positions is None else shift * open_positions[..., None]

        if self.delta is not None:
            shift = (hidden @ weight("delta").T)[..., self.pair_of_token]
            logits = logits.index_add(-1, self.tokens, opened(shift).to(logits.dtype))
        if self.gate is not None:
            sides = logits[..., self.pair_tokens].float().masked_fill(~self.pair_valid, float("-inf")).logsumexp(-1)
            even = sides.logsumexp(-1, keepdim=True) - math.log(2.0)
            toward = (even - sides)[..., self.pair_of_token, self.side_of_token]
            shift = (hidden @ weight("gate"))[..., None] * toward
            logits = logits.index_add(-1, self.tokens, opened(shift).to(logits.dtype))
        return logits


def symmetric_kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """0.5 (KL(p || q) + KL(q || p)) over the last dim, from log-probabilities."""
    diff = p_log - q_log
    return 0.5 * ((p_log.exp() - q_log.exp()) * diff).sum(-1)


class DebiasObjective(nn.Module):
    """The training-loss terms of :mod:`crawd.counterfactual` for one model (see module doc)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, swaps: dict[str, str],
                 names: dict[str, str], task: str, config: CrawdConfig) -> None:
        super().__init__()
        if config.neutralize > 0 and task != "lm":
            raise ValueError("neutralize applies to causal LMs only (it acts on next-word predictions): set it to 0")
        if config.equalize_through == "readout" and task != "lm":
            raise ValueError("equalize_through='readout' applies to causal LMs only (the readout acts on next-word "
                             "predictions): set it to 'model'")
        self.task, self.swaps, self.names = task, swaps, names
        self.counterfactual, self.equalize, self.neutralize = config.counterfactual, config.equalize, config.neutralize
        self.equalize_positions = config.equalize_positions
        self.probe_subject, self.probe_share = config.probe_subject, config.probe_share
        self.neutralize_through, self.equalize_through = config.neutralize_through, config.equalize_through
        if task == "lm":
            words = sorted({tuple(sorted((a, b))) for a, b in swaps.items()}) + list(PRONOUN_PAIRS)
            word_ids = token_pairs(tokenizer, words)
            name_ids = token_pairs(tokenizer, sorted({tuple(sorted(p)) for p in names.items()}))
            if not word_ids:
                raise ValueError("counterfactual / equalize: no gendered word pair is a single token of this "
                                 "tokenizer (he / she, his / her, ...)")
            self.classes = GenderedClasses(vocab_size, bipartite_groups(word_ids + name_ids),
                                           {t for pair in word_ids for t in pair})
        self.gives_gender = self.giving_spellings = None
        if config.has_readout and config.readout_where == "open":
            self.gives_gender = gender_giving_tokens(tokenizer, vocab_size, swaps, names)
            self.giving_spellings = gender_giving_spellings(tokenizer, swaps, names)

    def readout(self, hidden_size: int) -> GenderedReadout:
        """A zero-started :class:`GenderedReadout` of the paired gendered words, with the parts the
        terms through it train (the shared shift: neutralizing; the evening gate: equalizing)."""
        return GenderedReadout(self.classes.pair_tokens, self.classes.pair_valid, hidden_size, self.gives_gender,
                               self.giving_spellings,
                               shared=self.neutralize_through == "readout", evening=self.equalize_through == "readout")

    @staticmethod
    def wanted(config: CrawdConfig) -> bool:
        """Whether ``config`` asks for any of the terms."""
        return config.counterfactual > 0 or config.equalize > 0 or config.neutralize > 0

    @property
    def needs_twins(self) -> bool:
        return self.counterfactual > 0

    @property
    def needs_probes(self) -> bool:
        return self.task == "lm" and (self.neutralize > 0 or self.equalize > 0 and self.equalize_positions != "all")

    @property
    def probes_train_model(self) -> bool:
        """Whether a probe term trains the whole model (not only the readout)."""
        equalizing = self.equalize > 0 and (self.equalize_positions == "neutral" or self.equalize_positions == "open"
                                            and self.equalize_through == "model")
        return self.task == "lm" and (equalizing or self.neutralize > 0 and self.neutralize_through == "model")

    def collator(self, collate: Callable, tokenizer: PreTrainedTokenizerBase) -> Callable:
        if not (self.needs_twins or self.needs_probes):
            return collate
        return DebiasCollator(collate, tokenizer, self.swaps, self.names, self.task, self.needs_twins,
                              self.needs_probes, self.probe_subject, self.probe_share)

    def loss(self, logits: torch.Tensor, mask: torch.Tensor, twin_logits: torch.Tensor | None = None,
             twin_mask: torch.Tensor | None = None, twin_source: torch.Tensor | None = None,
             probe_logits: torch.Tensor | None = None, probe_mask: torch.Tensor | None = None,
             readout_logits: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The weighted terms for a batch's logits (B, n, V) or (B, C), its twins' and its probes' (if any).

        ``readout_logits``: per readout part (``"delta"``, ``"gate"``), the probes' logits whose gradient
        reaches that part alone (:meth:`GenderedReadout.forward` with ``trained``), read by the term that
        trains it (neutralizing: the shared shift; equalizing: the evening gate)."""
        total = logits.new_zeros((), dtype=torch.float32)
        if self.task != "lm":
            if self.counterfactual > 0 and twin_logits is not None:
                total = total + self.counterfactual * symmetric_kl(
                    logits.float().log_softmax(-1), twin_logits.float().log_softmax(-1)).mean()
            return total
        if self.counterfactual > 0 and twin_logits is not None:
            rows, cols = ((twin_source >= 0) & twin_mask.bool()).nonzero(as_tuple=True)
            p_log = self.classes.class_logprobs(logits[rows, twin_source[rows, cols]])
            q_log = self.classes.class_logprobs(twin_logits[rows, cols])[..., self.classes.swap]
            total = total + self.counterfactual * symmetric_kl(p_log, q_log).mean()
        open_equalizing = self.equalize > 0 and self.equalize_positions == "open"
        if probe_logits is not None and (open_equalizing or self.neutralize > 0):
            keep = probe_mask.bool()
            # each term reads the probes' logits with the gradient of what it trains: the whole model's
            # ("model") or one readout part's alone (the same values); terms that share a source read it once
            equalizing_source = "gate" if self.equalize_through == "readout" else "model"
            neutralizing_source = "delta" if self.neutralize_through == "readout" else "model"
            logits_of = {"model": probe_logits, **(readout_logits or {})}
            wanted = {equalizing_source} if open_equalizing else set()
            wanted |= {neutralizing_source} if self.neutralize > 0 else set()
            terms = {source: self.classes.open_terms(logits_of[source][keep]) for source in wanted}
            if open_equalizing:
                swap_kl, log_mass = terms[equalizing_source]
                weight = log_mass.detach().exp()
                total = total + self.equalize * (weight * swap_kl).sum() / weight.sum().clamp_min(1e-8)
            if self.neutralize > 0:
                log_mass = terms[neutralizing_source][1]
                rows = probe_mask.any(-1).sum().clamp_min(1)  # a tensor: no device sync on the training step
                total = total + self.neutralize * -torch.log1p(-log_mass.clamp_max(-1e-6).exp()).sum() / rows
        if self.equalize > 0 and not open_equalizing:
            if self.equalize_positions == "neutral":
                chosen = [(probe_logits, probe_mask)] if probe_logits is not None else []
            else:
                chosen = [(logits, mask)] + ([(twin_logits, twin_mask)] if twin_logits is not None else [])
            gaps = [self.classes.pair_logratios(part)[part_mask.bool()] for part, part_mask in chosen]
            if gaps and sum(len(g) for g in gaps):
                total = total + self.equalize * torch.cat(gaps).abs().mean()
        return total
