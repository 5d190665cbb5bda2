"""Offline English sentences for the speech corpus: a small random grammar over common words.

No text corpus ships on this machine, so sentences are generated: subject–verb–object clauses with
adjectives, adverbs, places, times, numbers, questions and two-clause sentences. The vocabulary (~900
words) covers English phonotactics broadly; the grammar keeps sentences 3–14 words long so a training
batch of utterances stays short. Deterministic for a given seed.
"""

from __future__ import annotations

import random

NAMES = """Anna Ben Carla David Emma Frank Grace Henry Iris Jack Karen Leo Maria Nathan Olivia Peter Quinn Rosa
Sam Tina Victor Wendy Yusuf Zoe Alice Bruno Chloe Daniel Elena Felix George Hannah Isaac Julia Kevin Laura Martin
Nina Oscar Paula Ruth Simon Thomas Uma Walter""".split()
NOUNS = """apple table window garden river mountain forest city village road bridge house kitchen library school
teacher doctor farmer painter driver student child friend neighbor brother sister mother father baby dog cat horse
bird fish rabbit tiger monkey chicken cow sheep car train boat plane bicycle bus truck letter book paper pencil
picture song story game ball box bottle cup glass plate spoon knife chair bed door floor wall roof lamp clock phone
computer camera radio ticket coin bag coat shirt shoe hat ring key map flower tree leaf grass stone sand island ocean
lake beach desert field farm market shop office hospital church castle tower station airport museum theater park
street corner morning evening winter summer autumn spring holiday birthday party dinner breakfast lunch bread cheese
butter sugar salt coffee tea milk water juice soup rice potato tomato orange lemon cake cookie chocolate candle
blanket pillow mirror basket engine machine robot rocket planet star moon sun cloud rain snow wind storm thunder
question answer idea plan problem secret message dream voice sound noise music silence language number minute
hour week month year history science village captain soldier king queen prince princess pilot nurse chef singer
dancer writer lawyer judge artist baker hunter sailor fisherman gardener""".split()
VERBS = """found saw liked wanted painted opened closed carried bought sold watched helped called visited cleaned
cooked fixed moved pushed pulled washed counted followed remembered forgot brought took made built broke dropped
lifted caught threw kicked found hid showed gave sent wrote read heard touched tasted smelled loved hated needed
borrowed ordered packed planted picked checked chose described explained noticed finished started changed""".split()
INTRANS = """laughed smiled waited slept danced jumped walked arrived left stayed worked played sang cried shouted
listened rested travelled returned disappeared appeared answered agreed woke paused whispered""".split()
ADJS = """big small old new young tall short long happy sad angry quiet loud bright dark warm cold hot cool soft hard
heavy light fast slow clean dirty empty full rich poor strong weak early late busy lazy brave shy clever funny
strange famous simple careful gentle honest lucky nervous polite proud quick calm red blue green yellow white black
brown purple orange golden silver wooden broken hidden tiny huge ancient modern friendly wild sweet bitter fresh
""".split()
ADVS = """quickly slowly quietly loudly carefully happily sadly suddenly finally easily gently nearly really
always never often sometimes usually rarely together again already almost""".split()
PLACES = """at home; in the garden; near the river; at the station; in the kitchen; on the bridge; behind the house;
under the table; in the park; at the market; by the window; on the beach; in the forest; at school; in the city;
next to the library; across the street; inside the museum; outside the castle; on the island""".split(";")
TIMES = """yesterday; today; this morning; last night; on Monday; on Friday; in the evening; after dinner;
before breakfast; at noon; next week; last summer; every day; in winter; at midnight; two days ago""".split(";")
NUMBERS = """two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred""".split()
DETS = ["the", "a", "my", "your", "his", "her", "our", "their", "this", "that"]
WH = ["why", "where", "when", "how"]
CONJ = ["and", "but", "because", "so", "while", "although"]


def _np(rng: random.Random) -> str:
    """A noun phrase."""
    r = rng.random()
    if r < 0.2:
        return rng.choice(NAMES)
    if r < 0.3:
        return f"{rng.choice(NUMBERS)} {rng.choice(ADJS)} {rng.choice(NOUNS)}s"
    if r < 0.65:
        return f"{rng.choice(DETS)} {rng.choice(ADJS)} {rng.choice(NOUNS)}"
    return f"{rng.choice(DETS)} {rng.choice(NOUNS)}"


def _clause(rng: random.Random) -> str:
    """A statement clause without final punctuation."""
    parts = [_np(rng)]
    if rng.random() < 0.25:
        parts.append(rng.choice(ADVS))
    if rng.random() < 0.7:
        parts += [rng.choice(VERBS), _np(rng)]
    else:
        parts.append(rng.choice(INTRANS))
    if rng.random() < 0.35:
        parts.append(rng.choice(PLACES).strip())
    if rng.random() < 0.3:
        parts.append(rng.choice(TIMES).strip())
    return " ".join(parts)


def sentence(rng: random.Random) -> str:
    """One sentence with capital letter and punctuation."""
    r = rng.random()
    if r < 0.15:
        body = f"{rng.choice(WH)} did {_np(rng)} {rng.choice(['leave', 'wait', 'stay', 'call', 'laugh'])}"
        if rng.random() < 0.4:
            body += " " + rng.choice(TIMES).strip()
        text = body + "?"
    elif r < 0.3:
        text = f"{_clause(rng)}, {rng.choice(CONJ)} {_clause(rng)}."
    elif r < 0.38:
        aux, verb = rng.choice(["did", "can", "will", "should"]), rng.choice(["help", "see", "find", "call"])
        text = f"{aux} {_np(rng)} {verb} {_np(rng)}?"
    else:
        text = _clause(rng) + rng.choice([".", ".", ".", "!"])
    words = text.split()
    if len(words) > 14:  # keep utterances short
        text = " ".join(words[:14]).rstrip(",") + "."
    return text[0].upper() + text[1:]


def sentences(num: int, seed: int) -> list[str]:
    """``num`` distinct sentences."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < num:
        s = sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
