"""The class catalogue's one type: a class id (its value in class masks), name and colour."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Class id of background (every valid pixel no class covers); never a catalogue entry.
BACKGROUND = 0
#: Name of background in metrics, model outputs and exports.
BACKGROUND_NAME = "background"
#: The label annotators use for pixels to leave out of training (brush and polygon), never a class.
UNSURE_LABEL = "unsure"
#: Names a catalogue class may not take.
RESERVED_NAMES = frozenset({BACKGROUND_NAME, UNSURE_LABEL})


class LabelClass(BaseModel):
    """One class of the catalogue, as ``geolabel.toml``, Label Studio and model manifests know it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=1, le=255)
    name: str = Field(min_length=1, pattern=r"^[^<>&\"]+$")
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")
    #: What the class covers, for the annotators' instructions and the label's hover hint.
    description: str = Field(default="", max_length=500)

    def __eq__(self, other: object) -> bool:
        """Same id, name and colour: a description documents a class, it does not change it (or its model)."""
        if not isinstance(other, LabelClass):
            return NotImplemented
        return (self.id, self.name, self.color) == (other.id, other.name, other.color)

    def __hash__(self) -> int:
        return hash((self.id, self.name, self.color))

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.strip().lower() in RESERVED_NAMES:
            raise ValueError(
                f"{name!r} is reserved ({BACKGROUND_NAME}: every pixel no class covers; {UNSURE_LABEL}: "
                "pixels left out of training); give the class another name"
            )
        return name

    @field_validator("color")
    @classmethod
    def _lower(cls, color: str) -> str:
        return color.lower()
