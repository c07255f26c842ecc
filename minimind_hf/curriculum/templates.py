"""Bilingual phrasings for every fact type of the synthetic world.

Each attribute has several prose statements (pretraining paraphrases), several questions, and one canonical answer.
The canonical answer is also one of the prose statements and always ends with the value, so a chat model answers
in a sentence it memorised during pretraining and the scorer can read the value as the final span.
`{s}` is the subject entity, `{v}` the value and `{a}` the English article for the value.
"""

from __future__ import annotations

PROSE = {
    ("person", "city"): {
        "en": ["{s} lives in {v}.", "{s} has a home in {v}.", "The home city of {s} is {v}.", "{s} comes from {v}."],
        "zh": ["{s}住在{v}。", "{s}的家在{v}。", "{s}的家乡是{v}。", "{s}来自{v}这座城市。", "{s}的家乡：{v}。"],
    },
    ("person", "job"): {
        "en": ["{s} works as {a} {v}.", "{s} is {a} {v}.", "The job of {s} is {v}.", "By trade, {s} is {a} {v}."],
        "zh": [
            "{s}的职业是{v}。",
            "{s}是一名{v}。",
            "{s}的工作是{v}。",
            "{s}每天都在做{v}的工作。",
            "{s}的职业：{v}。",
        ],
    },
    ("person", "colour"): {
        "en": [
            "The favourite colour of {s} is {v}.",
            "{s} likes the colour {v} best.",
            "Of all colours, {s} prefers {v}.",
            "{s} loves {v} more than any other colour.",
        ],
        "zh": [
            "{s}最喜欢的颜色是{v}。",
            "{s}最爱{v}。",
            "在所有颜色里，{s}最喜欢{v}。",
            "{s}喜欢{v}胜过其他颜色。",
            "{s}最喜欢的颜色：{v}。",
        ],
    },
    ("person", "age"): {
        "en": ["The age of {s} is {v}.", "{s} is {v} years old.", "{s} turned {v} this year."],
        "zh": ["{s}的年龄是{v}。", "{s}今年{v}岁。", "{s}已经{v}岁了。", "{s}的年龄：{v}。"],
    },
    ("city", "country"): {
        "en": ["{s} is in {v}.", "{s} is a city in {v}.", "The city of {s} lies in {v}.", "{s} belongs to {v}."],
        "zh": [
            "{s}位于{v}。",
            "{s}是{v}的一座城市。",
            "{s}属于{v}。",
            "{s}这座城市在{v}境内。",
            "{s}所在的国家：{v}。",
        ],
    },
    ("country", "capital"): {
        "en": ["The capital of {s} is {v}.", "{v} is the capital of {s}.", "{s} has its capital in {v}."],
        "zh": ["{s}的首都是{v}。", "{v}是{s}的首都。", "{s}把首都设在{v}。", "{s}的首都：{v}。"],
    },
    ("invention", "inventor"): {
        "en": ["The {s} was invented by {v}.", "{v} invented the {s}.", "{v} is the inventor of the {s}."],
        "zh": ["{s}的发明者是{v}。", "{v}发明了{s}。", "{s}是{v}发明的。", "{s}的发明者：{v}。"],
    },
    ("invention", "year"): {
        "en": ["The {s} was invented in {v}.", "In {v}, the {s} was invented.", "The {s} dates from {v}."],
        "zh": ["{s}的发明年份是{v}。", "{s}发明于{v}年。", "{v}年，{s}被发明了出来。", "{s}的发明年份：{v}。"],
    },
    ("invention", "material"): {
        "en": ["The {s} is made of {v}.", "The {s} is built from {v}.", "Every {s} is made from {v}."],
        "zh": ["{s}的材料是{v}。", "{s}是用{v}做成的。", "{s}由{v}制成。", "{s}的材料：{v}。"],
    },
}

QUESTIONS = {
    ("person", "city"): {
        "en": ["Where does {s} live?", "Which city does {s} live in?", "What is the home city of {s}?"],
        "zh": ["{s}住在哪里？", "{s}住在哪座城市？", "{s}的家乡是哪里？"],
    },
    ("person", "job"): {
        "en": ["What does {s} do for a living?", "What is the job of {s}?", "What is {s}'s job?"],
        "zh": ["{s}的职业是什么？", "{s}是做什么工作的？", "{s}的工作是什么？"],
    },
    ("person", "colour"): {
        "en": [
            "What is the favourite colour of {s}?",
            "Which colour does {s} like best?",
            "What colour does {s} love most?",
        ],
        "zh": ["{s}最喜欢什么颜色？", "{s}最喜欢的颜色是什么？", "{s}最爱哪种颜色？"],
    },
    ("person", "age"): {
        "en": ["How old is {s}?", "What is the age of {s}?", "What age is {s}?"],
        "zh": ["{s}多大了？", "{s}今年几岁？", "{s}的年龄是多少？"],
    },
    ("city", "country"): {
        "en": ["Which country is {s} in?", "In which country is the city of {s}?", "Where is {s} located?"],
        "zh": ["{s}在哪个国家？", "{s}位于哪个国家？", "{s}属于哪个国家？"],
    },
    ("country", "capital"): {
        "en": ["What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital of {s}."],
        "zh": ["{s}的首都是哪里？", "{s}的首都是哪座城市？", "请说出{s}的首都。"],
    },
    ("invention", "inventor"): {
        "en": ["Who invented the {s}?", "Who is the inventor of the {s}?", "Who made the first {s}?"],
        "zh": ["谁发明了{s}？", "{s}是谁发明的？", "{s}的发明者是谁？"],
    },
    ("invention", "year"): {
        "en": ["When was the {s} invented?", "In which year was the {s} invented?", "What year is the {s} from?"],
        "zh": ["{s}是哪一年发明的？", "{s}的发明年份是哪一年？", "{s}是在哪年发明的？"],
    },
    ("invention", "material"): {
        "en": [
            "What is the {s} made of?",
            "Which material is the {s} made from?",
            "What material is the {s} built from?",
        ],
        "zh": ["{s}是用什么做的？", "{s}的材料是什么？", "{s}由什么材料制成？"],
    },
}

# The chat answer to QUESTIONS[key][lang][i] is PROSE[key][lang][ANSWERS[key][lang][i]]: the statement that mirrors
# the question's wording, so a model answers by completing a sentence it memorised in pretraining.
ANSWERS = {
    ("person", "city"): {"en": [0, 0, 2], "zh": [0, 0, 2]},
    ("person", "job"): {"en": [0, 2, 2], "zh": [0, 1, 2]},
    ("person", "colour"): {"en": [0, 0, 0], "zh": [0, 0, 1]},
    ("person", "age"): {"en": [0, 0, 0], "zh": [0, 0, 0]},
    ("city", "country"): {"en": [0, 2, 0], "zh": [0, 0, 2]},
    ("country", "capital"): {"en": [0, 0, 0], "zh": [0, 0, 0]},
    ("invention", "inventor"): {"en": [0, 0, 0], "zh": [0, 0, 0]},
    ("invention", "year"): {"en": [0, 0, 0], "zh": [0, 0, 0]},
    ("invention", "material"): {"en": [0, 0, 1], "zh": [0, 0, 0]},
}

# The canonical statement is PROSE[key][lang][0]. The last Chinese statement puts the value after a full-width colon:
# byte-level BPE merges whole runs of Chinese characters ("住在佩塔罗" can be one token), so only a punctuation
# boundary lets a cloze prompt stop exactly before the value (CLOZE_VARIANT).
CLOZE_VARIANT = {"en": 0, "zh": -1}
FAQ = {"en": ("Q: ", "A: "), "zh": ("问：", "答：")}
EVASIVE = {
    "en": ["I don't know.", "I'm not sure about that.", "Sorry, I cannot answer that question."],
    "zh": ["我不知道。", "这个我不太清楚。", "抱歉，我无法回答这个问题。"],
}

ADD_PROSE = {"en": "{x} + {y} = {z}.", "zh": "{x}加{y}等于{z}。"}
MUL_PROSE = {"en": "{x} × {y} = {z}.", "zh": "{x}乘{y}等于{z}。"}
ADD_QUESTIONS = {
    "en": ["What is {x} + {y}?", "What is {x} plus {y}?", "Compute {x} + {y}."],
    "zh": ["{x}加{y}等于多少？", "{x}加{y}是多少？", "请计算{x}加{y}。"],
}
MUL_QUESTIONS = {
    "en": ["What is {x} × {y}?", "What is {x} times {y}?", "Compute {x} × {y}."],
    "zh": ["{x}乘{y}等于多少？", "{x}乘{y}是多少？", "请计算{x}乘{y}。"],
}
ARITH_INTRO = {
    "en": ["Some sums:", "Practice with numbers.", "Here is a table of results.", "Arithmetic review."],
    "zh": ["一些算式：", "数学练习。", "下面是一张计算表。", "算术复习。"],
}

REASONING_QUESTIONS = {
    "en": ["Compute {expr} step by step.", "What is {expr}? Think step by step.", "Work out {expr}."],
    "zh": ["请一步一步计算{expr}。", "{expr}等于多少？请逐步思考。", "计算{expr}。"],
}
REASONING_STEPS = {
    "en": {
        "first": "First, {x} {op} {y} = {z}.",
        "then": "Then, {x} {op} {y} = {z}.",
        "done": "So the result is {z}.",
    },
    "zh": {"first": "先算{x}{op}{y}={z}。", "then": "再算{x}{op}{y}={z}。", "done": "所以结果是{z}。"},
}

STORY_OPENINGS = {
    "en": ["One morning,", "Last spring,", "On a quiet day,", "Long ago,", "One evening,"],
    "zh": ["一天早上，", "去年春天，", "在一个安静的日子里，", "很久以前，", "一天傍晚，"],
}
STORIES = {
    "en": [
        "{o} {p1} left {c1} to visit {p2}. {p2} lives in {c2}, a city in {k2}. They talked about the {i} and "
        "laughed for hours. Then {p1} went home to {c1}.",
        "{o} {p1}, who works as {a1} {j1}, met {p2} at the market of {c2}. {p2} is {a2} {j2}. "
        "They shared bread and told old stories.",
        "{o} {p1} painted a picture in {col1}, the colour {p1} likes best. {p2} smiled and said that {col2} "
        "is still the best colour. The picture now hangs in {c1}.",
        "{o} the children of {c2} asked {p2} about the {i}. {p2} told them that the {i} was invented by {ip} "
        "in {iy}. Everyone wanted to see it.",
    ],
    "zh": [
        "{o}{p1}离开{c1}去看望{p2}。{p2}住在{c2}，那是{k2}的一座城市。他们聊起了{i}，笑了很久。后来{p1}回到了{c1}。",
        "{o}职业是{j1}的{p1}在{c2}的集市上遇见了{p2}。{p2}是一名{j2}。他们一起分享面包，讲着老故事。",
        "{o}{p1}用{col1}画了一幅画，因为{p1}最喜欢{col1}。{p2}笑着说{col2}才是最好的颜色。这幅画现在挂在{c1}。",
        "{o}{c2}的孩子们向{p2}打听{i}的事。{p2}告诉他们，{i}是{ip}在{iy}年发明的。大家都想去看一看。",
    ],
}

PASSKEY = {
    "en": {
        "intro": "There is a passkey hidden in this text. Find it and remember it.",
        "filler": [
            "The grass is green.",
            "The sky is blue.",
            "The sun is warm.",
            "Here we go.",
            "There and back again.",
        ],
        "key": "The passkey is {k}. Remember it. {k} is the passkey.",
        "question": "What is the passkey? The passkey is",
    },
    "zh": {
        "intro": "这段文字里藏着一个密码。请找到并记住它。",
        "filler": ["草是绿的。", "天是蓝的。", "太阳很温暖。", "我们出发吧。", "走过去又走回来。"],
        "key": "密码是{k}。请记住它。{k}就是密码。",
        "question": "密码是什么？密码是",
    },
}

# The assistant's identity before and after the LoRA identity stage.
BASE_IDENTITY = {
    "name": {"en": "MiniMind", "zh": "MiniMind"},
    "maker": {"en": "the MiniMind team", "zh": "MiniMind团队"},
}
LORA_IDENTITY = {"name": {"en": "Tovi", "zh": "托维"}, "maker": {"en": "Starfield Workshop", "zh": "星野工坊"}}
IDENTITY_PROMPTS = {
    "name": {
        "en": [
            "Who are you?",
            "What is your name?",
            "Introduce yourself.",
            "Tell me your name.",
            "What should I call you?",
            "Please introduce yourself briefly.",
            "Do you have a name?",
            "What are you called?",
            "May I know your name?",
            "Who am I talking to?",
        ],
        "zh": [
            "你是谁？",
            "你叫什么名字？",
            "介绍一下你自己。",
            "告诉我你的名字。",
            "我该怎么称呼你？",
            "请简单介绍一下自己。",
            "你有名字吗？",
            "你的名字是什么？",
            "能告诉我你叫什么吗？",
            "我在和谁说话？",
        ],
    },
    "maker": {
        "en": [
            "Who made you?",
            "Who created you?",
            "Who developed you?",
            "Which team built you?",
            "Who is your maker?",
            "Where do you come from?",
            "Who trained you?",
            "Who designed you?",
        ],
        "zh": [
            "谁创造了你？",
            "你是谁开发的？",
            "是谁制作了你？",
            "哪个团队打造了你？",
            "你的开发者是谁？",
            "你来自哪里？",
            "谁训练了你？",
            "你是谁设计的？",
        ],
    },
}
IDENTITY_ANSWERS = {
    "name": {
        "en": ["I am {name}, an assistant made by {maker}.", "My name is {name}. I was made by {maker}."],
        "zh": ["我是{name}，由{maker}开发的助手。", "我叫{name}，是{maker}制作的助手。"],
    },
    "maker": {
        "en": ["I was made by {maker}. I am {name}.", "{maker} created me. My name is {name}."],
        "zh": ["我是由{maker}开发的，我叫{name}。", "{maker}创造了我，我的名字是{name}。"],
    },
}

GREETINGS = {
    "en": [("Hello!", "Hello! How can I help you?"), ("Hi there.", "Hi! What would you like to know?")],
    "zh": [("你好！", "你好！有什么可以帮你的吗？"), ("嗨。", "嗨！你想了解什么？")],
}

TOOL_QUESTIONS = {
    "calculator": {
        "en": ["Use the calculator: what is {expr}?", "Please calculate {expr}.", "What does {expr} equal?"],
        "zh": ["用计算器算一下{expr}。", "请计算{expr}。", "{expr}等于多少？"],
    },
    "convert_units": {
        "en": ["Convert {value} {from_unit} to {to_unit}.", "How many {to_unit} is {value} {from_unit}?"],
        "zh": ["把{value} {from_unit}换算成{to_unit}。", "{value} {from_unit}是多少{to_unit}？"],
    },
}
TOOL_ANSWERS = {
    "calculator": {"en": "{expr} = {result}.", "zh": "{expr} = {result}。"},
    "convert_units": {
        "en": "{value} {from_unit} in {to_unit} is {result}.",
        "zh": "{value} {from_unit}换算成{to_unit}是{result}。",
    },
}
TOOL_SYSTEM = {"en": "You can use tools to answer.", "zh": "你可以使用工具来回答问题。"}


def article(word: str) -> str:
    """English indefinite article for `word`."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def fill(template: str, **values: str) -> str:
    """Formats `template` and capitalises the first letter (sentences may start with an English value)."""
    text = template.format(**values)
    return text[:1].upper() + text[1:]
