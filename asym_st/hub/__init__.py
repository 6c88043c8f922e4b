"""Hub publishing: model cards from model_cards/ templates, and pushing towers."""

from asym_st.hub.card import (
    CARD_KINDS,
    CardConfig,
    CardLinks,
    CardValidationError,
    find_placeholders,
    find_secrets,
    generated_sections,
    merge_cards,
    render_card,
    validate_card,
    write_card,
)
from asym_st.hub.facts import ModelFacts, NotAnAsymmetricModelError, TowerFacts, read_model_facts
from asym_st.hub.push import MissingTokenError, PushConfig, PushError, PushReport, RepoPush, push_model

__all__ = [
    "CARD_KINDS",
    "CardConfig",
    "CardLinks",
    "CardValidationError",
    "find_placeholders",
    "find_secrets",
    "generated_sections",
    "merge_cards",
    "render_card",
    "validate_card",
    "write_card",
    "ModelFacts",
    "NotAnAsymmetricModelError",
    "TowerFacts",
    "read_model_facts",
    "MissingTokenError",
    "PushConfig",
    "PushError",
    "PushReport",
    "RepoPush",
    "push_model",
]
