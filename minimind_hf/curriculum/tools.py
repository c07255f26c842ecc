"""Deterministic tools for the tool-call stage: a calculator, a unit converter and a lookup into the synthetic world.

The functions carry type hints and Google-style docstrings, so `transformers.utils.get_json_schema` turns them into
the JSON schemas written into the data, and the same callables can be handed to TRL (`GRPOTrainer(tools=...)`) or
executed by an agent loop. `make_tools(world)` returns them bound to a world.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from fractions import Fraction

from transformers.utils import get_json_schema

from .world import ATTRIBUTES, World

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}

# Linear unit factors relative to a base unit per dimension; temperatures are handled separately.
_UNITS = {
    "mm": ("length", Fraction(1, 1000)),
    "cm": ("length", Fraction(1, 100)),
    "m": ("length", Fraction(1)),
    "km": ("length", Fraction(1000)),
    "g": ("mass", Fraction(1, 1000)),
    "kg": ("mass", Fraction(1)),
    "t": ("mass", Fraction(1000)),
    "ml": ("volume", Fraction(1, 1000)),
    "l": ("volume", Fraction(1)),
}


def format_number(value: Fraction | float | int) -> str:
    """Formats a number the way the data writes it: integers without a decimal point, others with at most 4 decimals."""
    value = Fraction(value).limit_denominator(10**6)
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.4f}".rstrip("0").rstrip(".")


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ValueError("only numbers, + - * / and parentheses are allowed")


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression.

    Args:
        expression: Numbers with + - * / and parentheses.
    """
    try:
        return format_number(_evaluate(ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval")))
    except (SyntaxError, ValueError, ZeroDivisionError) as error:
        return f"error: {error}"


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Converts a value between units: mm, cm, m, km, g, kg, t, ml, l, C, F.

    Args:
        value: The number.
        from_unit: Its unit.
        to_unit: The target unit.
    """
    value = Fraction(str(value))
    if {from_unit, to_unit} <= {"C", "F"}:
        if from_unit == to_unit:
            return format_number(value)
        return format_number(value * Fraction(9, 5) + 32 if from_unit == "C" else (value - 32) * Fraction(5, 9))
    if from_unit not in _UNITS or to_unit not in _UNITS or _UNITS[from_unit][0] != _UNITS[to_unit][0]:
        return f"error: cannot convert {from_unit} to {to_unit}"
    return format_number(value * _UNITS[from_unit][1] / _UNITS[to_unit][1])


def make_lookup(world: World) -> Callable[[str, str], str]:
    """Returns the `lookup` tool bound to `world`."""

    def lookup(entity: str, attribute: str) -> str:
        """Looks up a fact about a person, city, country or invention.

        Args:
            entity: Its name.
            attribute: city, job, colour, age, country, capital, inventor, year or material.
        """
        found = world.find(entity)
        if found is None:
            return f"error: unknown entity {entity}"
        if attribute not in ATTRIBUTES[found.kind]:
            return f"error: {found.kind} has no attribute {attribute}"
        value = found.facts[attribute]
        lang = "en" if entity.strip().casefold() == found.name.en.casefold() else "zh"
        return value[lang]

    return lookup


def make_tools(world: World) -> dict[str, Callable[..., str]]:
    """The curriculum's tools by name, bound to `world`."""
    return {"calculator": calculator, "convert_units": convert_units, "lookup": make_lookup(world)}


def tool_schemas(tools: dict[str, Callable[..., str]]) -> list[dict]:
    """OpenAI-style JSON schemas (`{"type": "function", "function": {...}}`) of `tools`, in their order."""
    return [get_json_schema(fn) for fn in tools.values()]


def execute_tool_call(tools: dict[str, Callable[..., str]], name: str, arguments: dict) -> str:
    """Runs one tool call; an unknown tool or bad arguments give an `error: ...` string instead of raising."""
    if name not in tools:
        return f"error: unknown tool {name}"
    try:
        return tools[name](**arguments)
    except (TypeError, ValueError) as error:
        return f"error: {error}"
