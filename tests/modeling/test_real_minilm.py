"""On the real all-MiniLM-L6-v2 weights from ../shared: 2-of-6-layer towers, saved and reloaded without asym_st."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from asym_st import QueryTowerConfig, build_asymmetric_model, fingerprint_modules, save_asymmetric_model
from tests.conftest import REPO_ROOT
from tests.isolated_load import encode_without_asym_st

pytestmark = pytest.mark.real

QUERIES = ["what is the capital of france?", "how do vaccines train the immune system?"]
PASSAGES = ["Paris is the capital and largest city of France.", "Vaccines expose the immune system to an antigen."]


def test_minilm_two_of_six_layers_round_trip(minilm_name, tmp_path):
    teacher = SentenceTransformer(minilm_name, device="cpu")
    model = build_asymmetric_model(teacher, QueryTowerConfig(layers=[0, 5]))
    record = model.asym_st_record
    assert record.teacher == "sentence-transformers/all-MiniLM-L6-v2"
    assert record.teacher_revision and record.query_layers == [0, 5]
    assert record.document_tower_fingerprint == fingerprint_modules(teacher)

    path = save_asymmetric_model(model, tmp_path / "minilm-2l")
    isolated_queries = encode_without_asym_st(path, QUERIES, REPO_ROOT)
    isolated_passages = encode_without_asym_st(path, PASSAGES, REPO_ROOT)
    # routes: documents and plain encode = the teacher; queries = the 2-layer tower
    np.testing.assert_allclose(isolated_passages["document"], teacher.encode(PASSAGES), atol=1e-5)
    np.testing.assert_allclose(isolated_passages["plain"], teacher.encode(PASSAGES), atol=1e-5)
    np.testing.assert_allclose(isolated_queries["query"], model.encode_query(QUERIES), atol=1e-5)
    assert not np.allclose(isolated_queries["query"], teacher.encode(QUERIES), atol=1e-2)
    # the untrained [0, 5] tower already lands near the teacher's space: each query is closest to its own passage
    similarity = isolated_queries["query"] @ isolated_passages["document"].T
    assert (similarity.argmax(axis=1) == np.arange(len(QUERIES))).all()
