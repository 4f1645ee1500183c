"""Keyword rules that label report text for a class: few labelled examples, or weak labels for every report.

A rule lists the phrases that state a finding (`terms`) and phrases that veto a sentence (`exclude`,
e.g. "hilar" is not "hilum enlarged" when the sentence says "calcified hilar nodes"). Each mention of a
term, in a sentence of the configured sections, is read NegEx-like (the common convention for report
labelers, CheXpert's among them): uncertain when a hedging cue ("possible", "cannot exclude", ...)
precedes it within `negation_window` words or a post-cue ("... cannot be excluded") follows it; else
negated when a negation cue ("no", "without", "negative for", ...) precedes it or a post-cue ("... is
not seen") follows it; else affirmed. A report's label for the class (`classify`) is then

    1   (positive)   an affirmed mention anywhere;
    -1  (uncertain)  no affirmed mention but a hedged one: unknown, neither positive nor negative;
    0   (negative)   only negated mentions, or none at all: a report that describes the chest and does
                     not state the finding is read as its absence, as the CXR-LT labels themselves are.

Few-shot mode (`mine_examples`) draws a few positive and negative reports per class with a fixed seed
(uncertain ones are never drawn), and every image of a drawn report becomes one example row:

    class, label (1 / 0), report_id, image_id, evidence (the sentence that fired, for positives)

Weak-label mode labels every report; cxrlt.data.weak_labels turns that into a per-image table.
`MiningConfig` is a TOML file (see configs/fewshot-iu-task3.toml, configs/fewshot-mimic-task3.toml)
loaded with cxrlt.config, so a misspelt key is an error naming it.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxrlt.atomic import atomic_path
from cxrlt.data.reports import Report
from cxrlt.errors import InputError

EXAMPLE_COLUMNS = ("class", "label", "report_id", "image_id", "evidence")
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"[.;!?\n]+")


@dataclass
class KeywordRule:
    """terms: phrases stating the finding; exclude: phrases that make a sentence not count."""

    terms: list[str]
    exclude: list[str] = field(default_factory=list)


@dataclass
class MiningConfig:
    rules: dict[str, KeywordRule] = field(default_factory=dict)
    sections: list[str] = field(default_factory=lambda: ["FINDINGS", "IMPRESSION"])
    negation_cues: list[str] = field(
        default_factory=lambda: ["no", "not", "without", "negative for", "free of", "resolved", "rule out", "ruled out"]
    )
    negation_post_cues: list[str] = field(
        default_factory=lambda: [
            "is not seen",
            "are not seen",
            "is not identified",
            "are not identified",
            "is absent",
            "are absent",
            "has resolved",
            "have resolved",
        ]
    )
    uncertainty_cues: list[str] = field(
        default_factory=lambda: [
            "possible",
            "possibly",
            "probable",
            "question of",
            "questionable",
            "suspicious for",
            "concerning for",
            "suspected",
            "cannot exclude",
            "can not exclude",
            "could be",
            "may be",
            "may represent",
            "suggestive of",
            "equivocal",
            "borderline",
        ]
    )
    uncertainty_post_cues: list[str] = field(
        default_factory=lambda: [
            "cannot be excluded",
            "can not be excluded",
            "not excluded",
            "is questioned",
            "is suspected",
            "is possible",
            "is not ruled out",
            "not ruled out",
        ]
    )
    negation_window: int = 5
    max_positives: int = 10
    max_negatives: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        empty = [name for name, rule in self.rules.items() if not any(_words(t) for t in rule.terms)]
        if empty:
            raise InputError(f"rules.{empty[0]}.terms: needs at least one non-empty phrase")
        if self.negation_window < 0 or self.max_positives < 1 or self.max_negatives < 0:
            raise InputError("mining needs negation_window >= 0, max_positives >= 1 and max_negatives >= 0")


@dataclass(frozen=True)
class Example:
    class_name: str
    label: int
    report_id: str
    image_id: str
    evidence: str = ""


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _find(words: list[str], phrase: list[str]) -> list[int]:
    """Start positions of `phrase` (a word sequence) in `words`."""
    n = len(phrase)
    return [i for i in range(len(words) - n + 1) if words[i : i + n] == phrase]


def _cued(
    words: list[str], start: int, length: int, before: Sequence[list[str]], after: Sequence[list[str]], window: int
) -> bool:
    """Whether a cue of `before` lies within the `window` words before the mention at `start` (of
    `length` words), or a cue of `after` starts within the `window` words after it."""
    preceding, following = words[max(0, start - window) : start], words[start + length :]
    return any(_find(preceding, cue) for cue in before) or any(
        any(at < window for at in _find(following, cue)) for cue in after
    )


POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1


@dataclass(frozen=True)
class Mention:
    """A report's label for one class: POSITIVE, NEGATIVE or UNCERTAIN, with the sentence that decided
    it (the affirmed, else the hedged mention; empty for a negative)."""

    label: int
    sentence: str = ""


class _Cues:
    """A config's cue phrases as word lists, split once per classification."""

    def __init__(self, cfg: MiningConfig) -> None:
        def split(phrases: Sequence[str]) -> list[list[str]]:
            return [w for w in (_words(p) for p in phrases) if w]

        self.negation, self.negation_post = split(cfg.negation_cues), split(cfg.negation_post_cues)
        self.uncertainty, self.uncertainty_post = split(cfg.uncertainty_cues), split(cfg.uncertainty_post_cues)
        self.window = cfg.negation_window


def classify(report: Report, rule: KeywordRule, cfg: MiningConfig) -> Mention:
    """The report's label for the rule's finding (module docstring): the first affirmed mention wins;
    hedging is read before negation, so "cannot exclude" is uncertain although it holds "not"."""
    cues = _Cues(cfg)
    terms = [w for w in (_words(t) for t in rule.terms) if w]
    excludes = [w for w in (_words(t) for t in rule.exclude) if w]
    hedged = ""
    for section in cfg.sections:
        for sentence in _SENTENCE_END.split(report.sections.get(section.upper(), "")):
            words = _words(sentence)
            if any(_find(words, e) for e in excludes):
                continue
            for term in terms:
                for start in _find(words, term):
                    if _cued(words, start, len(term), cues.uncertainty, cues.uncertainty_post, cues.window):
                        hedged = hedged or sentence.strip()
                    elif not _cued(words, start, len(term), cues.negation, cues.negation_post, cues.window):
                        return Mention(POSITIVE, sentence.strip())
    return Mention(UNCERTAIN, hedged) if hedged else Mention(NEGATIVE)


def affirmed_sentence(report: Report, rule: KeywordRule, cfg: MiningConfig) -> str | None:
    """The first sentence of the configured sections that affirms the rule's finding, or None."""
    mention = classify(report, rule, cfg)
    return mention.sentence if mention.label == POSITIVE else None


def mine_examples(reports: Sequence[Report], cfg: MiningConfig) -> list[Example]:
    """Up to max_positives positive and max_negatives negative reports per rule (uncertain reports are
    neither), one row per image."""
    if not cfg.rules:
        raise InputError("mining config has no [rules.<class>] table")
    examples: list[Example] = []
    for name, rule in cfg.rules.items():
        positives: list[tuple[Report, str]] = []
        negatives: list[Report] = []
        for report in reports:
            if not report.image_ids:
                continue  # a report without images gives no training example
            mention = classify(report, rule, cfg)
            if mention.label == POSITIVE:
                positives.append((report, mention.sentence))
            elif mention.label == NEGATIVE:
                negatives.append(report)
        rng = random.Random(f"{cfg.seed}:{name}")
        for report, sentence in rng.sample(positives, min(cfg.max_positives, len(positives))):
            examples += [Example(name, 1, report.report_id, i, sentence) for i in report.image_ids]
        for report in rng.sample(negatives, min(cfg.max_negatives, len(negatives))):
            examples += [Example(name, 0, report.report_id, i) for i in report.image_ids]
    return examples


def write_examples(examples: Sequence[Example], path: str | os.PathLike) -> Path:
    """The example table (EXAMPLE_COLUMNS) as CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(EXAMPLE_COLUMNS)
        writer.writerows((e.class_name, e.label, e.report_id, e.image_id, e.evidence) for e in examples)
    return Path(path)


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Examples from a CSV with at least `class,label,image_id` (label 1 or 0); line-numbered errors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"examples {path}: no such file")
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        required = {"class", "label", "image_id"}
        if reader.fieldnames is None or not required <= set(reader.fieldnames):
            raise InputError(f"{path}: needs columns {', '.join(sorted(required))}; found {reader.fieldnames}")
        examples = []
        for line, row in enumerate(reader, start=2):
            if row["label"] not in ("0", "1"):
                raise InputError(f"{path}: line {line}: column 'label' must be 1 or 0, got {row['label']!r}")
            if not row["class"] or not row["image_id"]:
                raise InputError(f"{path}: line {line}: empty class or image_id")
            report_id, evidence = row.get("report_id") or "", row.get("evidence") or ""
            examples.append(Example(row["class"], int(row["label"]), report_id, row["image_id"], evidence))
    if not examples:
        raise InputError(f"{path}: no examples")
    return examples
