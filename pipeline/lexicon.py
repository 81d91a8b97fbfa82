"""Word lists behind the offline emotion analyzer: tones, modifiers, settings, non-names.

Hand-picked, not exhaustive: a few hundred words in base form (``lookup`` strips the
common English inflections: screamed, screaming, screams -> scream). Strong words weigh
1.0, mild ones 0.5; a word may feed several tones.
"""

from __future__ import annotations

import logging
from functools import lru_cache

logger = logging.getLogger(__name__)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STRONG = 1.0
_MILD = 0.5

# tone: (strong words, mild words)
_TONE_WORDS: dict[str, tuple[str, str]] = {
    "joy": (
        "joy joyful delight delighted elated ecstatic jubilant bliss blissful overjoyed euphoria "
        "rejoice glee gleeful exuberant radiant",
        "happy happiness glad smile laugh laughter cheerful merry pleased grin giggle fun "
        "playful content sunshine beam",
    ),
    "sadness": (
        "grief grieve sorrow despair devastated heartbroken anguish mourn misery miserable weep "
        "wept sob tragic tragedy",
        "sad sadness tear cry unhappy loss gloomy hurt pain regret funeral farewell goodbye "
        "alone empty broken disappointed",
    ),
    "anger": (
        "rage fury furious enraged livid wrath seethe hatred hate loathe",
        "angry anger mad annoyed irritated bitter resent resentment scowl glare snarl shout "
        "yell slam frustrated hostile curse growl",
    ),
    "fear": (
        "terror terrified horror horrified dread panic petrified scream shriek nightmare monster "
        "fear",
        "afraid scared frightened fright tremble shiver shudder nervous anxious worry danger "
        "dangerous creepy haunted ghost blood death dead corpse kill",
    ),
    "surprise": (
        "astonished astonishment stunned shocked shock astounded flabbergasted aghast "
        "thunderstruck",
        "surprise surprised sudden suddenly unexpected gasp startled amazed amazement "
        "unbelievable abruptly",
    ),
    "disgust": (
        "disgust disgusted revolting repulsive vile nauseating abhorrent putrid rotten stench",
        "gross filthy foul sickening sick rancid slime slimy grime mold vomit reek",
    ),
    "anticipation": (
        "eager eagerly await anticipation yearn",
        "wait tomorrow hope hopeful expect prepare ready impatient countdown promise",
    ),
    "trust": (
        "trust loyal loyalty faithful devoted devotion vow oath",
        "friend friendship ally rely believe honest faith together protect safe support depend",
    ),
    "melancholy": (
        "melancholy wistful forlorn desolate bleak sombre somber mournful",
        "grey gray fade autumn rain dusk sigh pensive solitude ruin withered lonely",
    ),
    "excitement": (
        "exhilarating exhilarated thrilling thrilled electrifying exciting excited excitement",
        "rush race dash roar wild dance adrenaline burst leap spark buzz",
    ),
    "tension": (
        "tension tense standoff confrontation strained trapped cornered",
        "grip clench tight stare argue argument conflict struggle pressure sweat heartbeat "
        "pound threat edge knife gun sword storm",
    ),
    "peace": (
        "peace peaceful tranquil tranquility calm",
        "quiet gentle soft restful ease breeze harmony stillness hush relax sleep slumber",
    ),
    "mystery": (
        "mystery mysterious enigma enigmatic cryptic secret arcane occult",
        "strange unknown shadow hidden riddle clue puzzle fog mist whisper veil cloak dark "
        "darkness ancient symbol rune vanish disappear legend",
    ),
    "curiosity": (
        "curious curiosity intrigued fascinated inquisitive",
        "wonder question explore investigate examine peer peek discover search inspect study "
        "notice",
    ),
    "romance": (
        "love beloved kiss passion passionate romance romantic darling adore embrace",
        "heart tender caress sweetheart desire blush gaze lover wedding marry affection flirt "
        "longing",
    ),
    "adventure": (
        "adventure quest expedition journey voyage odyssey",
        "explore travel map treasure ship sail horizon mountain climb wander trek distant "
        "explorer pirate",
    ),
    "suspense": (
        "suspense breathless creak lurk stalk footstep",
        "slowly silence listen approach hesitate freeze froze watch closer",
    ),
    "courage": (
        "courage brave bravery valiant heroic hero fearless defiant bold",
        "fight dare resolve determined determination charge shield strength",
    ),
    "triumph": (
        "triumph triumphant victory victorious conquer won win champion glory",
        "success succeed achieve prevail overcome prize proud pride cheer celebrate celebration",
    ),
    "serenity": (
        "serenity serene idyllic",
        "glow golden dawn lake soothing meadow bloom blossom",
    ),
    "nostalgia": (
        "nostalgia nostalgic reminisce memories bygone",
        "remember memory childhood photograph letter yesterday familiar recall",
    ),
    "warmth": (
        "warmth warm cozy cosy comfort kindness tenderness",
        "hug hearth fireplace family welcome blanket tea care caring home mother",
    ),
    "unease": (
        "unease uneasy ominous foreboding eerie disquiet unsettling uncanny",
        "odd wrong uncomfortable restless suspicious doubt chill cold wary prickle murmur flicker",
    ),
}


def _build_lexicon() -> dict[str, dict[str, float]]:
    lexicon: dict[str, dict[str, float]] = {}
    for tone, (strong, mild) in _TONE_WORDS.items():
        for words, weight in ((strong, _STRONG), (mild, _MILD)):
            for word in words.split():
                tones = lexicon.setdefault(word, {})
                tones[tone] = max(tones.get(tone, 0.0), weight)
    return lexicon


LEXICON: dict[str, dict[str, float]] = _build_lexicon()
"""word -> {tone: weight}."""

INTENSIFIERS: dict[str, float] = {
    **dict.fromkeys(
        _words(
            "very so extremely utterly completely totally absolutely deeply incredibly terribly "
            "truly really most overwhelmingly intensely unbearably desperately wildly"
        ),
        1.5,
    ),
    **dict.fromkeys(_words("slightly somewhat barely faintly mildly almost little"), 0.6),
}
"""word -> multiplier applied to the next emotion word (within two words)."""

NEGATIONS = _words("not no never none nobody nothing neither nor without hardly cannot")
"""Words that negate an emotion word up to three words later (also any ``...n't``)."""

NEGATED_TONE: dict[str, str] = {
    "joy": "sadness",
    "trust": "unease",
    "peace": "unease",
    "serenity": "unease",
    "courage": "fear",
    "fear": "courage",
    "warmth": "melancholy",
    "triumph": "sadness",
    "romance": "melancholy",
    "sadness": "peace",
}
"""A negated tone's opposite ("not afraid" -> courage); unlisted tones are dropped."""

PLACES = _words(
    "forest woods castle room sea ocean shore beach river lake mountain hill valley village "
    "town city street alley road house cottage cabin kitchen garden church cathedral chapel "
    "tower palace hall library cave cavern desert field meadow ship deck harbour harbor bridge "
    "tavern inn market graveyard cemetery dungeon cellar attic bedroom ballroom courtyard "
    "battlefield camp island jungle swamp marsh moor farm barn station train school classroom "
    "office hospital prison temple ruins shop park square corridor staircase cliff"
)
TIMES = _words("night midnight dawn dusk twilight morning evening noon sunset sunrise afternoon")
WEATHER = _words("rain storm snow fog mist thunder wind lightning hail blizzard")

HONORIFICS = _words(
    "Mr Mrs Ms Dr Sir Lady Lord Miss Captain King Queen Prince Princess Professor Uncle Aunt "
    "Master Madam Father Sister Brother Saint"
)
ABBREVIATIONS = _words("mr mrs ms dr st jr sr vs etc prof capt gen col lt sgt mt")
"""Words whose trailing period does not end a sentence."""

NOT_NAMES = _words(
    """The A An And But Or If Then When While He She It They We You I His Her Hers Him Its
    Their Them Our Us My Me Your This That These Those There Here What Who Whom Whose Why How
    Where Which After Before As At In On Of For From With By To Not No Yes Oh Ah Chapter
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May
    June July August September October November December God Heaven Hell OK Okay Hello Goodbye
    Well Now Still Just Even Perhaps Maybe Then Once Suddenly Yet So All Some Every Each One
    Two Three Part Book Prologue Epilogue"""
)
"""Capitalised words that are not character names even when they appear mid-sentence."""

_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("iness", "y"),
    ("ily", "y"),
    ("ies", "y"),
    ("ied", "y"),
    ("ing", ""),
    ("ing", "e"),
    ("ed", ""),
    ("ed", "e"),
    ("es", ""),
    ("s", ""),
    ("ly", ""),
    ("ness", ""),
    ("ful", ""),
)


@lru_cache(maxsize=32768)
def lookup(word: str) -> dict[str, float] | None:
    """Tone weights of a lower-case word or its uninflected form, or None."""
    found = LEXICON.get(word)
    if found is not None:
        return found
    for suffix, replacement in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            stem = word[: -len(suffix)] + replacement
            found = LEXICON.get(stem)
            if found is not None:
                return found
            # running -> run, stopped -> stop
            if not replacement and len(stem) > 2 and stem[-1] == stem[-2]:
                found = LEXICON.get(stem[:-1])
                if found is not None:
                    return found
    return None
