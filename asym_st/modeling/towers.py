"""Build, assemble and take apart asymmetric sentence-transformers models.

An asymmetric model is a plain :class:`~sentence_transformers.SentenceTransformer` whose only top-level module is
a built-in :class:`~sentence_transformers.sentence_transformer.modules.Router` with two routes:

* ``"query"``: the query tower, e.g. ``[Transformer(2 layers), Pooling, Normalize]``;
* ``"document"``: the document tower, e.g. the teacher's ``[Transformer(6 layers), Pooling, Normalize]``.

Each route holds a complete pipeline, so each tower can be pulled out as a normal model, and the document
route's fingerprint equals the teacher's own. ``encode_query`` runs the query route; ``encode_document`` and
plain ``encode`` run the document route (the Router's default). Only built-in modules are used, so saved models
load with ``SentenceTransformer(path)`` without asym-st installed.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Router, Transformer
from sentence_transformers.util import load_file_path
from torch import nn

from asym_st.modeling.config import AsymmetricModelRecord, QueryTowerConfig
from asym_st.modeling.fingerprint import fingerprint_modules
from asym_st.modeling.layers import num_transformer_layers, resolve_layers, truncate_transformer

__all__ = [
    "QUERY_ROUTE",
    "DOCUMENT_ROUTE",
    "IncompatibleTowersError",
    "NotASentenceTransformerError",
    "load_sentence_transformer",
    "build_asymmetric_model",
    "assemble_asymmetric_model",
    "extract_tower",
    "tower_modules",
    "is_asymmetric",
    "freeze_tower",
    "tower_embedding_dimension",
]

logger = logging.getLogger(__name__)

QUERY_ROUTE = "query"
DOCUMENT_ROUTE = "document"


class NotASentenceTransformerError(ValueError):
    """The given teacher is not a sentence-transformers model (no ``modules.json``)."""


class IncompatibleTowersError(ValueError):
    """The two towers cannot form one model as asked (widths or tokenizers differ)."""


# --------------------------------------------------------------------------------------------------- loading


def _has_modules_json(name_or_path: str, revision: str | None) -> bool:
    if os.path.isdir(name_or_path):
        return os.path.isfile(os.path.join(name_or_path, "modules.json"))
    # Same lookup sentence-transformers uses; resolves Hub ids through HF_HUB_CACHE / HF_HUB_OFFLINE.
    return load_file_path(name_or_path, "modules.json", revision=revision) is not None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else (absolute, relative, nested) is meant as a local folder.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def load_sentence_transformer(
    model: str | os.PathLike | SentenceTransformer,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
) -> SentenceTransformer:
    """Load a sentence-transformers model by Hub id or path, refusing anything that is not one.

    Plain ``SentenceTransformer("bert-base-uncased")`` silently invents a mean-pooling model; a teacher must be a
    real sentence-transformers model, so we check for ``modules.json`` first and name the problem.
    """
    if isinstance(model, SentenceTransformer):
        return model
    name = os.fspath(model)
    if not os.path.exists(name) and _looks_like_path(name):
        raise FileNotFoundError(f"Model folder {name!r} does not exist.")
    try:
        found = _has_modules_json(name, revision)
    except Exception as error:  # the Hub client raises several types for "not found" / "offline and not cached"
        raise NotASentenceTransformerError(
            f"Could not find {name!r} locally or in the Hub cache ({type(error).__name__}: {error}). "
            "Offline, set HF_HUB_CACHE to a cache that holds it, or pass a local folder."
        ) from error
    if not found:
        offline = " (or it is not in the local Hub cache and HF_HUB_OFFLINE is set)" if _offline() else ""
        raise NotASentenceTransformerError(
            f"{name!r} is not a sentence-transformers model: it has no modules.json{offline}. Use a sentence-transformers "
            "checkpoint as teacher, or wrap the transformer first: SentenceTransformer(modules=[Transformer(...), "
            "Pooling(...)]) and save it."
        )
    return SentenceTransformer(name, revision=revision, trust_remote_code=trust_remote_code, device=device)


# --------------------------------------------------------------------------------------------------- inspecting


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or similar ``.module``) wrapper: under ``torchrun`` the
    Trainer hands losses the wrapped model."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def _router(model: SentenceTransformer) -> Router | None:
    model = unwrap_model(model)
    first = model[0] if len(model) else None
    return first if isinstance(first, Router) else None


def is_asymmetric(model: SentenceTransformer) -> bool:
    """True if ``model`` routes queries and documents through different towers."""
    router = _router(model)
    return router is not None and {QUERY_ROUTE, DOCUMENT_ROUTE} <= set(router.sub_modules)


def tower_modules(model: SentenceTransformer, route: str) -> list[nn.Module]:
    """The ordered modules that ``route`` (``"query"`` or ``"document"``) runs.

    A symmetric model is its own query and document tower. For a Router model, modules after the Router (shared
    by both routes) are appended.
    """
    if route not in (QUERY_ROUTE, DOCUMENT_ROUTE):
        raise ValueError(f"route must be 'query' or 'document', got {route!r}.")
    router = _router(model)
    if router is None:
        return list(unwrap_model(model))
    if route not in router.sub_modules:
        raise ValueError(
            f"This Router model has no {route!r} route (routes: {sorted(router.sub_modules)}). "
            "asym-st needs a 'document' route for the document tower and a 'query' route for the query tower."
        )
    return list(router.sub_modules[route]) + list(unwrap_model(model))[1:]


def tower_embedding_dimension(modules: Sequence[nn.Module]) -> int:
    """Output width of a tower: the last module that reports a dimension."""
    for module in reversed(list(modules)):
        for getter in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
            if hasattr(module, getter) and (dim := getattr(module, getter)()) is not None:
                return int(dim)
        if isinstance(module, Dense):
            return module.get_embedding_dimension()
    raise ValueError("Could not determine the tower's output dimension.")


def freeze_tower(model: SentenceTransformer, route: str, frozen: bool = True) -> None:
    """Set ``requires_grad`` on every parameter of one tower (the other tower is untouched)."""
    for module in tower_modules(model, route):
        for parameter in module.parameters():
            parameter.requires_grad_(not frozen)


def _normalizes(modules: Sequence[nn.Module]) -> bool:
    return any(isinstance(m, Normalize) for m in modules)


def _input_transformer(modules: Sequence[nn.Module]) -> Transformer | None:
    return modules[0] if modules and isinstance(modules[0], Transformer) else None


# --------------------------------------------------------------------------------------------------- tokenizers


def _as_transformers_tokenizer(tokenizer):
    # StaticEmbedding keeps a raw `tokenizers.Tokenizer`; wrap it so that both kinds compare the same way.
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer) if isinstance(tokenizer, Tokenizer) else tokenizer


def tokenizer_differences(query_modules: Sequence[nn.Module], document_modules: Sequence[nn.Module]) -> list[str]:
    """Human-readable differences between the towers' tokenizers (empty when they agree)."""
    query_tok = _as_transformers_tokenizer(getattr(query_modules[0], "tokenizer", None))
    doc_tok = _as_transformers_tokenizer(getattr(document_modules[0], "tokenizer", None))
    if query_tok is None or doc_tok is None:
        missing = "query" if query_tok is None else "document"
        return [f"the {missing} tower has no tokenizer"]
    differences = []
    if len(query_tok) != len(doc_tok):
        differences.append(f"vocabulary sizes differ ({len(query_tok)} vs {len(doc_tok)})")
    elif query_tok.get_vocab() != doc_tok.get_vocab():
        differences.append("vocabularies differ (same size, different token ids)")
    probe = "Hello WORLD, Ünïcode?"
    if query_tok.tokenize(probe) != doc_tok.tokenize(probe):
        differences.append(
            f"they split text differently ({query_tok.tokenize(probe)[:6]} vs {doc_tok.tokenize(probe)[:6]}), "
            "e.g. casing or normalisation"
        )
    return differences


def _check_tokenizers(query_modules, document_modules, allow_different: bool) -> None:
    differences = tokenizer_differences(query_modules, document_modules)
    if not differences:
        return
    if any("no tokenizer" in d for d in differences) and not allow_different:
        raise IncompatibleTowersError(f"Incompatible towers: {differences[0]}.")
    if not allow_different:
        raise IncompatibleTowersError(
            "The query and document towers use different tokenizers: "
            + "; ".join(differences)
            + ". Each route tokenises its own input, so this can work, but token-level losses (MD2PR) and "
            "vocabulary-sharing initialisations cannot. Pass allow_different_tokenizers=True to accept it."
        )
    logger.warning("Query and document tokenizers differ: %s", "; ".join(differences))


# --------------------------------------------------------------------------------------------------- building


def _truncated_teacher_tower(teacher_modules: list[nn.Module], config: QueryTowerConfig) -> tuple[list, list[int]]:
    transformer = _input_transformer(teacher_modules)
    if transformer is None:
        raise ValueError(
            f"The teacher's first module is {type(teacher_modules[0]).__name__}, not a Transformer, so it has no "
            "layers to keep. Give QueryTowerConfig(encoder=...) to use another query encoder."
        )
    depth = num_transformer_layers(transformer.auto_model)
    layers = resolve_layers(depth, config.strategy, config.num_layers, config.layers)
    query_transformer = copy.deepcopy(transformer)
    truncate_transformer(query_transformer.auto_model, layers, inplace=True)
    rest = [copy.deepcopy(m) for m in teacher_modules[1:]]
    return [query_transformer, *rest], layers


def _encoder_tower(config: QueryTowerConfig, teacher_modules: list[nn.Module], trust_remote_code: bool) -> list:
    """Query tower from another checkpoint: its encoder + the teacher's pooling, a projection, normalisation."""
    name = config.encoder
    if _has_modules_json(name, None):
        encoder_model = SentenceTransformer(name, trust_remote_code=trust_remote_code)
        modules = [m for m in tower_modules(encoder_model, QUERY_ROUTE) if not isinstance(m, Normalize)]
    else:
        transformer = Transformer(
            name, model_kwargs={"trust_remote_code": trust_remote_code} if trust_remote_code else None
        )
        teacher_pooling = next((m for m in teacher_modules if isinstance(m, Pooling)), None)
        mode = teacher_pooling.pooling_mode if teacher_pooling is not None else "mean"
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=mode)]
    if config.truncate_encoder:
        first = _input_transformer(modules)
        if first is None:
            raise ValueError(f"truncate_encoder=True, but {name!r} does not start with a Transformer module.")
        depth = num_transformer_layers(first.auto_model)
        truncate_transformer(
            first.auto_model, resolve_layers(depth, config.strategy, config.num_layers, config.layers), inplace=True
        )
    target_dim = tower_embedding_dimension(teacher_modules)
    modules = _project_if_needed(modules, target_dim)
    if _normalizes(teacher_modules):
        modules.append(Normalize())
    return modules


def _project_if_needed(modules: list[nn.Module], target_dim: int) -> list[nn.Module]:
    width = tower_embedding_dimension(modules)
    if width == target_dim:
        return modules
    # Identity-free linear map; trained later (alignment / distillation). No activation keeps it a plain projection.
    return [*modules, Dense(width, target_dim, bias=True, activation_function=nn.Identity())]


def build_asymmetric_model(
    teacher: str | os.PathLike | SentenceTransformer,
    config: QueryTowerConfig | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    freeze_document_tower: bool = True,
    device: str | None = None,
) -> SentenceTransformer:
    """Build an asymmetric model: the teacher as document tower and a small query tower.

    Args:
        teacher: a sentence-transformers model (Hub id, path or loaded model). If it is itself asymmetric, its
            document route is the teacher.
        config: how to make the query tower; defaults to QED's ``first_last`` with 2 layers (``[0, L-1]``).
        revision: the teacher's Hub revision.
        trust_remote_code: allow custom code in the teacher / encoder (off by default).
        freeze_document_tower: turn off gradients in the document tower (the index stays valid).
        device: where to load the teacher.

    Returns:
        A ``SentenceTransformer`` with a ``Router`` whose ``query`` route is the small tower. Its provenance is in
        ``model.asym_st_record`` and is written by :func:`asym_st.save_asymmetric_model`.

    Example::

        from asym_st import QueryTowerConfig, build_asymmetric_model

        model = build_asymmetric_model("sentence-transformers/all-MiniLM-L6-v2", QueryTowerConfig(layers=[0, 5]))
        q = model.encode_query(["what is asymmetric retrieval?"])
        d = model.encode_document(["A small query encoder shares the document encoder's space."])
        print(model.similarity(q, d))
    """
    config = config or QueryTowerConfig()
    teacher_model = load_sentence_transformer(
        teacher, revision=revision, trust_remote_code=trust_remote_code, device=device
    )
    document_modules = tower_modules(teacher_model, DOCUMENT_ROUTE)
    if config.encoder is None:
        query_modules, layers = _truncated_teacher_tower(document_modules, config)
    else:
        query_modules, layers = _encoder_tower(config, document_modules, trust_remote_code), config.layers
        _check_tokenizers(query_modules, document_modules, config.allow_different_tokenizers)
    if config.max_seq_length is not None and hasattr(query_modules[0], "max_seq_length"):
        query_modules[0].max_seq_length = config.max_seq_length

    model = _router_model(query_modules, document_modules, teacher_model)
    if freeze_document_tower:
        freeze_tower(model, DOCUMENT_ROUTE)
    teacher_transformer = _input_transformer(document_modules)
    model.asym_st_record = AsymmetricModelRecord(
        teacher=_model_id(teacher, teacher_model),
        teacher_revision=revision or teacher_model.model_card_data.base_model_revision,
        query_layers=layers,
        teacher_num_layers=num_transformer_layers(teacher_transformer.auto_model) if teacher_transformer else None,
        layer_strategy=config.strategy if config.encoder is None or config.truncate_encoder else None,
        query_encoder=config.encoder,
        document_tower_fingerprint=fingerprint_modules(document_modules),
        document_tower_frozen=freeze_document_tower,
    )
    return model


def _model_id(given: str | os.PathLike | SentenceTransformer, loaded: SentenceTransformer) -> str | None:
    if not isinstance(given, SentenceTransformer):
        return os.fspath(given)
    return loaded.model_card_data.base_model or getattr(loaded, "_asym_st_source", None)


def _router_model(query_modules: list, document_modules: list, like: SentenceTransformer) -> SentenceTransformer:
    router = Router.for_query_document(query_modules=query_modules, document_modules=document_modules)
    model = SentenceTransformer(
        modules=[router],
        device=str(like.device),
        prompts=dict(like.prompts),
        default_prompt_name=like.default_prompt_name,
        similarity_fn_name=like.similarity_fn_name,
    )
    model.model_card_data.base_model = like.model_card_data.base_model
    model.model_card_data.base_model_revision = like.model_card_data.base_model_revision
    return model


def assemble_asymmetric_model(
    query_tower: str | os.PathLike | SentenceTransformer,
    document_tower: str | os.PathLike | SentenceTransformer,
    *,
    add_projection: bool = False,
    allow_different_tokenizers: bool = False,
    freeze_document_tower: bool = True,
) -> SentenceTransformer:
    """Put two existing towers together into one asymmetric model.

    Args:
        query_tower: a sentence-transformers model (id, path or object) used for queries; if asymmetric, its
            query route is used.
        document_tower: the model used for documents; if asymmetric, its document route is used.
        add_projection: when the widths differ, append a trainable ``Dense`` to the query tower instead of failing.
        allow_different_tokenizers: accept towers whose tokenizers differ.
        freeze_document_tower: turn off gradients in the document tower.

    Raises:
        IncompatibleTowersError: the widths differ and ``add_projection`` is off, or the tokenizers differ and
            ``allow_different_tokenizers`` is off.
    """
    query_model = load_sentence_transformer(query_tower)
    document_model = load_sentence_transformer(document_tower)
    query_modules = [copy.deepcopy(m) for m in tower_modules(query_model, QUERY_ROUTE)]
    document_modules = [copy.deepcopy(m) for m in tower_modules(document_model, DOCUMENT_ROUTE)]
    query_dim, document_dim = tower_embedding_dimension(query_modules), tower_embedding_dimension(document_modules)
    if query_dim != document_dim:
        if not add_projection:
            raise IncompatibleTowersError(
                f"The query tower outputs {query_dim} dimensions but the document tower outputs {document_dim}. "
                f"Pass add_projection=True to append a trainable Dense({query_dim} -> {document_dim}) to the query "
                "tower, or add one yourself: modules.append(Dense(in_features, out_features, "
                "activation_function=nn.Identity()))."
            )
        trailing_normalize = _normalizes(query_modules)
        query_modules = [m for m in query_modules if not isinstance(m, Normalize)]
        query_modules = _project_if_needed(query_modules, document_dim)
        if trailing_normalize:
            query_modules.append(Normalize())
    if _normalizes(query_modules) != _normalizes(document_modules):
        logger.warning("Only one tower normalises its embeddings; cosine and dot-product rankings will differ.")
    _check_tokenizers(query_modules, document_modules, allow_different_tokenizers)
    model = _router_model(query_modules, document_modules, document_model)
    if freeze_document_tower:
        freeze_tower(model, DOCUMENT_ROUTE)
    model.asym_st_record = AsymmetricModelRecord(
        teacher=_model_id(document_tower, document_model),
        teacher_revision=document_model.model_card_data.base_model_revision,
        query_encoder=_model_id(query_tower, query_model),
        document_tower_fingerprint=fingerprint_modules(document_modules),
        document_tower_frozen=freeze_document_tower,
    )
    return model


def extract_tower(model: SentenceTransformer, route: str, copy_modules: bool = True) -> SentenceTransformer:
    """One tower of an asymmetric model as a normal, standalone ``SentenceTransformer``.

    The result keeps the model's prompts and similarity function, so ``extract_tower(m, "query").encode_query(x)``
    equals ``m.encode_query(x)``.
    """
    modules = tower_modules(model, route)
    if copy_modules:
        modules = [copy.deepcopy(m) for m in modules]
    tower = SentenceTransformer(
        modules=modules,
        device=str(model.device),
        prompts=dict(model.prompts),
        default_prompt_name=model.default_prompt_name,
        similarity_fn_name=model.similarity_fn_name,
    )
    tower.model_card_data.base_model = model.model_card_data.base_model
    return tower
