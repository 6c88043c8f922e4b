"""Model cards: real scores from the stored results, nothing invented, Hub-valid metadata, user edits kept."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from asym_st.hub import (
    CardConfig,
    CardLinks,
    CardValidationError,
    NotAnAsymmetricModelError,
    find_placeholders,
    generated_sections,
    merge_cards,
    render_card,
    validate_card,
    write_card,
)
from tests.hub.results_fixtures import FAKE_TOKEN, write_results

LINKS = CardLinks(asymmetric="org/tiny-asym", query="org/tiny-asym-query")


def _metrics(card: ModelCard) -> dict[tuple[str, str, str], float]:
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    return {(r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in results}


def test_card_reports_the_stored_scores_and_nothing_else(bare_model):
    write_results(bare_model)  # includes a token inside training_config.json, which the card must not show
    card = render_card(bare_model, CardConfig(links=LINKS))
    text = str(card)

    # model-index: nDCG@10 and Recall@100 of the stored SciFact result, in points, with its source file.
    assert _metrics(card) == {("scifact", "test", "ndcg_at_10"): 61.23, ("scifact", "test", "recall_at_100"): 90.12}
    index = card.data.to_dict()["model-index"][0]
    assert index["name"] == "tiny-asym"
    assert index["results"][0]["source"]["url"] == (
        "https://huggingface.co/org/tiny-asym/blob/main/eval/retrieval/scifact__test.json"
    )
    assert card.data.library_name == "sentence-transformers"
    assert card.data.pipeline_tag == "sentence-similarity"
    assert {"sentence-transformers", "asym-st", "qed"} <= set(card.data.tags)
    assert card.data.base_model is None  # the tiny teacher is a local folder, not a Hub id

    sections = generated_sections(card.text)
    assert "| scifact | test | 61.23 | 90.12 | 57.00 | 56.00 | 300 | 5183 |" in sections["evaluation"]
    assert "| 64.51 | 61.23 | 94.9% | 92.50 | 90.12 | 0.0123 (ttest_rel) |" in sections["evaluation"]
    assert "| query tower | query | 1 | 7.01 | 8.52 | 7.01 | 143 |" in sections["latency"]
    assert "Fixture CPU @ 2.0GHz" in sections["latency"] and "3.10× at batch 1" in sections["latency"]
    assert "![Quality/speed trade-off](eval/tradeoff.png)" in sections["tradeoff"]
    assert "| `learning_rate` | 0.0001 |" in sections["training"]
    assert "`fiqa/queries.jsonl`" in sections["training"] and "6648" in sections["training"]
    assert "Wang, Yuxuan and Lyu, Hong" in sections["citation"] and "Reimers, Nils" in sections["citation"]
    assert "[org/tiny-asym-query](https://huggingface.co/org/tiny-asym-query)" in sections["related"]
    assert 'SentenceTransformer("org/tiny-asym")' in sections["usage"]
    assert "encode_query" in sections["usage"] and "encode_document" in sections["usage"]
    # Architecture: the layers kept and the parameters of each tower come from the folder itself.
    assert "2 (teacher layers 0, 3 of 4)" in sections["architecture"]
    assert "not evaluated" not in text.lower() and "not measured" not in text.lower()

    # Nothing secret or machine-specific leaks.
    assert FAKE_TOKEN not in text and "hf_Fixture" not in text
    assert "/home/someone" not in text and "hub_token" not in text
    assert find_placeholders(text) == []


def test_card_without_results_says_not_evaluated_and_has_no_numbers(bare_model):
    card = render_card(bare_model)
    text = str(card)
    assert "model-index" not in card.data.to_dict()
    sections = generated_sections(card.text)
    assert "**Not evaluated.**" in sections["evaluation"]
    assert "Not measured" in sections["latency"] and "Not measured" in sections["tradeoff"]
    assert "Not trained" in sections["training"]
    # No metric-looking number anywhere in the evaluation and latency sections.
    assert not re.search(r"\d+\.\d+", sections["evaluation"] + sections["latency"])
    assert find_placeholders(text) == []
    validate_card(card)


def test_metadata_passes_huggingface_hub_validation_round_trip(evaluated_model, tmp_path):
    card = render_card(evaluated_model, CardConfig(links=LINKS))
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)  # ignore_metadata_errors=False: an invalid model-index raises
    metadata = loaded.data.to_dict()
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert eval_results_to_model_index(name, results) == metadata["model-index"]
    again = ModelCardData(**metadata).to_dict()
    assert again == metadata


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda t: t.replace("value: 61.23", "value: TBD"), "not a number"),
        (lambda t: t.replace("| 61.23 |", "| N/A |"), "placeholders"),
        (lambda t: t.replace("## Usage", f"## Usage {FAKE_TOKEN}"), "token"),
        (lambda t: t.replace("    metrics:\n", "    metrics_typo:\n", 1), "model_index"),
        (lambda t: t.replace("library_name: sentence-transformers", "library_name: [1, 2]"), "library_name"),
    ],
)
def test_validation_rejects_bad_cards(evaluated_model, edit, problem):
    text = str(render_card(evaluated_model, CardConfig(links=LINKS)))
    bad = edit(text)
    assert bad != text
    with pytest.raises(CardValidationError, match=problem):
        validate_card(bad)


def test_tower_cards(evaluated_model):
    links = CardLinks(asymmetric="org/tiny-asym", query="org/tiny-asym-query", document="org/tiny-asym-document")
    query = render_card(evaluated_model, CardConfig(kind="query", links=links))
    # Scores exist only for the pair: the query tower's card shows them but has no model-index.
    assert "model-index" not in query.data.to_dict()
    assert "query-tower" in query.data.tags
    sections = generated_sections(query.text)
    assert "61.23" in sections["evaluation"]
    assert 'SentenceTransformer("org/tiny-asym-document")' in sections["usage"]
    assert "https://huggingface.co/org/tiny-asym" in sections["header"]

    document = render_card(evaluated_model, CardConfig(kind="document", links=links))
    # The document tower is the teacher: its model-index holds the teacher's measured scores.
    assert _metrics(document) == {("scifact", "test", "ndcg_at_10"): 64.51, ("scifact", "test", "recall_at_100"): 92.5}
    assert "Wang, Yuxuan" not in str(document)  # the teacher was not distilled: no method citation


def test_merge_keeps_user_edits_and_refreshes_scores(evaluated_model):
    first = str(render_card(evaluated_model, CardConfig(links=LINKS)))
    user_note = "## Notes from the authors\n\nTrained on a laptop; see our blog post.\n"
    edited = first.replace("<!-- asym-st:begin usage -->", user_note + "\n<!-- asym-st:begin usage -->")
    edited = edited.replace("tags:\n", "license: mit\ntags:\n- my-own-tag\n", 1)
    edited = edited.replace("## Usage\n", "## Usage\n\nThis line was edited by hand inside a generated section.\n")
    edited += "\nA closing remark by the user.\n"

    # New measurements arrive: the SciFact result changes.
    result_path = evaluated_model / "eval" / "retrieval" / "scifact__test.json"
    result = json.loads(result_path.read_text())
    result["metrics"]["ndcg_at_10"] = 0.6789
    result_path.write_text(json.dumps(result))

    merged = merge_cards(edited, render_card(evaluated_model, CardConfig(links=LINKS)))
    text = str(merged)
    assert user_note in text and "A closing remark by the user." in text
    assert "my-own-tag" in merged.data.tags and "asym-st" in merged.data.tags
    assert merged.data.license == "mit"  # the user's choice of license is kept
    assert _metrics(merged)[("scifact", "test", "ndcg_at_10")] == 67.89
    assert "| 67.89 |" in text and "| 61.23 | 90.12" not in text
    assert "edited by hand inside a generated section" not in text  # generated sections are regenerated
    assert text.index(user_note) < text.index("<!-- asym-st:begin usage -->")
    validate_card(merged)


def test_merge_inserts_new_sections_and_drops_stale_ones(evaluated_model):
    card = str(render_card(evaluated_model, CardConfig(links=LINKS)))
    sections = generated_sections(card)
    old = card.replace(f"<!-- asym-st:begin latency -->\n{sections['latency']}<!-- asym-st:end latency -->\n", "")
    old += "\n<!-- asym-st:begin obsolete -->\nold numbers 12.34\n<!-- asym-st:end obsolete -->\n"
    merged = str(merge_cards(old, render_card(evaluated_model, CardConfig(links=LINKS))))
    assert list(generated_sections(merged)) == list(sections)  # same sections, template order
    assert "old numbers" not in merged


def test_card_without_markers_is_replaced(evaluated_model):
    default_card = (evaluated_model / "README.md").read_text()  # sentence-transformers' own card
    assert not generated_sections(default_card)
    merged = merge_cards(default_card, render_card(evaluated_model))
    assert str(merged) == str(render_card(evaluated_model))


def test_write_card_refreshes_the_model_folder_readme(evaluated_model):
    path = write_card(evaluated_model)
    text = path.read_text()
    assert path == evaluated_model / "README.md" and "| 61.23 |" in text
    path.write_text(text + "\nMy own paragraph.\n")
    write_card(evaluated_model)
    assert "My own paragraph." in path.read_text() and "| 61.23 |" in path.read_text()


def test_cli_card(evaluated_model, tmp_path, capsys):
    from asym_st.cli import main

    assert main(["card", str(evaluated_model), "--repo", "org/tiny-asym"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_index_metrics"] == 2 and out["evaluated"] is True and "evaluation" in out["sections"]
    assert 'SentenceTransformer("org/tiny-asym")' in (evaluated_model / "README.md").read_text()

    assert main(["card", str(evaluated_model), "--kind", "query"]) == 1
    assert "needs --output" in capsys.readouterr().err
    assert main(["card", str(evaluated_model), "--kind", "query", "-o", str(tmp_path / "q.md")]) == 0
    assert "query tower" in (tmp_path / "q.md").read_text()


def test_not_an_asymmetric_model(tiny_teacher_path, tmp_path):
    with pytest.raises(NotAnAsymmetricModelError, match="router_config.json is missing"):
        render_card(tiny_teacher_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_card(tmp_path / "nowhere")
