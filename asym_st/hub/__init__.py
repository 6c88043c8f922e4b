"""Hub publishing: model cards from model_cards/ templates, and pushing towers."""
