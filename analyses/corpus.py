"""A generated, TinyStories-like corpus: simple English children's stories from a seed.

Why: the demo and the tests train a small transformer on children's stories, and
downloading TinyStories would make them depend on the network and on a multi-GB file.
This module is an offline stand-in: pure standard library, fast (20,000 stories in about
a second on one core), and with enough real structure for a 4-layer model to learn:
named characters with consistent pronouns, places, objects, feelings, and short plots
with cause and effect ("because", "so") that stay consistent within a story.

How: each story has a cast of two characters (name, kind, pronoun), a handful of
story-wide slots (place, object, food, feelings...) and one plot template. A plot is an
ordered list of beats; a beat is a list of sentence variants, and optional beats (often
dialogue) appear with a probability. Every mention of a character or object is rendered
from the same slots, so the name introduced is the name used later, pronouns match, and
the object lost is the object found. Templates never spell out a pronoun themselves.

Determinism: story i of seed s comes from its own ``random.Random(f"{s}:{i}")`` (string
seeds are hashed with SHA-512, not ``hash()``), so output is identical across processes
and ``generate_stories(k, s)`` is a prefix of ``generate_stories(n, s)`` for k <= n.
Bump ``CORPUS_VERSION`` whenever the output changes: it is part of cache keys.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["CORPUS_VERSION", "generate_stories"]

CORPUS_VERSION = "stories-v1"


@dataclass(frozen=True)
class _Character:
    name: str
    kind: str
    pronoun: str  # "she", "he" or "they"


@dataclass(frozen=True)
class _Plot:
    name: str
    beats: tuple  # of (probability, variants)
    morals: tuple


@dataclass(frozen=True)
class _Story:
    plot: str
    cast: tuple
    slots: dict
    sentences: list


# ---------------------------------------------------------------- characters

_PRONOUN_FORMS = {
    "she": {"sub": "she", "obj": "her", "pos": "her", "self": "herself", "was": "was"},
    "he": {"sub": "he", "obj": "him", "pos": "his", "self": "himself", "was": "was"},
    "they": {"sub": "they", "obj": "them", "pos": "their", "self": "themself", "was": "were"},
}

# kind: (weight, pronoun options, names, likes)
_KINDS = {
    "girl": (3, ("she",), ("Lily", "Mia", "Sara", "Anna", "Emma", "Zoe", "Lucy", "Ella", "Ruby", "Nora", "Amy", "Kim"),
             ("loved to play outside", "loved to sing and dance", "loved to read books")),
    "boy": (3, ("he",), ("Tom", "Ben", "Max", "Leo", "Jack", "Tim", "Finn", "Omar", "Noah", "Sam", "Dan", "Jay"),
            ("loved to run and jump", "loved to play with blocks", "loved to look at bugs")),
    "kid": (1, ("they",), ("Alex", "Jo", "Kai", "Robin", "Riley", "Sky"),
            ("loved to draw pictures", "loved to make up songs", "loved to climb trees")),
    "dog": (1, ("he", "she"), ("Spot", "Buddy", "Rex", "Biscuit", "Daisy"), ("loved to dig and bark", "loved to chase sticks")),
    "cat": (1, ("he", "she"), ("Whiskers", "Mittens", "Tiger", "Luna", "Socks"),
            ("loved to nap in the sun", "loved to chase yarn")),
    "bird": (1, ("he", "she"), ("Tweety", "Pip", "Sunny", "Chirp"), ("loved to sing songs", "loved to fly high")),
    "rabbit": (1, ("he", "she"), ("Hoppy", "Fluffy", "Clover", "Bun"), ("loved to hop in the grass", "loved to eat carrots")),
    "bear": (1, ("he", "she"), ("Bruno", "Honey", "Teddy", "Barney"), ("loved to eat sweet honey", "loved long naps")),
    "fox": (1, ("he", "she"), ("Rusty", "Red", "Foxy"), ("loved to explore", "loved to play tricks")),
    "mouse": (1, ("he", "she"), ("Squeak", "Nibbles", "Tiny"), ("loved to eat cheese", "loved to hide in small places")),
    "duck": (1, ("he", "she"), ("Quacky", "Puddles", "Waddles"), ("loved to splash in the pond", "loved to swim")),
    "grandma": (0.5, ("she",), ("Grandma Rose", "Grandma May", "Grandma Sue"), ("loved to bake cookies", "loved to knit")),
    "grandpa": (0.5, ("he",), ("Grandpa Joe", "Grandpa Bill", "Grandpa Ned"), ("loved to tell stories", "loved to fish")),
}
_ELDERS = ("grandma", "grandpa")
_ADJECTIVES = ("little", "small", "kind", "happy", "curious", "brave", "friendly", "shy", "playful", "gentle")
_ELDER_ADJECTIVES = ("kind", "gentle", "old", "sweet", "wise")

# ---------------------------------------------------------------- the world

_OUTINGS = (  # (preposition, outdoor place, what one does there)
    ("at", "park", "play ball"), ("at", "beach", "build a sandcastle"), ("in", "forest", "look for pinecones"),
    ("on", "hill", "fly a kite"), ("in", "garden", "have a picnic"), ("by", "river", "catch little fish"),
    ("by", "pond", "feed the ducks"), ("at", "playground", "go down the slide"), ("on", "farm", "see the cows"),
    ("in", "meadow", "pick flowers"),
)
_INSIDE = ("kitchen", "living room", "bedroom", "playroom")
_COLORS = ("red", "blue", "green", "yellow", "purple", "pink", "orange")
_TOYS = ("ball", "kite", "hat", "box", "boat", "teddy bear", "toy car", "book", "doll", "drum")
_FOODS = ("three big cookies", "a shiny red apple", "a bag of sweet grapes", "two warm muffins",
          "a jar of honey", "a big sandwich")
_HIDING_SPOTS = ("under a big bush", "behind a tree", "next to the old bench", "in the tall grass",
                 "under a pile of leaves", "near the water")
_FEELINGS = {
    "happy": ("happy", "glad", "joyful"), "sad": ("sad", "upset", "unhappy"),
    "scared": ("scared", "afraid", "frightened"), "angry": ("angry", "mad", "cross"),
    "proud": ("proud", "very proud"), "surprised": ("surprised", "amazed", "shocked"),
    "sleepy": ("sleepy", "tired"), "lonely": ("lonely", "sad and alone", "a bit lonely"),
}
_WEATHER = (  # (what happened, one word for it)
    ("dark clouds filled the sky and it began to rain", "rain"), ("big snowflakes started to fall", "snow"),
    ("a cold wind began to blow very hard", "wind"), ("thunder boomed and rain poured down", "storm"),
)
_INDOOR_FUN = (("build a fort with blankets", "built a fort with blankets"), ("bake cookies", "baked cookies"),
               ("draw pictures", "drew pictures"), ("read a book", "read a book together"),
               ("play a board game", "played a board game"))
_PROBLEMS = (  # (what went wrong for b, what a did about it)
    ("was stuck in the thick mud", "pulled {b_obj} out with a long stick"),
    ("could not get down from a tall tree", "brought a ladder and helped {b_obj} climb down"),
    ("had hurt {b_pos} leg and could not walk home", "helped {b_obj} walk home slowly"),
    ("had dropped {b_pos} hat into the river", "reached out with a long branch and got the hat back"),
    ("was lost and could not find the way home", "showed {b_obj} the path back home"),
)
_MISTAKES = (  # (what a did to b's toy, how a fixed it)
    ("dropped it, and it broke into two pieces", "fixed it with some glue"),
    ("threw it too high, and it got stuck in a tree", "climbed up carefully and got it down"),
    ("left it out in the rain, and it got all wet", "dried it with a soft towel"),
    ("stepped on it by accident, and it broke", "fixed it with tape and glue"),
    ("lost it in the tall grass", "looked and looked until {a_sub} found it"),
)
_SKILLS = (  # (skill, how a try fails, the success)
    ("ride a bike", "the bike wobbled and {a_sub} fell down", "rode the bike all the way down the path"),
    ("fly a kite", "the kite fell to the ground", "made the kite fly high up in the sky"),
    ("climb the big tree", "{a_pos} feet slipped on the bark", "climbed all the way to the top branch"),
    ("swim across the pond", "{a_sub} got tired and had to stop", "swam all the way across the pond"),
    ("jump over the big log", "{a_sub} tripped and landed in the leaves", "jumped right over the log"),
    ("build a tall tower of blocks", "the tower fell down with a crash", "built a tower taller than {a_self}"),
    ("whistle a song", "only air came out", "whistled a happy song"),
)
_NOISES = ("a loud bump", "a strange scratch at the door", "a soft tap at the window", "a creak in the hall")
_NOISE_CAUSES = ("had come to say good night", "wanted a little snack", "had knocked over a cup", "wanted to play")
_GAMES = (("playing catch with a ball", "played catch"), ("jumping rope", "took turns jumping rope"),
          ("playing hide and seek", "played hide and seek"), ("drawing with chalk", "drew big pictures with chalk"),
          ("blowing bubbles", "blew big bubbles"))
_FLAVORS = ("chocolate", "strawberry", "lemon", "vanilla", "carrot")

# ---------------------------------------------------------------- plots

_INTROS = ("Once upon a time, there was {a_intro}.", "There once was {a_intro}.",
           "Long ago, there lived {a_intro}.", "In a small town, there lived {a_intro}.")
_LIKES = (0.5, ("{A} {a_likes}.", "More than anything, {A} {a_likes}."))
_CLOSERS = ("{A} went home with a big smile.", "It was the best day ever.",
            "That night, {A} dreamed happy dreams.", "And {A} never forgot that day.")
_THE_END = "The end."
_MAX_SENTENCES = 10

_PLOTS = (
    _Plot("lost_and_found", (
        (1, ("{A} had {an_obj} that {a_sub} loved very much.", "{A}'s favorite toy was {an_obj}.")),
        (1, ("One day, {A} took the {obj} to the {place}.",
             "One morning, {a_sub} went to the {place} with {a_pos} {obj}.")),
        (1, ("But when it was time to go home, the {obj} was gone!",
             "Then {A} looked down, and the {obj} was not there.")),
        (1, ("{A} felt {sad} because {a_sub} could not find the {obj}.",
             "{A} was {sad}, so {a_sub} sat down and cried.")),
        (0.5, ('"Where is my {obj}?" cried {A}.', '"Has anyone seen my {obj}?" asked {A}.')),
        (1, ("Just then, along came {b_intro}.", "{a_Pos} friend {B} came to help.")),
        (1, ("{B} looked {hide} and found the {obj}!", "At last, {B} found the {obj} {hide}.")),
        (1, ("{A} was so {happy} that {a_sub} gave {B} a big hug.",
             '{A} hugged the {obj} and said, "Thank you, {B}!"')),
    ), ("{A} learned to take good care of {a_pos} things.", "A good friend helps you look for what you lost.")),
    _Plot("help_a_friend", (
        (1, ("One day, {A} was taking a walk near the {place}.",
             "One sunny morning, {A} went to the {place} to play.")),
        (1, ("Suddenly, {a_sub} heard someone crying.", "Then {A} heard a small voice calling for help.")),
        (1, ("It was {b_intro}.", "There, {a_sub} found {b_intro}.")),
        (1, ("{B} {problem}.", "Poor {B} {problem}.")),
        (0.5, ('"Please help me!" said {B}.', '"Do not worry, I will help you," said {A}.')),
        (1, ("{A} was {scared} at first, but {a_sub} wanted to help, so {a_sub} {problem_fix}.",
             "{A} thought for a moment, and then {a_sub} {problem_fix}.")),
        (1, ("{B} was safe, and {b_sub} felt very {happy}.", '"Thank you, {A}! You are a true friend," said {B}.')),
        (1, ("From that day on, {A} and {B} were best friends.", "{B} thanked {A} again and again.")),
    ), ("It is good to help a friend in need.", "{A} learned that being kind makes the world better.")),
    _Plot("weather_changes_plans", (
        (1, ("{A} wanted to go to the {place} to {outing}.",
             "Today, {A} and {B} planned to go to the {place} to {outing}.")),
        (1, ("But then {weather}.", "But when {A} looked out the window, {weather}.")),
        (1, ("{A} felt {sad} because {a_sub} could not go to the {place}.",
             "{A} was {sad}, because the plan was ruined.")),
        (0.5, ('"Now what can we do?" asked {A}.', '"This is no fun," said {A}.')),
        (1, ('{a_Pos} friend {B} smiled and said, "We can {indoor} instead!"',
             "{a_Pos} friend {B} had an idea, so the two friends decided to {indoor}.")),
        (1, ("So {A} and {B} {indoor_past} in the {inside}.",
             "{A} and {B} {indoor_past}, and soon both friends laughed a lot.")),
        (1, ("It was so much fun that {A} forgot all about the {weather_word}.",
             "{A} was not {sad} anymore, because the day was fun after all.")),
        (0.5, ("Later, the sun came out, and {A} smiled at the sky.",
               "The next day was sunny, and {A} went to the {place} after all.")),
    ), ("Even a gray day can be a fun day.", "{A} learned that plans can change, and that is okay.")),
    _Plot("sharing", (
        (1, ("One day, {A} had {food} for lunch.", "One day, {A} packed {food} for a picnic.")),
        (1, ("{a_Sub} sat down under a tree {at_place} to eat.",
             "{A} went to the {place} to eat, because {a_sub} {a_was} hungry.")),
        (1, ("There, {a_sub} saw {b_intro}.", "Soon, {a_sub} met {b_intro}.")),
        (1, ("{B} looked {sad} because {b_sub} had nothing to eat.",
             "{B} was hungry, because {b_sub} had forgotten {b_pos} lunch at home.")),
        (0.5, ("{A} wanted to keep all the food, but then {a_sub} thought about how {B} felt.",)),
        (1, ('"Would you like some?" asked {A}, and {a_sub} gave half to {B}.',
             "So {A} shared {a_pos} food with {B}.")),
        (1, ('"Thank you!" said {B} with a big smile.', "{B} smiled a big smile and ate every bite.")),
        (1, ("The two friends ate together and laughed.", "Sharing made {A} and {B} feel {happy}.")),
    ), ("Sharing makes everyone happy.", "{A} learned that sharing is caring.", "When we share, we make new friends.")),
    _Plot("mistake_and_apology", (
        (1, ("{A}'s best friend was {b_intro}.", "{A} had a good friend, {b_intro}.")),
        (1, ("One day, {A} was playing with {B}'s {obj} {at_place}.", "{B} let {A} play with {b_pos} new {obj}.")),
        (1, ("{A} was not careful, and {a_sub} {mistake}.", "But {A} played too fast and {mistake}.")),
        (1, ("{B} was {angry}, and {b_sub} did not want to play anymore.",
             "{B} saw what happened and felt {angry} and {sad}.")),
        (1, ("{A} felt very bad inside, because {B} was {a_pos} best friend.",
             "{A}'s face turned red, because {a_sub} knew it was a mistake.")),
        (1, ('"I am sorry, {B}," said {A}.', '{A} said, "I am sorry, {B}. I will make it right."')),
        (1, ("Then {A} {mistake_fix}.", "So {A} {mistake_fix}.")),
        (1, ('{B} smiled and said, "It is okay. Thank you for saying sorry."',
             "{B} forgave {A}, and the two friends played again.")),
    ), ("Saying sorry can make things better.", "{A} learned to be careful with other people's things.",
        "When you make a mistake, say sorry and try to fix it.")),
    _Plot("trying_until_success", (
        (1, ("{A} wanted to {skill} more than anything.", "{A} really wanted to learn to {skill}.")),
        (1, ("{a_Sub} tried, but {fail}.", "On the first try, {fail}.")),
        (1, ("{A} felt {sad} and wanted to give up.", "{A} was {sad}, but {a_sub} did not give up.")),
        (0.5, ("{a_Sub} tried again the next day, but {fail} again.",)),
        (1, ('{a_Pos} friend {B} said, "Do not give up, {A}! Try one more time."',
             '"You can do it, {A}! Just keep trying," said {a_pos} friend {B}.')),
        (1, ("So {A} practiced every day.", "{A} took a deep breath and tried again.")),
        (1, ("At last, {a_sub} {success}!", "Finally, {A} {success}!")),
        (1, ("{A} felt {proud} of {a_self}, and {B} cheered loudly.", "{B} clapped, and {A} felt {proud}.")),
    ), ("If you keep trying, you can do hard things.", "{A} learned that practice helps.", "Never give up!")),
    _Plot("surprise_party", (
        (1, ("{A} had a good friend, {b_intro}.", "{A}'s best friend was {b_intro}.")),
        (1, ("Tomorrow was {B}'s birthday, so {A} wanted to throw a surprise party.",
             "{A} had a plan: a surprise party for {B}'s birthday!")),
        (1, ("{a_Sub} baked a big {flavor} cake and put candles on top.",
             "{A} made a {flavor} cake in the kitchen and put {color} candles on it.")),
        (0.5, ("{a_Sub} also hung up {color} balloons.", "{A} made a card with a pretty {color} flower on it.")),
        (1, ("Then {A} and the other friends hid behind the couch and waited.",
             "{A} and all the other friends hid in the dark {inside} and waited quietly.")),
        (1, ('When {B} came in, everyone jumped out and shouted, "Surprise!"',)),
        (1, ("{B} was so {surprised} that {b_sub} could not say a word.",
             "{B} jumped in the air because {b_sub} {b_was} so {surprised}.")),
        (1, ('"This is the best birthday ever!" said {B}.',
             "{B} hugged {A} and said thank you for the best party ever.")),
    ), ("It feels good to make a friend happy.", "The best gifts come from the heart.")),
    _Plot("scary_noise", (
        (1, ("{A} lived in a small house with {b_intro}.",)),
        (1, ("One night, {A} was {sleepy} and went to bed early.",
             "One night, {A} was in bed, but {a_sub} could not sleep.")),
        (1, ("Suddenly, {a_sub} heard {noise}.", "In the dark, {A} heard {noise}.")),
        (1, ("{A} was {scared}, and {a_pos} heart beat very fast.",
             "{A} pulled the blanket over {a_pos} head because {a_sub} {a_was} so {scared}.")),
        (0.5, ('"Who is there?" whispered {A}.',)),
        (1, ("{A} wanted to be brave, so {a_sub} got up and turned on a little light.",
             "Slowly, {A} got out of bed to look.")),
        (1, ("It was just {B}, who {cause}!", "It was only {B}, and {b_sub} {cause}.")),
        (1, ("{A} laughed, and {a_pos} fear went away.", "{A} was not {scared} anymore.")),
        (1, ("Then {A} and {B} went back to bed and slept until morning.", "{A} gave {B} a hug and fell asleep.")),
    ), ("Many scary things are not scary at all when you look closely.", "Being brave means looking even when you are scared.")),
    _Plot("new_friend", (
        (1, ("{A} had just moved to a new town and did not have any friends yet.",
             "On the first day at school, {A} sat all alone.",
             "One day, {A} was all alone {at_place}.")),
        (1, ("{a_Sub} felt {lonely}, because nobody played with {a_obj}.",
             "{A} felt {lonely} and looked at the ground.")),
        (1, ("Then {a_sub} saw {b_intro}.", "Soon, {A} met {b_intro}.")),
        (1, ("{B} was {game}.", "{B} was busy {game}.")),
        (1, ('"Can I play too?" asked {A}.', '{A} walked over and asked, "Can I play with you?"')),
        (1, ('"Yes, you can!" said {B}.', '"Of course!" said {B} with a smile.')),
        (1, ("So {A} and {B} {game_past} all afternoon.", "{A} and {B} {game_past} until the sun went down.")),
        (1, ("{A} did not feel lonely anymore, because now {a_sub} had a friend.", "{A} and {B} became best friends.")),
    ), ("Saying hello is the first step to making a friend.", "A new friend can turn a sad day into a happy one.")),
    _Plot("growing_garden", (
        (1, ("One spring morning, {A} got a tiny seed from {a_pos} friend {B}.",
             "One day, {A}'s friend {B} gave {a_obj} a tiny seed.")),
        (1, ("{A} planted the seed in the garden.", "{A} planted the seed in a little pot by the window.")),
        (1, ("Every day, {a_sub} gave it water and sang to it.",
             "{a_Sub} watered it every morning, because seeds need water to grow.")),
        (1, ("For many days, nothing happened, and {A} felt {sad}.", "{A} waited and waited, but nothing grew.")),
        (0.5, ('{B} said, "Be patient. Good things take time."',)),
        (1, ("Then one morning, {A} saw a little green sprout!",
             "After a week, a tiny green sprout came up out of the dirt.")),
        (1, ("Soon, a big {color} flower grew, because {A} had taken good care of it.",
             "At last, a pretty {color} flower opened up.")),
        (1, ("{A} felt {proud} and {happy}.", "{A} was {proud} of the {color} flower.")),
        (1, ("{a_Sub} showed the flower to {B}, and {B} smiled.", "{a_Sub} picked the flower and gave it to {B}.")),
    ), ("With care and patience, little things grow big.", "Good things take time.")),
)


# ---------------------------------------------------------------- generation

def _story_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


def _pick_character(rng: random.Random, taken: str = "") -> _Character:
    kind = rng.choices(list(_KINDS), weights=[spec[0] for spec in _KINDS.values()])[0]
    _, pronouns, names, _ = _KINDS[kind]
    name = rng.choice([n for n in names if n != taken])
    return _Character(name, kind, rng.choice(pronouns))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _intro_phrase(who: _Character, rng: random.Random) -> str:
    """A phrase that introduces a character by name; it always ends its sentence."""
    if who.kind in _ELDERS:
        adjective = rng.choice(_ELDER_ADJECTIVES)
        return f"{who.name}, {_article(adjective)} {adjective} {who.kind}"
    adjective = rng.choice(_ADJECTIVES)
    return f"{_article(adjective)} {adjective} {who.kind} {rng.choice(('named', 'called'))} {who.name}"


def _character_slots(prefix: str, who: _Character, rng: random.Random) -> dict:
    """Name, pronoun forms (lower and capitalised), intro phrase and likes under ``prefix`` (a or b)."""
    slots = {prefix.upper(): who.name}
    for form, word in _PRONOUN_FORMS[who.pronoun].items():
        slots[f"{prefix}_{form}"] = word
        slots[f"{prefix}_{form.capitalize()}"] = word.capitalize()
    slots[f"{prefix}_intro"] = _intro_phrase(who, rng)
    slots[f"{prefix}_likes"] = rng.choice(_KINDS[who.kind][3])
    return slots


def _world_slots(rng: random.Random) -> dict:
    """Everything a plot may mention besides the cast, chosen once per story."""
    preposition, place, outing = rng.choice(_OUTINGS)
    weather, weather_word = rng.choice(_WEATHER)
    indoor, indoor_past = rng.choice(_INDOOR_FUN)
    problem, problem_fix = rng.choice(_PROBLEMS)
    mistake, mistake_fix = rng.choice(_MISTAKES)
    skill, fail, success = rng.choice(_SKILLS)
    game, game_past = rng.choice(_GAMES)
    toy_color = rng.choice(_COLORS)
    slots = {feeling: rng.choice(words) for feeling, words in _FEELINGS.items()}
    slots.update(
        place=place, at_place=f"{preposition} the {place}", outing=outing, inside=rng.choice(_INSIDE),
        color=rng.choice(_COLORS), obj=f"{toy_color} {rng.choice(_TOYS)}", food=rng.choice(_FOODS),
        hide=rng.choice(_HIDING_SPOTS), weather=weather, weather_word=weather_word,
        indoor=indoor, indoor_past=indoor_past, problem=problem, problem_fix=problem_fix,
        mistake=mistake, mistake_fix=mistake_fix, skill=skill, fail=fail, success=success,
        noise=rng.choice(_NOISES), cause=rng.choice(_NOISE_CAUSES), game=game, game_past=game_past,
        flavor=rng.choice(_FLAVORS),
    )
    slots["an_obj"] = f"{_article(toy_color)} {slots['obj']}"
    return slots


def _fill(template: str, slots: dict) -> str:
    """Fill a template; slot values may hold placeholders themselves (one level deep)."""
    text = template.format_map(slots)
    if "{" in text:
        text = text.format_map(slots)
    return text[0].upper() + text[1:]


def _ending(plot: _Plot, rng: random.Random, slots: dict) -> list:
    """A moral, "The end.", a closing line, or nothing."""
    roll = rng.random()
    if roll < 0.35:
        return [_fill(rng.choice(plot.morals), slots)]
    if roll < 0.6:
        return [_THE_END]
    if roll < 0.8:
        return [_fill(rng.choice(_CLOSERS), slots)]
    return []


def _beats_for(plot: _Plot, rng: random.Random) -> list:
    """The plot's beats, with a story opening in front where the plot needs one."""
    opening = [(1, _INTROS), _LIKES]
    if plot.name in ("mistake_and_apology", "surprise_party", "scary_noise"):
        opening = [(1, _INTROS)] if rng.random() < 0.5 else []
    return opening + list(plot.beats)


def _chosen_variants(beats: list, rng: random.Random, budget: int) -> list:
    """Every required beat, plus each optional beat by its chance while under ``budget`` sentences."""
    spare = budget - sum(1 for chance, _ in beats if chance >= 1)
    chosen = []
    for chance, variants in beats:
        if chance < 1:
            if spare <= 0 or rng.random() >= chance:
                continue
            spare -= 1
        chosen.append(variants)
    return chosen


def _compose(rng: random.Random) -> _Story:
    """One whole story: cast, slots, plot and its sentences."""
    hero = _pick_character(rng)
    friend = _pick_character(rng, taken=hero.name)
    plot = rng.choice(_PLOTS)
    slots = {**_world_slots(rng), **_character_slots("a", hero, rng), **_character_slots("b", friend, rng)}
    ending = _ending(plot, rng, slots)
    beats = _chosen_variants(_beats_for(plot, rng), rng, budget=_MAX_SENTENCES - len(ending))
    sentences = [_fill(rng.choice(variants), slots) for variants in beats] + ending
    return _Story(plot.name, (hero, friend), slots, sentences)


def generate_stories(n_stories: int, seed: int = 0) -> list[str]:
    """``n_stories`` simple English stories; the same (n, seed) gives the same list, prefixes stable."""
    if n_stories < 0:
        raise ValueError(f"n_stories must be >= 0, got {n_stories}")
    return [" ".join(_compose(_story_rng(seed, i)).sentences) for i in range(n_stories)]
