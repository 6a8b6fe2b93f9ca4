"""Attributes, their classes (in digit order) and the tasks a prompt can pose."""

from dataclasses import dataclass

from distctl.errors import DistctlError


@dataclass(frozen=True)
class Attribute:
    name: str
    classes: tuple[str, ...]

    @property
    def k(self) -> int:
        return len(self.classes)

    def index(self, cls: str) -> int:
        try:
            return self.classes.index(cls)
        except ValueError:
            raise DistctlError(
                f"unknown {self.name} class {cls!r}; allowed: {', '.join(self.classes)}",
                field="class",
            ) from None

    def label(self, cls: str) -> str:
        """The class as a prompt shows it ("Black or African American")."""
        self.index(cls)
        return " ".join(w if w == "or" else w.capitalize() for w in cls.split())


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute("gender", ("male", "female")),
        Attribute(
            "race",
            (
                "white",
                "black or african american",
                "american indian or alaska native",
                "asian",
                "native hawaiian or other pacific islander",
            ),
        ),
        Attribute("sentiment", ("positive", "negative", "neutral")),
    )
}

TASKS: tuple[str, ...] = ("attribute", "story")


def get_attribute(name: str | Attribute) -> Attribute:
    if isinstance(name, Attribute):
        return name
    found = ATTRIBUTES.get(name.strip().lower()) if isinstance(name, str) else None
    if found is None:
        raise DistctlError(
            f"unknown attribute {name!r}; allowed: {', '.join(ATTRIBUTES)}", field="attribute"
        )
    return found


def check_task(task: str) -> str:
    if task not in TASKS:
        raise DistctlError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}", field="task")
    return task
