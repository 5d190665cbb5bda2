"""Judges of generated speech for benches and tests.

Word error (pocketsphinx) and phoneme error (a CTC recognizer). Above ``models`` (it may use any family)
and never imported by the runtime.
"""
