import pytest
import torch
from transformers import AutoModel

from asym_st.modeling.layers import find_layer_list, resolve_layers, truncate_transformer


@pytest.mark.parametrize(
    ("strategy", "n", "expected"),
    [
        ("first_last", 2, [0, 11]),
        ("first_last", 3, [0, 1, 11]),
        ("first_last", 1, [11]),
        ("first_k", 2, [0, 1]),
        ("first_k", 4, [0, 1, 2, 3]),
        ("evenly_spaced", 3, [0, 6, 11]),
        ("evenly_spaced", 12, list(range(12))),
    ],
)
def test_strategies(strategy, n, expected):
    assert resolve_layers(12, strategy, n) == expected


def test_explicit_layers_and_negative_indices():
    assert resolve_layers(6, layers=[0, 5]) == [0, 5]
    assert resolve_layers(6, layers=[0, -1]) == [0, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [0, 6]}, "out of range"),
        ({"layers": [0, -7]}, "out of range"),
        ({"layers": [1, 1]}, "duplicated"),
        ({"layers": [3, 1]}, "increasing"),
        ({"layers": []}, "at least one layer"),
        ({"strategy": "first_k", "num_layers": 0}, "at least one layer"),
        ({"strategy": "first_k", "num_layers": 7}, "exceeds"),
        ({"strategy": "middle"}, "Unknown layer strategy"),
    ],
)
def test_bad_layer_choices_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_layers(6, **kwargs)


def test_truncation_keeps_the_chosen_layers_and_reloads(tiny_teacher_path, tmp_path):
    teacher = AutoModel.from_pretrained(tiny_teacher_path)  # the Transformer saves the HF model in the root
    student = truncate_transformer(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4, "the teacher must not be modified"
    _, _, stack = find_layer_list(student)
    _, _, teacher_stack = find_layer_list(teacher)
    for kept, original in zip(stack, [teacher_stack[0], teacher_stack[3]], strict=True):
        for (name, a), (_, b) in zip(kept.state_dict().items(), original.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    student.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 2
    ids = torch.tensor([[2, 10, 11, 3]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).last_hidden_state, student.eval()(ids).last_hidden_state, atol=1e-6)
