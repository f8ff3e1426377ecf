"""The 1000 ImageNet-1K class names, in the standard class-index order (public facts).

The names live in ``infogrowth/data/imagenet_classes.txt``, one per line: the first WordNet
lemma of each synset, in the sorted-synset order used by every ImageNet-1K classifier (copied
from timm 1.0.31 ``data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``).
Two names repeat: "crane" (134 bird, 517 machine) and "maillot" (638, 639); look-ups by name
must consider every matching index.
"""

from __future__ import annotations

from importlib.resources import files

IMAGENET_CLASSES: tuple[str, ...] = tuple(
    files("infogrowth.data").joinpath("imagenet_classes.txt").read_text("utf-8").splitlines()
)
if len(IMAGENET_CLASSES) != 1000:
    raise RuntimeError(f"imagenet_classes.txt holds {len(IMAGENET_CLASSES)} names, not 1000")
