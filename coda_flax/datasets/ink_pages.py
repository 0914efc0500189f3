"""Mostly blank pages with one small word (issue 18's image claim, the paper's Figure 7): the
answer is the word, set in small type at a random place on a white page, so that only a few
patches hold ink and a router that picks them is the one that can read.

    "<white 256 x 256 page, 'king' in 24-32 px DejaVu Sans somewhere>"   -> king

Unlike rendered_words (coda_flax.datasets.vision: 20-40 px, several fonts, page sizes and ink
levels) every page here has one size, one font and black ink; only the word, its position and
its size vary. font_sizes (default 12-16 px: the word covers about 2% of 256 patches of
16 px) sets the type; `coda claims` uses 24-32 px (about 4%), which its small patch model
learns to read (experiments.claims_images). Everything outside the word's box is exactly
white (255), which tests/test_claims.py checks.

Layout (a dataset of coda_flax.datasets.cache, <data_dir>/ink_pages/pages-<key>/, key = the
settings and the font's SHA-256), the rendered-documents layout, so that the vision tasks'
readers take it as it is (tasks.vision.register_page_task):
    images/{train,validation}/<id>.png   grey-scale pages
    {train,validation}.jsonl             {id, image, text, bbox [x0, y0, x1, y1], width, height,
                                         font, font_size, split}
    meta.json                            the settings and counts
"""

from __future__ import annotations

import json
import os
import random
from typing import Callable, Optional, Sequence

from coda_flax.checksums import sha256_file
from coda_flax.datasets import cache
from coda_flax.datasets.records import write_jsonl
from coda_flax.datasets.vision import find_fonts, render_page

INK_PAGES = "ink_pages/pages"
FORMAT_VERSION = 1
WORDS = ("king", "love", "lord", "night", "death", "crown", "queen", "sword")
PAGE_SIZE = (256, 256)
FONT_SIZES = (12, 16)

Log = Callable[[str], None]


def render_pages(out_dir: str, font_path: str, *, words: Sequence[str] = WORDS,
                 num_train: int, num_validation: int, page_size=PAGE_SIZE,
                 font_sizes=FONT_SIZES, seed: int = 0) -> dict:
    """Writes the pages and their records into out_dir (layout in the module docstring);
    each split holds every word equally often (num % len(words) == 0) in a shuffled order.
    Deterministic by seed. Returns {split: count}."""
    if not words or num_train < len(words) or num_validation < len(words):
        raise ValueError(f"need words and at least one page per word in each split "
                         f"({len(words)}), got num_train={num_train}, "
                         f"num_validation={num_validation}.")
    rng = random.Random(seed)
    counts = {}
    for split, count in (("train", num_train), ("validation", num_validation)):
        chosen = [words[i % len(words)] for i in range(count)]
        rng.shuffle(chosen)
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
        records = []
        for i, word in enumerate(chosen):
            page, bbox, size = render_page(word, font_path, rng.randint(*font_sizes),
                                           tuple(page_size), rng, ink=0)
            rel = os.path.join("images", split, f"{split}_{i:05d}.png")
            with cache.atomic_path(os.path.join(out_dir, rel)) as tmp:
                page.save(tmp, format="PNG")
            records.append({"id": f"{split}_{i:05d}", "image": rel, "text": word, "bbox": bbox,
                            "width": page_size[0], "height": page_size[1],
                            "font": os.path.basename(font_path), "font_size": size,
                            "split": split})
        counts[split] = write_jsonl(os.path.join(out_dir, f"{split}.jsonl"), records)
    return counts


def prepare_ink_pages(data_dir: Optional[str] = None, *, words: Sequence[str] = WORDS,
                      num_train: int = 2400, num_validation: int = 320, page_size=PAGE_SIZE,
                      font_sizes=FONT_SIZES, seed: int = 0, download: bool = True,
                      force: bool = False, log: Log = print) -> dict:
    """The pages under <data_dir>/ink_pages/pages-<key> (built once, reused while the files
    match the manifest; the font from vision.find_fonts, fetched when download=True). Returns
    meta.json plus "dir"."""
    font = find_fonts(data_dir, download=download, log=log)["sans"]
    settings = {"format_version": FORMAT_VERSION, "words": list(words), "num_train": num_train,
                "num_validation": num_validation, "page_size": list(page_size),
                "font_sizes": list(font_sizes), "seed": seed, "font": sha256_file(font)}

    def build(out_dir):
        counts = render_pages(out_dir, font, words=words, num_train=num_train,
                              num_validation=num_validation, page_size=page_size,
                              font_sizes=font_sizes, seed=seed)
        cache.write_json(os.path.join(out_dir, "meta.json"), dict(settings, counts=counts))
        log(f"[data] ink pages (one small word on a blank page): {counts} -> {out_dir}")
        return {"rows": counts}

    prepared = cache.prepare(data_dir, INK_PAGES, settings, build, force=force, log=log)
    with open(os.path.join(prepared["dir"], "meta.json")) as f:
        return dict(json.load(f), dir=prepared["dir"])


__all__ = ["WORDS", "PAGE_SIZE", "FONT_SIZES", "render_pages", "prepare_ink_pages"]
