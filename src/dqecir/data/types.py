"""The in-memory form every benchmark loader returns, whatever its file format.

Image ids are strings everywhere (CIRCO's integer COCO ids are turned into their decimal
string), so that metrics, evaluation and indexes never care which benchmark they serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Query:
    """One composed query: a reference image and a modification text.

    Attributes:
        qid: the benchmark's query id (CIRR ``pairid``, CIRCO ``id``, FashionIQ
            ``<category>/<index in the caption file>``), as a string.
        reference: image id of the reference image.
        texts: the modification text(s); FashionIQ has two captions, the others one.
        target: the single annotated (hard) target, ``None`` where the split hides it.
        gt: every annotated valid target (the hard one included); empty where hidden.
        members: CIRR ``img_set.members`` (the subset for Recall_subset), else empty.
        kind: query kind of the embedded benchmarks (color / shape / both / size), else None.
        heldout: whether the target's attribute combination never occurs in train (embedded
            benchmarks only), else None.
        group: FashionIQ category (dress / shirt / toptee), else None.
        variants: other phrasings of the same change that training may draw instead of
            ``texts`` (the embedded benchmarks' ``caption_variants``, the first being the
            caption itself); empty elsewhere.
        mentions: the attributes the text names (embedded benchmarks' ``mentions``), else None.
    """

    qid: str
    reference: str
    texts: tuple[str, ...]
    target: str | None = None
    gt: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    kind: str | None = None
    heldout: bool | None = None
    group: str | None = None
    variants: tuple[str, ...] = ()
    mentions: tuple[str, ...] | None = None


@dataclass
class CIRSplit:
    """A benchmark split: its queries and the gallery they are ranked against.

    ``image_paths`` maps every image id the split references (gallery, references, members)
    to a file path; it may be empty when the loader was asked not to resolve images (scoring
    needs annotations only).
    """

    benchmark: str
    split: str
    queries: list[Query]
    gallery: list[str]
    image_paths: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """Descriptions of records/images dropped under ``skip_missing`` (never silent)."""
    remove_reference: bool = True
    """Whether the protocol removes the reference image from the ranking (CIRR, CIRCO: yes;
    FashionIQ: no)."""

    @property
    def has_targets(self) -> bool:
        return any(q.target is not None for q in self.queries)
