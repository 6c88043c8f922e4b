"""Pushing with the real huggingface_hub client against the local Hub: dry run, failure atomicity, retries, re-push.

These run in-process (see the ``hub_online`` fixture for why that is clean); the download round trip through
``SentenceTransformer("org/name")`` is in test_round_trip.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from asym_st.hub import MissingTokenError, PushConfig, PushError, generated_sections, push_model
from tests.hub.results_fixtures import FAKE_TOKEN, write_results


def _config(hub, **kwargs) -> PushConfig:
    return PushConfig(
        **{"repo_id": "org/tiny-asym", "endpoint": hub.url, "token": hub.token, "retry_wait": 0.01, **kwargs}
    )


def _puts(hub) -> list[str]:
    return [path for method, path, status in hub.requests if method == "PUT" and status == 200]


def test_dry_run_writes_exactly_what_a_push_uploads(evaluated_model, hub_online, tmp_path):
    out = tmp_path / "preview"
    config = _config(
        hub_online, towers=("asymmetric", "query", "document"), dry_run=True, output_dir=str(out), token=None
    )
    report = push_model(evaluated_model, config)
    assert report.dry_run and hub_online.repos == {}  # nothing was created remotely
    assert sorted(p.name for p in out.iterdir()) == ["asymmetric", "document", "operations.json", "query"]
    operations = json.loads((out / "operations.json").read_text())
    for repo in operations["repos"]:
        listed = {op["path_in_repo"] for op in repo["operations"]}
        on_disk = {p.relative_to(out / repo["kind"]).as_posix() for p in (out / repo["kind"]).rglob("*") if p.is_file()}
        assert listed == on_disk and "README.md" in listed
    assert "query_0_Transformer/model.safetensors" in {
        op["path_in_repo"] for op in operations["repos"][-1]["operations"]
    }

    push_model(evaluated_model, _config(hub_online, towers=("asymmetric", "query", "document")))
    for kind, repo_id in (
        ("asymmetric", "org/tiny-asym"),
        ("query", "org/tiny-asym-query"),
        ("document", "org/tiny-asym-document"),
    ):
        uploaded = hub_online.files(repo_id)
        uploaded.pop(".gitattributes")  # created with the repo, as on the Hub
        preview = {p.relative_to(out / kind).as_posix(): p.read_bytes() for p in (out / kind).rglob("*") if p.is_file()}
        assert uploaded == preview, kind


def test_push_creates_cross_linked_repos_with_valid_cards(evaluated_model, hub_online):
    report = push_model(evaluated_model, _config(hub_online, private=True))
    assert [r.kind for r in report.repos] == ["query", "asymmetric"]  # towers first, the main model last
    assert all(r.commit_oid == hub_online.head(r.repo_id) for r in report.repos)
    assert hub_online.repos["org/tiny-asym"].private and hub_online.repos["org/tiny-asym-query"].private
    card = ModelCard(hub_online.files("org/tiny-asym")["README.md"].decode())
    assert f"[org/tiny-asym-query]({hub_online.url}/org/tiny-asym-query)" in card.text
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == 61.23
    query_card = ModelCard(hub_online.files("org/tiny-asym-query")["README.md"].decode())
    assert f"({hub_online.url}/org/tiny-asym)" in query_card.text and "model-index" not in query_card.data.to_dict()
    assert hub_online.validated_cards  # create_commit had the README's metadata checked by the server
    assert hub_online.unhandled == []


def test_failed_upload_leaves_the_repo_unchanged(evaluated_model, hub_online):
    push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    before_head = hub_online.head("org/tiny-asym")
    before_files = hub_online.files("org/tiny-asym")
    lfs_files = [p for p in before_files if p.endswith((".safetensors", ".png"))]
    assert len(lfs_files) >= 3

    # New weights and scores, then the storage fails after the first LFS object of the new version.
    write_results(evaluated_model, with_token_in_config=False)
    result = evaluated_model / "eval" / "retrieval" / "scifact__test.json"
    result.write_text(result.read_text().replace("0.61234", "0.7"))
    (evaluated_model / "eval" / "tradeoff.png").write_bytes(b"\x89PNG new plot bytes")
    (evaluated_model / "query_0_Transformer" / "extra.bin").write_bytes(b"\x00" * 64)
    hub_online.inject("lfs_upload", status=507, after=1)
    with pytest.raises(PushError) as failure:
        push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    message = str(failure.value)
    assert "org/tiny-asym" in message and "Nothing was committed" in message and "507" in message
    assert hub_online.head("org/tiny-asym") == before_head
    assert hub_online.files("org/tiny-asym") == before_files  # not a single file changed, README included
    assert len(hub_online.lfs_objects) > len(lfs_files)  # one new object did reach the store, unreferenced

    # The server heals; the same push completes, and the object already stored is not sent again.
    hub_online.clear_faults()
    puts_before = len(_puts(hub_online))
    report = push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    assert len(_puts(hub_online)) - puts_before == 1
    files = hub_online.files("org/tiny-asym")
    assert files["eval/tradeoff.png"] == b"\x89PNG new plot bytes" and "query_0_Transformer/extra.bin" in files
    assert "value: 70.0" in files["README.md"].decode()
    assert report.repos[0].commit_oid == hub_online.head("org/tiny-asym") != before_head


def test_commit_failure_is_atomic_and_transient_errors_are_retried(evaluated_model, hub_online):
    hub_online.inject("create_repo", status=502, times=1)  # huggingface_hub does not retry create_repo; we do
    push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    assert [s for m, p, s in hub_online.requests if p == "/api/repos/create"] == [502, 200]
    before = hub_online.head("org/tiny-asym"), hub_online.files("org/tiny-asym")
    (evaluated_model / "eval" / "tradeoff.png").write_bytes(b"\x89PNG changed")

    hub_online.inject("commit", status=500)
    with pytest.raises(PushError, match="failed while uploading and committing after 2 attempt") as failure:
        push_model(evaluated_model, _config(hub_online, towers=("asymmetric",), max_retries=1))
    assert "The Hub rejected the commit: the repo keeps its previous version" in str(failure.value)
    assert (hub_online.head("org/tiny-asym"), hub_online.files("org/tiny-asym")) == before

    hub_online.inject("commit", status=503, times=1)  # one transient failure, then the Hub answers
    report = push_model(evaluated_model, _config(hub_online, towers=("asymmetric",), max_retries=2))
    assert report.repos[0].attempts == 2
    assert hub_online.files("org/tiny-asym")["eval/tradeoff.png"] == b"\x89PNG changed"

    hub_online.inject("lfs_upload", status=503, times=1)  # retried by huggingface_hub itself (1 s back-off)
    (evaluated_model / "eval" / "tradeoff.png").write_bytes(b"\x89PNG changed again")
    assert push_model(evaluated_model, _config(hub_online, towers=("asymmetric",))).repos[0].attempts == 1
    assert hub_online.files("org/tiny-asym")["eval/tradeoff.png"] == b"\x89PNG changed again"


def test_repush_keeps_what_the_user_wrote_on_the_hub(evaluated_model, hub_online, tmp_path):
    push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    card = hub_online.files("org/tiny-asym")["README.md"].decode()
    edited = card.replace(
        "<!-- asym-st:begin usage -->", "## Our notes\n\nHand-written on the Hub.\n\n<!-- asym-st:begin usage -->"
    )
    edited = edited.replace("tags:\n", "tags:\n- user-tag\n", 1)
    (tmp_path / "README.md").write_text(edited)
    api = HfApi(endpoint=hub_online.url, token=hub_online.token)
    api.upload_file(path_or_fileobj=str(tmp_path / "README.md"), path_in_repo="README.md", repo_id="org/tiny-asym")

    result = evaluated_model / "eval" / "retrieval" / "scifact__test.json"
    result.write_text(result.read_text().replace("0.61234", "0.65"))
    report = push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    assert report.repos[0].card_merged_from.startswith("README.md of org/tiny-asym@")
    final = ModelCard(hub_online.files("org/tiny-asym")["README.md"].decode())
    assert "Hand-written on the Hub." in final.text and "user-tag" in final.data.tags
    assert "| 65.00 |" in generated_sections(final.text)["evaluation"]
    assert final.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == 65.0


def test_concurrent_edit_is_not_overwritten(evaluated_model, hub_online):
    push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    card = hub_online.files("org/tiny-asym")["README.md"].decode()
    edited = card.replace("<!-- asym-st:begin usage -->", "Edited while the push ran.\n\n<!-- asym-st:begin usage -->")
    # Someone saves an edit between the moment the push read the card and its commit.
    hub_online.before_commit = lambda repo_id: hub_online.commit_files(repo_id, {"README.md": edited.encode()})
    (evaluated_model / "eval" / "tradeoff.png").write_bytes(b"\x89PNG concurrent")
    with pytest.raises(PushError, match="someone pushed to this branch meanwhile"):
        push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    assert hub_online.files("org/tiny-asym")["README.md"].decode() == edited  # their edit survived
    push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))  # the re-run merges it
    files = hub_online.files("org/tiny-asym")
    assert "Edited while the push ran." in files["README.md"].decode()
    assert files["eval/tradeoff.png"] == b"\x89PNG concurrent"


def test_pull_request_and_branch(evaluated_model, hub_online):
    push_model(evaluated_model, _config(hub_online, towers=("asymmetric",)))
    main_head = hub_online.head("org/tiny-asym")
    (evaluated_model / "eval" / "tradeoff.png").write_bytes(b"\x89PNG for review")
    report = push_model(evaluated_model, _config(hub_online, towers=("asymmetric",), create_pr=True))
    assert report.repos[0].pr_url.endswith("/org/tiny-asym/discussions/1")
    assert hub_online.head("org/tiny-asym") == main_head  # main untouched until the PR is merged
    assert hub_online.files("org/tiny-asym", "refs/pr/1")["eval/tradeoff.png"] == b"\x89PNG for review"

    push_model(evaluated_model, _config(hub_online, towers=("asymmetric",), revision="v2"))
    assert hub_online.head("org/tiny-asym") == main_head
    readme = hub_online.files("org/tiny-asym", "v2")["README.md"].decode()
    assert "/org/tiny-asym/blob/v2/eval/retrieval/scifact__test.json" in readme


def test_bad_input_gets_clear_errors(evaluated_model, tiny_teacher_path, hub_online, monkeypatch):
    with pytest.raises(ValueError, match="expected 'namespace/name'"):
        PushConfig(repo_id="no-namespace")
    with pytest.raises(ValueError, match="Invalid repo id 'org/bad name'"):
        PushConfig(repo_id="org/bad name")
    with pytest.raises(ValueError, match="towers="):
        PushConfig(repo_id="org/x", towers=("everything",))

    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(MissingTokenError, match="HF_TOKEN"):
        push_model(evaluated_model, _config(hub_online, token=None))

    with pytest.raises(ValueError, match="not an asymmetric model"):
        push_model(tiny_teacher_path, _config(hub_online))
    with pytest.raises(PushError, match="rejected the token"):
        push_model(evaluated_model, _config(hub_online, token="hf_wrongwrongwrongwrongwrongwrong", max_retries=0))
    assert hub_online.repos == {}


def test_tokens_never_leak(bare_model, hub_online, caplog, capsys, tmp_path):
    write_results(bare_model, with_token_in_config=True)  # a careless training script stored a token
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PushError, match="Refusing to upload training_config.json"):
        push_model(bare_model, _config(hub_online, towers=("asymmetric",)))
    with pytest.raises(PushError, match="Refusing to upload"):
        push_model(bare_model, _config(hub_online, dry_run=True, output_dir=str(tmp_path / "preview")))
    assert "org/tiny-asym" not in hub_online.repos or hub_online.files("org/tiny-asym").keys() == {".gitattributes"}

    write_results(bare_model, with_token_in_config=False)
    report = push_model(bare_model, _config(hub_online, towers=("asymmetric", "query")))
    everything = json.dumps(report.to_dict()) + caplog.text + "".join(capsys.readouterr())
    for repo_id in ("org/tiny-asym", "org/tiny-asym-query"):
        everything += "".join(content.decode(errors="ignore") for content in hub_online.files(repo_id).values())
    assert hub_online.token not in everything and FAKE_TOKEN not in everything
    assert hub_online.token not in repr(_config(hub_online))  # the config's repr hides it


def test_token_from_the_environment_is_never_written_or_printed(
    evaluated_model, hub_online, caplog, capsys, monkeypatch
):
    """The usual setup (HF_TOKEN in the environment): the token reaches the Hub's Authorization header and nothing
    else: no file under the model folder or the dry-run folder, no card, no result file, no log line, no output."""
    monkeypatch.setenv("HF_TOKEN", hub_online.token)
    caplog.set_level(logging.DEBUG)
    preview = evaluated_model.parent / "preview"
    push_model(evaluated_model, _config(hub_online, token=None, dry_run=True, output_dir=str(preview)))
    report = push_model(evaluated_model, _config(hub_online, token=None))
    assert hub_online.files("org/tiny-asym")  # the push did happen, authenticated with the token
    written = [p for p in evaluated_model.parent.rglob("*") if p.is_file()]
    assert any(p.name == "operations.json" for p in written) and any(p.suffix == ".safetensors" for p in written)
    for path in written:
        assert hub_online.token.encode() not in path.read_bytes(), path
    for repo_id in ("org/tiny-asym", "org/tiny-asym-query"):
        for name, content in hub_online.files(repo_id).items():
            assert hub_online.token.encode() not in content, (repo_id, name)
    printed = json.dumps(report.to_dict()) + caplog.text + "".join(capsys.readouterr())
    assert hub_online.token not in printed


def test_cli_push_dry_run(evaluated_model, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from asym_st.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a dry run needs no network (and no token)
    monkeypatch.delenv("HF_TOKEN", raising=False)

    out = tmp_path / "preview"
    assert main(["push", str(evaluated_model), "--repo", "org/tiny-asym", "--dry-run", "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dry_run"] and {r["kind"] for r in printed["repos"]} == {"asymmetric", "query"}
    assert all(r["card_merged_from"] == "new card (remote not consulted: offline)" for r in printed["repos"])
    assert all(r["operations"] for r in printed["repos"]) and Path(printed["output_dir"]) == out
    assert (out / "asymmetric" / "README.md").is_file()
    assert main(["push", str(evaluated_model), "--repo", "bad repo id", "--dry-run"]) == 1
    assert "Invalid repo id" in capsys.readouterr().err
    assert main(["push", str(evaluated_model), "--repo", "org/x", "--dry-run", "-o", str(evaluated_model / "x")]) == 1
