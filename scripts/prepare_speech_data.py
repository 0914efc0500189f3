#!/usr/bin/env python
"""Prepares the speech data of the CoDA speech tasks (coda_flax.datasets.speech).

Offline corpus: fetches the Debian packages asterisk-core-sounds-en-wav + asterisk-core-sounds-en
(read prompts with transcripts) and pocketsphinx-testdata (LibriVox / cards / digit clips) with
`apt-get download` (never installed), unpacks them, optionally synthesises Shakespeare sentences
with espeak-ng (needs the corpus of scripts/prepare_data.py), resamples everything to 16 kHz,
precomputes log-mel features and writes manifest.jsonl + stats.json under
<data-dir>/speech/offline-<key> (key: a hash of the settings; default data dir $CODA_DATA_DIR or
~/.cache/coda_flax/data). A second run with the same settings reuses everything.

    python scripts/prepare_speech_data.py [--data-dir DIR] [--num-espeak 1500 | --no-espeak]
                                          [--librispeech-dir DIR [--librispeech-splits ...]]
                                          [--force]

With --librispeech-dir (or $CODA_LIBRISPEECH_DIR and --librispeech) it also precomputes the
features of a local LibriSpeech copy (<dir>/LibriSpeech/<split>/<speaker>/<chapter>/...).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from coda_flax.datasets import librispeech  # noqa: E402
from coda_flax.datasets import speech as speech_data  # noqa: E402
from coda_flax.datasets.fetch import default_data_dir  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None,
                   help=f"cache directory (default: $CODA_DATA_DIR or {default_data_dir()})")
    p.add_argument("--num-espeak", type=int, default=1500,
                   help="Shakespeare sentences to synthesise with espeak-ng")
    p.add_argument("--no-espeak", action="store_true", help="skip espeak-ng synthesis")
    p.add_argument("--force", action="store_true",
                   help="rebuild the manifest (audio and feature files are reused)")
    p.add_argument("--librispeech-dir", default=None,
                   help="local LibriSpeech copy to featurise (the folder holding LibriSpeech/)")
    p.add_argument("--librispeech", action="store_true",
                   help=f"featurise the LibriSpeech copy at ${librispeech.LIBRISPEECH_ENV_VAR}")
    p.add_argument("--librispeech-splits", nargs="*", default=None,
                   choices=sorted(librispeech.LIBRISPEECH_SPLITS),
                   help="task splits to featurise (default: all present)")
    p.add_argument("--skip-offline", action="store_true", help="only prepare LibriSpeech")
    args = p.parse_args(argv)
    if not args.skip_offline:
        stats = speech_data.prepare_offline_speech(
            args.data_dir, espeak=not args.no_espeak, num_espeak=args.num_espeak,
            force=args.force)
        print(json.dumps(stats, indent=1))
    if args.librispeech_dir or args.librispeech:
        stats = librispeech.prepare_librispeech(args.librispeech_dir, args.data_dir,
                                                splits=args.librispeech_splits)
        print(json.dumps(stats, indent=1))
    print("[speech] register the tasks with coda_flax.tasks.speech.register_speech_tasks("
          f"{args.data_dir!r}, librispeech_dir={args.librispeech_dir!r})")


if __name__ == "__main__":
    main()
