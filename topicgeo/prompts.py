"""The topic prompts of the TopicGeo supplement (Table 2), kept as data in ``prompts.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class PromptSet:
    """Category and attribute prompts and the sentence templates that turn them into text.

    Attributes:
        categories: land-cover category words (6 in the paper).
        attributes: attribute keywords (25 in the paper).
        category_template: ``str.format`` template with one slot for a category.
        attribute_template: ``str.format`` template with one slot for an attribute.
    """

    categories: tuple[str, ...]
    attributes: tuple[str, ...]
    category_template: str
    attribute_template: str

    def __post_init__(self) -> None:
        if not self.categories:
            raise ValueError("a prompt set needs at least one category")
        for template in (self.category_template, self.attribute_template):
            if template.count("{}") != 1:
                raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' slot")

    @property
    def texts(self) -> tuple[str, ...]:
        """All prompt sentences, categories first: length ``len(categories) + len(attributes)``."""
        cats = tuple(self.category_template.format(c.lower()) for c in self.categories)
        atts = tuple(self.attribute_template.format(a.lower()) for a in self.attributes)
        return cats + atts

    def __len__(self) -> int:
        return len(self.categories) + len(self.attributes)


def load_prompts() -> PromptSet:
    """Load the paper's prompt set (6 categories + 25 attributes = 31 prompts)."""
    raw = json.loads(resources.files("topicgeo").joinpath("prompts.json").read_text(encoding="utf-8"))
    return PromptSet(
        categories=tuple(raw["categories"]),
        attributes=tuple(raw["attributes"]),
        category_template=raw["category_template"],
        attribute_template=raw["attribute_template"],
    )
