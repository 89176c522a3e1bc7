"""The near-miss guard: lexical checks a semantic candidate must pass before it is served.

Sentence embeddings blur exactly the differences that change an answer: another number,
date, version, unit or currency; an opposite word (ascending / descending, enable /
disable, from A to B / from B to A); a negation; another language, format, platform or
programming language; another search operator value (``site:a`` / ``site:b``).  On the
langcache near-misses such pairs score 0.90-0.99 cosine, above any useful threshold.

:func:`conflict` compares the two texts' *typed facts* — small closed vocabularies and
patterns declared in the tables below — and returns why they must not share an answer,
or None.  It does not judge free wording, so true paraphrases (typos, casing, filler,
reordering, "2" for "two", "JS" for "JavaScript") pass.  Pure and thread-safe; about
tens of microseconds for two short questions.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["conflict", "facts", "Facts"]

# --------------------------------------------------------------------------- tables
NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000, "billion": 1_000_000_000, "dozen": 12,
}

# Each group is a closed set of mutually exclusive values: two texts that both name a
# value of a group must name the same values.  Aliases map to one canonical value.
GROUPS: dict[str, dict[str, str]] = {}


def _group(name: str, values: dict[str, tuple[str, ...]]) -> None:
    table: dict[str, str] = {}
    for canonical, aliases in values.items():
        table[canonical] = canonical
        for alias in aliases:
            table[alias] = canonical
    GROUPS[name] = table


_group("order", {"ascending": ("asc", "increasing", "smallest-first"),
                 "descending": ("desc", "decreasing", "reverse", "reversed", "largest-first")})
_group("direction", {"increase": ("raise", "grow", "more"), "decrease": ("lower", "reduce", "shrink", "less")})
_group("switch", {"enable": ("enabled", "enabling", "activate", "turn-on"),
                  "disable": ("disabled", "disabling", "deactivate", "turn-off")})
_group("change", {"add": ("insert", "create", "adding"),
                  "remove": ("delete", "deleting", "drop", "removing", "prune", "clean")})
_group("access", {"list": ("listing", "show", "enumerate", "read", "view"),
                  "delete": ("deleting", "remove", "removing", "erase")})
_group("install", {"install": ("installing", "setup", "set-up"), "uninstall": ("remove-package",)})
_group("codec", {"encode": ("encoding", "encrypt", "encryption", "compress", "compression"),
                 "decode": ("decoding", "decrypt", "decryption", "decompress", "decompression")})
_group("transfer", {"upload": ("uploading",), "download": ("downloading",)})
_group("io", {"import": ("importing",), "export": ("exporting",)})
_group("git", {"push": ("pushing",), "pull": ("pulling",)})
_group("trade", {"buy": ("buying", "purchase"), "sell": ("selling",)})
_group("run", {"start": ("starting", "launch"), "stop": ("stopping", "halt", "kill")})
_group("extreme", {"min": ("minimum", "smallest", "lowest", "least"),
                   "max": ("maximum", "largest", "highest", "biggest", "most")})
_group("position", {"first": ("earliest", "oldest", "beginning", "head"),
                    "last": ("latest", "newest", "end", "tail", "recent", "current", "now")})
_group("relday", {"today": ("tonight", "todays"), "tomorrow": ("tomorrows",),
                  "yesterday": ("yesterdays",), "weekend": (), "next-week": (),
                  "last-week": (), "this-week": (), "next-month": (), "last-month": ()})
_group("daypart", {"morning": ("mornings",), "afternoon": (), "evening": ("evenings",),
                   "night": ("nights", "nighttime")})
_group("frequency", {"hourly": (), "daily": ("everyday",), "weekly": (), "monthly": (),
                     "yearly": ("annually", "annual")})
_group("month", {m: () for m in ("january", "february", "march", "april", "june", "july",
                                 "august", "september", "october", "november", "december")})
_group("weekday", {d: () for d in ("monday", "tuesday", "wednesday", "thursday", "friday",
                                   "saturday", "sunday")})
_group("language", {"english": ("en",), "spanish": ("español", "espanol", "castellano", "es"),
                    "french": ("français", "francais", "fr"), "german": ("deutsch", "de"),
                    "italian": ("italiano",), "portuguese": ("português", "pt"),
                    "dutch": ("nederlands",), "russian": (), "chinese": ("mandarin", "zh"),
                    "japanese": (), "korean": (), "arabic": (), "hindi": (), "turkish": (),
                    "polish": (), "swedish": (), "greek": (), "hebrew": ()})
_group("format", {"json": (), "yaml": ("yml",), "xml": (), "csv": (), "html": (),
                  "markdown": ("md",), "pdf": (), "txt": ("plaintext",), "parquet": (),
                  "excel": ("xlsx", "xls"), "docx": ("word",), "png": (), "jpeg": ("jpg",),
                  "svg": (), "toml": ()})
_group("currency", {"usd": ("$", "dollar", "dollars", "us$"), "eur": ("€", "euro", "euros"),
                    "gbp": ("£", "pound", "pounds", "sterling"), "jpy": ("¥", "yen"),
                    "inr": ("₹", "rupee", "rupees"), "cny": ("yuan", "rmb"), "chf": ("franc", "francs"),
                    "btc": ("bitcoin",), "eth": ("ether", "ethereum")})
_group("unit", {"km": ("kilometer", "kilometers", "kilometre", "kilometres", "kms"),
                "mi": ("mile", "miles"), "m": ("meter", "meters", "metre", "metres"),
                "ft": ("foot", "feet"), "cm": ("centimeter", "centimeters"),
                "in": ("inch", "inches"), "kg": ("kilogram", "kilograms", "kilo", "kilos"),
                "lb": ("lbs", "pound-weight"), "g": ("gram", "grams"), "oz": ("ounce", "ounces"),
                "l": ("liter", "liters", "litre", "litres"), "gal": ("gallon", "gallons"),
                "c": ("celsius", "centigrade"), "f": ("fahrenheit",),
                "gb": ("gigabyte", "gigabytes"), "mb": ("megabyte", "megabytes"),
                "tb": ("terabyte", "terabytes"), "kb": ("kilobyte", "kilobytes"),
                "ms": ("millisecond", "milliseconds"), "s": ("sec", "second-unit", "seconds"),
                "min": ("minute", "minutes", "mins"), "h": ("hour", "hours", "hr", "hrs"),
                "day": ("days",), "week": ("weeks",), "month-unit": ("months",),
                "year": ("years", "yr", "yrs"), "calories": ("calorie", "kcal", "cal"),
                "percent": ("%", "pct", "percentage")})
_group("level", {"beginner": ("beginners", "novice", "introductory", "intro", "basic", "basics",
                              "starter"),
                 "intermediate": (), "advanced": ("expert", "experts")})
_group("formality", {"formal": (), "informal": ("casual",)})
_group("solved", {"solved": ("answered", "resolved"), "unsolved": ("unanswered", "unresolved")})
_group("scope", {"local": (), "remote": ("origin",)})
_group("visibility", {"public": (), "private": ()})
_group("theme", {"light": (), "dark": ()})
_group("side", {"left": (), "right": ()})
_group("updown", {"up": (), "down": ()})
_group("compass", {"north": (), "south": (), "east": (), "west": ()})
_group("sync", {"synchronous": ("sync",), "asynchronous": ("async",)})
_group("proglang", {"python": ("py", "python3"), "javascript": ("js", "node", "nodejs", "node.js"),
                    "typescript": ("ts",), "java": (), "kotlin": (), "scala": (), "go": ("golang",),
                    "rust": (), "c": ("ansi-c",), "c++": ("cpp",), "c#": ("csharp", "dotnet"),
                    "f#": ("fsharp",), "ruby": (), "php": (), "swift": (), "perl": (), "r": (),
                    "bash": ("shell", "sh"), "powershell": (), "sql": ()})
_group("os", {"windows": ("win", "win10", "win11"), "macos": ("mac", "osx", "os-x", "macbook"),
              "linux": (), "ubuntu": (), "debian": (), "fedora": (), "centos": (), "arch": (),
              "ios": ("iphone", "ipad"), "android": (), "freebsd": ()})
_group("db", {"postgres": ("postgresql", "psql"), "mysql": ("mariadb",), "sqlite": ("sqlite3",),
              "mongodb": ("mongo",), "redis": (), "oracle": (), "sqlserver": ("mssql",),
              "cassandra": (), "dynamodb": (), "elasticsearch": ("elastic",)})
_group("cloud", {"aws": ("amazon", "s3", "ec2", "lambda"), "gcp": ("google-cloud", "gcs", "bigquery"),
                 "azure": ("microsoft-azure",)})
_group("vcs", {"git": (), "svn": ("subversion",), "mercurial": ("hg",)})
_group("ci", {"github": ("github-actions",), "gitlab": (), "circleci": (), "jenkins": (),
              "travis": (), "bitbucket": ()})
_group("editor", {"vim": ("neovim", "nvim", "vi"), "emacs": (), "vscode": ("vs-code",),
                  "intellij": (), "sublime": ()})
_group("web", {"nginx": (), "apache": ("httpd",), "caddy": (), "iis": (), "traefik": ()})
_group("protocol", {"rest": (), "grpc": (), "graphql": (), "soap": (), "websocket": ("websockets",)})
_group("browser", {"chrome": ("chromium",), "firefox": (), "safari": (), "edge": ()})
_group("rank", {"nearest": ("closest", "near-me"), "cheapest": ("least-expensive", "lowest-priced"),
                "fastest": ("quickest",), "best": ("top", "greatest"), "worst": (),
                "newest-model": ()})
_group("transport", {"subway": ("metro", "underground", "tube"), "bus": ("buses",),
                     "train": ("trains", "rail"), "tram": ("trams",), "ferry": (),
                     "flight": ("flights", "plane", "airline")})
_group("site", {"stack-overflow": ("stackoverflow",), "reddit": (), "wikipedia": (),
                "twitter": (), "youtube": (), "hacker-news": ("hn",), "medium": ()})
_group("contact", {"email": ("e-mail", "mail"), "phone": ("telephone", "phone-number"),
                   "address": ("postal-address",)})
_group("cpu", {"intel": (), "amd": (), "apple-silicon": ("m1", "m2", "m3", "m4"),
               "arm": ("arm64", "aarch64")})
_group("media", {"image": ("images", "picture", "pictures", "photo", "photos"),
                 "video": ("videos",), "audio": ("sound",)})

# Pairs that join two words into one group value before lookup ("turn off" -> turn-off).
BIGRAMS = {("turn", "on"): "turn-on", ("turn", "off"): "turn-off", ("set", "up"): "set-up",
           ("next", "week"): "next-week", ("last", "week"): "last-week",
           ("this", "week"): "this-week", ("next", "month"): "next-month",
           ("last", "month"): "last-month", ("google", "cloud"): "google-cloud",
           ("vs", "code"): "vs-code", ("github", "actions"): "github-actions",
           ("os", "x"): "os-x", ("stack", "overflow"): "stack-overflow",
           ("hacker", "news"): "hacker-news", ("apple", "silicon"): "apple-silicon",
           ("phone", "number"): "phone-number", ("near", "me"): "near-me",
           ("not", "working"): "broken", ("doesnt", "work"): "broken",
           ("isnt", "working"): "broken", ("stopped", "working"): "broken",
           ("least", "expensive"): "least-expensive"}

NEGATIONS = frozenset({"not", "no", "non", "never", "without", "cannot", "nor", "none", "excluding",
                       "except", "dont", "doesnt", "isnt", "arent", "wasnt", "werent",
                       "cant", "wont", "shouldnt", "wouldnt", "couldnt", "didnt", "hasnt",
                       "havent", "unable", "neither"})

# Words that are group values only in some senses; they count only as said here.
_AMBIGUOUS = frozenset({"more", "less", "most", "least", "now", "current", "end", "head",
                        "tail", "second", "in", "c", "r", "f", "m", "s", "h", "g", "l", "go",
                        "up", "down", "left", "right", "light", "drop", "clean", "create",
                        "node", "shell", "word", "edge", "arch", "origin", "lambda", "basic",
                        "basics", "intro", "remote", "local", "public", "private", "single",
                        "pair", "first", "last", "recent", "latest", "oldest", "newest",
                        "earliest", "beginning", "min", "day", "week", "year", "kill",
                        "launch", "insert", "sync", "async", "pound", "pounds", "franc",
                        "elastic", "amazon", "ether", "win", "mac"})
# ...but these groups keep their ambiguous members (they are what the group is about).
_KEEP_AMBIGUOUS = {"position": {"first", "last", "latest", "newest", "oldest", "earliest",
                                "recent", "current", "now"},
                   "extreme": {"min", "most", "least"},
                   "direction": {"more", "less"},
                   "os": {"mac", "win", "arch"},
                   "scope": {"remote", "local"},
                   "visibility": {"public", "private"},
                   "theme": {"light", "dark"},
                   "sync": {"sync", "async"},
                   "currency": {"pound", "pounds", "franc"},
                   "proglang": {"go", "node", "shell", "c", "r"},
                   "change": {"drop", "clean", "create", "insert"},
                   "run": {"kill", "launch"},
                   "cloud": {"lambda", "amazon"}}

_TOKEN = re.compile(r"[a-z]+:[^\s,;]+|\$|€|£|¥|₹|%|c\+\+|c#|f#|node\.js|[a-z]+\d+[a-z\d]*(?![.,]\d)"
                    r"|\d+(?:[.,:/-]\d+)*|[a-zà-ÿ]+(?:'[a-z]+)?")
# "mp4", "ps5", "h264", "gpt4o": one identifier, not a word and a number
_IDENT = re.compile(r"([a-z]+)(\d[a-z\d]*)")
# "1) first ... 2) then" and "(a)" list markers are not quantities
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))\(?\d{1,2}\)\s")
# negation words inside these phrases do not negate the question
_NOT_NEGATING = re.compile(r"\b(?:whether or not|or not|not only|no matter|no one|nothing but|"
                           r"can't wait|cannot wait|not sure)\b")
_QUOTED = re.compile(r"'([^']{2,})'|\"([^\"]{2,})\"|“([^”]{2,})”")
_OPERATOR = re.compile(r"^([a-z]+):(.+)$")
# a language or format the answer must be in: "to French", "into JSON", "(Spanish)"
_TARGET = re.compile(r"(?:\b(?:to|into|in|as)\s+|\()([a-zà-ÿ]+)")
_DIRECTED = re.compile(r"\b(?:from\s+)?([a-z0-9#+.$€£¥]+)\s+(?:to|into|->|→)\s+([a-z0-9#+.$€£¥]+)")


@dataclass(frozen=True)
class Facts:
    """The typed facts of one text that must agree for two texts to share an answer."""

    numbers: tuple[str, ...]
    soft_numbers: tuple[str, ...]  # "one" as in "does one need": a number only beside numbers
    idents: frozenset[tuple[str, str]]
    quantities: frozenset[tuple[str, str]]
    groups: tuple[tuple[str, frozenset[str]], ...]
    negated: bool
    operators: tuple[tuple[str, frozenset[str]], ...]
    locales: frozenset[str]
    directed: frozenset[tuple[str, str]]
    quoted: frozenset[str]
    targets: frozenset[str]
    entities: frozenset[str]  # capitalised names and acronyms, lowercased, aliases resolved
    words: frozenset[str]  # every word of the text, lowercased (to find an entity's mention)


_THOUSANDS = re.compile(r"\d{1,3}(,\d{3})+")
_NUM_UNIT = re.compile(r"v?(\d+(?:[.,]\d+)*)([a-z%]+)?")
_DIGITS = re.compile(r"\d+")
_WORDS = re.compile(r"[a-z0-9]+")


def _group_index() -> dict[str, tuple[tuple[str, str], ...]]:
    """token -> ((group, canonical value), ...), ambiguous senses left out: one lookup
    per token instead of one per group."""
    index: dict[str, list[tuple[str, str]]] = {}
    for name, table in GROUPS.items():
        for tok, value in table.items():
            if tok in _AMBIGUOUS and tok not in _KEEP_AMBIGUOUS.get(name, ()):
                continue
            index.setdefault(tok, []).append((name, value))
    return {tok: tuple(v) for tok, v in index.items()}


def _number(tok: str) -> str | None:
    if tok[0].isdigit():
        t = tok.replace(",", "") if _THOUSANDS.fullmatch(tok) else tok
        return t.rstrip(".").lstrip("0") or "0"
    if tok in NUMBER_WORDS:
        return str(NUMBER_WORDS[tok])
    return None


def _canonical(tok: str) -> str:
    return tok.replace("'", "")


@lru_cache(maxsize=8192)
def facts(text: str) -> Facts:
    """Extract the typed facts of ``text`` (cached: texts repeat)."""
    low = text.lower().replace("*", "").replace("_", " ").replace("’", "'")
    low = _NOT_NEGATING.sub(" ", _LIST_MARKER.sub(" ", low))
    for short, long in _EXPANSIONS.items():
        low = low.replace(short, long)
    quoted = frozenset(next(g for g in m.groups() if g).strip() for m in _QUOTED.finditer(low))
    raw = [_canonical(t) for t in _TOKEN.findall(low)]
    # split "5km" / "10gb" / "v3.2" into number + unit / version
    tokens: list[str] = []
    for tok in raw:
        m = _NUM_UNIT.fullmatch(tok) if tok[0].isdigit() or tok[0] == "v" else None
        if m:
            tokens.append(m.group(1))
            if m.group(2):
                tokens.append(m.group(2))
        else:
            tokens.append(tok)
    merged: list[str] = []
    i = 0
    while i < len(tokens):
        pair = (tokens[i], tokens[i + 1]) if i + 1 < len(tokens) else None
        if pair in BIGRAMS:
            merged.append(BIGRAMS[pair])  # type: ignore[index]
            i += 2
        else:
            merged.append(tokens[i])
            i += 1

    numbers: list[str] = []
    soft: list[str] = []
    idents: set[tuple[str, str]] = set()
    quantities: set[tuple[str, str]] = set()
    groups: dict[str, set[str]] = {}
    operators: dict[str, set[str]] = {}
    negated = False
    for k, tok in enumerate(merged):
        op = _OPERATOR.match(tok)
        if op:
            operators.setdefault(op.group(1), set()).add(op.group(2))
            numbers.extend(n.lstrip("0") or "0" for n in _DIGITS.findall(op.group(2))
                           if op.group(1) not in ("after", "before"))
            continue
        if tok in NEGATIONS or tok.endswith("nt") and tok[:-2] + "n't" in low:
            negated = True
            continue
        senses = _GROUP_INDEX.get(tok, ())
        ident = (_IDENT.fullmatch(tok) if tok[0].isalpha() and not tok.isalpha()
                 and tok not in _ALL_GROUP_TOKENS else None)
        if ident:
            idents.add((ident.group(1), ident.group(2)))
            continue
        if tok == "one" and not (k + 1 < len(merged) and merged[k + 1] in _COUNTABLE_AFTER_ONE):
            soft.append("1")
            continue
        num = _number(tok)
        if num is not None:
            numbers.append(num)
            nxt = merged[k + 1] if k + 1 < len(merged) else ""
            prev = merged[k - 1] if k > 0 else ""
            unit = GROUPS["unit"].get(nxt) or GROUPS["currency"].get(prev) \
                or GROUPS["currency"].get(nxt)
            if unit:
                quantities.add((num, unit))
            continue
        for name, value in senses:
            groups.setdefault(name, set()).add(value)
    targets = frozenset(
        value for word in _TARGET.findall(low)
        for value in (GROUPS["language"].get(word), GROUPS["format"].get(word)) if value)
    directed = frozenset(
        (a, b) for a, b in _DIRECTED.findall(low) if a != b and a not in ("how", "what", "want"))
    return Facts(
        numbers=tuple(sorted(Counter(numbers).elements())),
        soft_numbers=tuple(soft),
        idents=frozenset(idents),
        quantities=frozenset(quantities),
        groups=tuple(sorted((k, frozenset(v)) for k, v in groups.items())),
        negated=negated,
        operators=tuple(sorted((k, frozenset(v)) for k, v in operators.items())),
        locales=frozenset(f"{a}-{b}" for a, b in _LOCALE.findall(text.lower())),
        directed=directed,
        quoted=quoted,
        targets=targets,
        entities=_entities(text),
        words=frozenset(_WORDS.findall(_alias_text(low))),
    )


def _alias_text(low: str) -> str:
    return _PHRASE.sub(lambda m: _ENTITY_PHRASES[m.group(0).lower()], low)


def _entities(text: str) -> frozenset[str]:
    """Names in ``text``: capitalised words not opening a sentence, and acronyms; the
    vocabulary of the typed groups and question words are not names."""
    out = set()
    spaced = _PHRASE.sub(lambda m: _ENTITY_PHRASES[m.group(0).lower()].capitalize(),
                         _ENTITY_SPACE.sub(" ", text.strip()))
    for m in _CAPITALISED.finditer(spaced):
        word = m.group(1).lower()
        word = _ENTITY_ALIASES.get(word, word)
        if word in _NOT_ENTITIES or word in NUMBER_WORDS or word in _ALL_GROUP_TOKENS:
            continue
        out.add(word)
    return frozenset(out)


_DEMONYM = re.compile(r"(?:ish|ian|ese|an|i|a|e)$")


def _stem(word: str) -> str:
    """Canada, Canadian -> canad; Jews, Jewish -> jew; Iran and Iraq stay apart."""
    w = word[:-1] if word.endswith("s") and len(word) > 3 else word
    cut = _DEMONYM.sub("", w)
    return cut if len(cut) >= 3 else w


def _mentioned(entity: str, words: frozenset[str]) -> bool:
    """Whether ``entity`` occurs among ``words``, also as another form of the name."""
    if entity in words:
        return True
    stem = _stem(entity)
    return any(_stem(w) == stem for w in words if w[:1] == entity[:1])


def conflict(a: str, b: str) -> str | None:
    """Why ``a`` and ``b`` must not share an answer, or None when no typed fact differs."""
    fa, fb = facts(a), facts(b)
    na, nb = fa.numbers, fb.numbers
    if fa.soft_numbers and nb and not na:
        na = tuple(sorted(na + fa.soft_numbers))
    if fb.soft_numbers and na and not fb.numbers:
        nb = tuple(sorted(nb + fb.soft_numbers))
    if na != nb:
        return f"numbers differ: {list(na)} vs {list(nb)}"
    if fa.idents != fb.idents:  # "ps4" / "ps5", "mp3" / "flac", "K2" / "Everest"
        return (f"identifiers differ: {sorted(a + b for a, b in fa.idents)} vs "
                f"{sorted(a + b for a, b in fb.idents)}")
    if fa.quantities and fb.quantities and fa.quantities != fb.quantities:
        return f"quantities differ: {sorted(fa.quantities)} vs {sorted(fb.quantities)}"
    if fa.negated != fb.negated:
        return "one is negated"
    ga, gb = dict(fa.groups), dict(fb.groups)
    for name in ga.keys() & gb.keys():
        if ga[name] != gb[name]:
            return f"{name} differs: {sorted(ga[name])} vs {sorted(gb[name])}"
    for mine, theirs in ((fa, gb), (fb, ga)):
        named = theirs.get("language", frozenset()) | theirs.get("format", frozenset())
        if mine.targets - named:  # "(in) Spanish" on one side, no such language on the other
            return f"target language or format only on one side: {sorted(mine.targets - named)}"
    for name in ga.keys() ^ gb.keys():
        if name in _ONE_SIDED:
            return f"{name} only on one side: {sorted(ga.get(name) or gb.get(name) or [])}"
    if fa.locales and fb.locales and fa.locales != fb.locales:
        return f"locales differ: {sorted(fa.locales)} vs {sorted(fb.locales)}"
    oa, ob = dict(fa.operators), dict(fb.operators)
    if oa and ob and oa != ob:
        return f"search operators differ: {sorted(oa.items())} vs {sorted(ob.items())}"
    for x, y in fa.directed:
        if (y, x) in fb.directed and (x, y) not in fb.directed:
            return f"direction reversed: {x}->{y} vs {y}->{x}"
    if fa.quoted and fb.quoted and fa.quoted != fb.quoted:
        return "quoted text differs"
    if fa.entities and fb.entities:  # both name something, and each names what the other does not
        only_a = sorted(e for e in fa.entities if not _mentioned(e, fb.words))
        only_b = sorted(e for e in fb.entities if not _mentioned(e, fa.words))
        if only_a and only_b:
            return f"named entities differ: {only_a} vs {only_b}"
    return None


# A capitalised word or an acronym that does not open a sentence.
_CAPITALISED = re.compile(r"(?<![.?!:]\s)(?<!^)(?<!-)\b([A-Z][a-zA-Z]+|[A-Z]{2,})\b")
_ENTITY_SPACE = re.compile(r"\s+")
_NOT_ENTITIES = frozenset({"i", "im", "ive", "id", "ill", "what", "how", "why", "who", "when",
                           "where", "which", "is", "can", "the", "a", "an", "please", "thanks",
                           "eli", "faq", "tldr", "vs", "ok", "okay", "hi", "hello", "dear",
                           "simplified", "traditional"})
# Names that are the same place or thing, and phrases that name one ("New York").
_ENTITY_ALIASES = {"usa": "us", "america": "us", "american": "us", "americans": "us",
                   "uk": "britain", "british": "britain", "england": "britain",
                   "nyc": "york", "ny": "york", "la": "angeles", "sf": "francisco",
                   "corp": "corporation", "inc": "incorporated", "eu": "europe",
                   "european": "europe", "un": "nations", "gb": "britain"}
_ENTITY_PHRASES = {"united states": "us", "united kingdom": "britain", "great britain": "britain",
                   "new york": "york", "los angeles": "angeles", "san francisco": "francisco",
                   "european union": "europe", "united nations": "nations"}

_PHRASE = re.compile("|".join(re.escape(p) for p in _ENTITY_PHRASES), re.IGNORECASE)

# Shorthands spelled out before tokenizing.
_EXPANSIONS = {"eli5": "explain like i'm five", "°f": " fahrenheit", "°c": " celsius",
               "° f": " fahrenheit", "° c": " celsius"}
# "pt-BR", "en_US", "zh-TW": a locale the answer must be in
_LOCALE = re.compile(r"\b([a-z]{2})[-_]([a-z]{2})\b")

# "one" is the number 1 only before a countable word ("one day", "one more"); elsewhere
# ("does one need", "in one go", "which one") it counts only when the other text has numbers.
_COUNTABLE_AFTER_ONE = frozenset({
    "day", "days", "week", "month", "year", "hour", "minute", "second", "time", "more", "less",
    "dollar", "euro", "pound", "item", "page", "line", "word", "sentence", "paragraph",
    "example", "step", "thing", "person", "people", "cup", "table", "file", "row", "column",
    "bullet", "point", "option", "sample", "question", "answer", "tip", "idea", "reason",
    "piece", "book", "movie", "song", "meal", "bedroom", "kid", "child", "dog", "cat",
}) | frozenset(GROUPS["unit"])

# Groups whose mere presence on one side changes the question (a language, a day...).
_ONE_SIDED = frozenset({"solved", "month", "weekday"})

_GROUP_INDEX = _group_index()
_ALL_GROUP_TOKENS = frozenset(tok for table in GROUPS.values() for tok in table)
