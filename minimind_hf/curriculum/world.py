"""The synthetic world the curriculum talks about: fictional people, cities, countries and inventions.

Everything is a pure function of the seed. Names are built from a fixed syllable table that maps one Latin syllable
to one Chinese character, so every entity has an English and a Chinese form and both are unique. The world is kept
small and regular on purpose: a model of a few million parameters must memorise all of it from a few million tokens
of prose.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# One Latin syllable <-> one Chinese character; the 1:1 mapping keeps names unique in both scripts.
SYLLABLES = [
    ("ka", "卡"), ("lo", "洛"), ("mi", "米"), ("ra", "拉"), ("ne", "内"), ("to", "托"), ("su", "苏"), ("va", "瓦"),
    ("de", "德"), ("li", "利"), ("bo", "波"), ("na", "娜"), ("ri", "里"), ("ta", "塔"), ("mo", "莫"), ("se", "塞"),
    ("ku", "库"), ("pe", "佩"), ("zo", "佐"), ("fa", "法"), ("hu", "胡"), ("ja", "贾"), ("ro", "罗"), ("vi", "维"),
    ("di", "迪"), ("ga", "加"), ("ze", "泽"), ("lu", "卢"), ("no", "诺"), ("sa", "萨"),
]  # fmt: skip

JOBS = [
    ("doctor", "医生"), ("teacher", "老师"), ("farmer", "农民"), ("painter", "画家"), ("baker", "面包师"),
    ("pilot", "飞行员"), ("singer", "歌手"), ("engineer", "工程师"), ("writer", "作家"), ("chef", "厨师"),
    ("nurse", "护士"), ("sailor", "水手"),
]  # fmt: skip

COLOURS = [
    ("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("yellow", "黄色"), ("purple", "紫色"), ("orange", "橙色"),
    ("white", "白色"), ("black", "黑色"),
]  # fmt: skip

# Twenty-four heads and twenty-four tails, each used by exactly one invention: names that share a word ("sun clock",
# "sun kite") blur together in a model this small, and its recall of their facts dropped to 72-81% against 100% for
# people. No two heads or tails share a character, and none shares one with a material.
INVENTION_HEADS = [
    ("cloud", "云"), ("echo", "回声"), ("glass", "玻璃"), ("star", "星"), ("river", "河"), ("sun", "日"),
    ("moon", "月"), ("frost", "霜"), ("thunder", "雷"), ("pearl", "珍珠"), ("snow", "雪"), ("fire", "火"),
    ("rain", "雨"), ("dawn", "晨"), ("sky", "天"), ("sea", "海"), ("leaf", "叶"), ("rose", "玫瑰"),
    ("tiger", "虎"), ("wolf", "狼"), ("crane", "鹤"), ("jade", "玉"), ("amber", "琥珀"), ("mist", "雾"),
]  # fmt: skip
INVENTION_TAILS = [
    ("lamp", "灯"), ("wheel", "轮"), ("clock", "钟"), ("kite", "风筝"), ("compass", "罗盘"), ("bell", "铃"),
    ("drum", "鼓"), ("mirror", "镜"), ("flute", "笛"), ("boat", "船"), ("loom", "织机"), ("pump", "泵"),
    ("cart", "车"), ("fan", "扇"), ("cup", "杯"), ("harp", "竖琴"), ("saw", "锯"), ("ladder", "梯"),
    ("needle", "针"), ("horn", "号角"), ("mill", "磨坊"), ("bridge", "桥"), ("kettle", "壶"), ("lock", "锁"),
]  # fmt: skip
MATERIALS = [
    ("wood", "木头"), ("iron", "铁"), ("copper", "铜"), ("stone", "石头"), ("silver", "银"), ("bamboo", "竹子"),
    ("clay", "陶土"), ("paper", "纸"),
]  # fmt: skip

NUM_PEOPLE = 64
NUM_PRETRAIN_ONLY_PEOPLE = 16
NUM_COUNTRIES = 6
CITIES_PER_COUNTRY = 4
NUM_INVENTIONS = 24
NUM_PRETRAIN_ONLY_INVENTIONS = 6

PERSON_ATTRIBUTES = ("city", "job", "colour", "age")
ATTRIBUTES = {
    "person": PERSON_ATTRIBUTES,
    "city": ("country",),
    "country": ("capital",),
    # three attributes, so every SFT invention is still asked about two of them when one is held out: with two, SFT
    # asked one question per invention and the model learnt "this name -> that attribute" (0% held-out transfer)
    "invention": ("inventor", "year", "material"),
}


@dataclass(frozen=True)
class Name:
    """An entity or value in both languages."""

    en: str
    zh: str

    def __getitem__(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


@dataclass
class Entity:
    """A world entity: `kind` is one of `person`, `city`, `country`, `invention`; `facts` maps an attribute to its
    value (a `Name`; numbers are stored as `Name(str(n), str(n))`)."""

    kind: str
    name: Name
    facts: dict[str, Name] = field(default_factory=dict)
    pretrain_only: bool = False


@dataclass
class World:
    """The whole synthetic world. `entities` keeps a stable order (people, cities, countries, inventions)."""

    seed: int
    entities: list[Entity]

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities if e.kind == kind]

    def find(self, name: str) -> Entity | None:
        """Finds an entity by its English (case-insensitive) or Chinese name."""
        key = name.strip().casefold()
        for entity in self.entities:
            if key in (entity.name.en.casefold(), entity.name.zh):
                return entity
        return None

    def facts(self) -> list[tuple[Entity, str]]:
        """Every (entity, attribute) pair of the world, in a stable order."""
        return [(e, a) for e in self.entities for a in ATTRIBUTES[e.kind]]


def _name_from(syllables: list[tuple[str, str]], join_zh: str = "") -> tuple[str, str]:
    return "".join(s[0] for s in syllables).capitalize(), join_zh.join(s[1] for s in syllables)


def person_name(given: list[tuple[str, str]], family: list[tuple[str, str]]) -> Name:
    """A person's name from its given and family syllables: `Gari Sena` / `加里·塞娜`."""
    (given_en, given_zh), (family_en, family_zh) = _name_from(given), _name_from(family)
    return Name(f"{given_en} {family_en}", f"{given_zh}·{family_zh}")


def invention_name(head: tuple[str, str], tail: tuple[str, str]) -> Name:
    """An invention's name from a head and a tail word: `cloud lamp` / `云灯`."""
    return Name(f"{head[0]} {tail[0]}", f"{head[1]}{tail[1]}")


def build_world(seed: int = 0) -> World:
    """Builds the world for `seed`. Same seed, same world (entity order, names and facts)."""
    rng = random.Random(f"minimind-world-{seed}")
    used: set[tuple[str, ...]] = set()

    def fresh(n: int) -> list[tuple[str, str]]:
        while True:
            picks = [rng.choice(SYLLABLES) for _ in range(n)]
            key = tuple(p[0] for p in picks)
            if key not in used:
                used.add(key)
                return picks

    countries = []
    for _ in range(NUM_COUNTRIES):
        en, zh = _name_from(fresh(2))
        countries.append(Entity("country", Name(f"{en}land", f"{zh}国")))
    cities = []
    for country in countries:
        for _ in range(CITIES_PER_COUNTRY):
            en, zh = _name_from(fresh(3))
            cities.append(Entity("city", Name(en, zh), {"country": country.name}))
    for country in countries:
        own = [c for c in cities if c.facts["country"] == country.name]
        country.facts["capital"] = rng.choice(own).name

    people = []
    for i in range(NUM_PEOPLE):
        name = person_name(fresh(2), fresh(2))
        job, colour = rng.choice(JOBS), rng.choice(COLOURS)
        age = str(rng.randint(20, 69))
        facts = {"city": rng.choice(cities).name, "job": Name(*job), "colour": Name(*colour), "age": Name(age, age)}
        people.append(Entity("person", name, facts, pretrain_only=i >= NUM_PEOPLE - NUM_PRETRAIN_ONLY_PEOPLE))

    heads, tails = list(INVENTION_HEADS), list(INVENTION_TAILS)
    rng.shuffle(heads)
    rng.shuffle(tails)
    combos = list(zip(heads, tails))
    sft_people = [p for p in people if not p.pretrain_only]
    pretrain_people = [p for p in people if p.pretrain_only]
    inventors = rng.sample(sft_people, NUM_INVENTIONS - NUM_PRETRAIN_ONLY_INVENTIONS)
    inventors += rng.sample(pretrain_people, NUM_PRETRAIN_ONLY_INVENTIONS)
    years = rng.sample(range(1700, 2000), NUM_INVENTIONS)
    materials = [rng.choice(MATERIALS) for _ in range(NUM_INVENTIONS)]
    inventions = []
    for i, ((head, tail), inventor, year, material) in enumerate(zip(combos, inventors, years, materials)):
        facts = {"inventor": inventor.name, "year": Name(str(year), str(year)), "material": Name(*material)}
        inventions.append(
            Entity(
                "invention",
                invention_name(head, tail),
                facts,
                pretrain_only=i >= NUM_INVENTIONS - NUM_PRETRAIN_ONLY_INVENTIONS,
            )
        )
    return World(seed=seed, entities=people + cities + countries + inventions)
