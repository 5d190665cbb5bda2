"""Judges of generated speech for benches and tests.

Word error (pocketsphinx) and phoneme error (a CTC recognizer), and the speech corpus they, the benches
and the training scripts read (``speech_corpus``). Above ``models`` (it may use any family)
and never imported by the runtime.
"""
