"""BibTeX for the model cards: sentence-transformers and the distillation methods asym-st implements.

Entries are keyed by the method name a training pipeline writes into ``training_config.json`` (``"method"``); a
pipeline may also store its own ``"citation"`` there, which the card prefers. A method without an entry here is
cited by nobody rather than by an invented reference.
"""

from __future__ import annotations

__all__ = ["SENTENCE_TRANSFORMERS_BIBTEX", "METHOD_BIBTEX", "method_citation", "normalise_method"]

SENTENCE_TRANSFORMERS_BIBTEX = """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""

METHOD_BIBTEX: dict[str, str] = {
    "QED": """@inproceedings{wang2023query,
    title = {Query Encoder Distillation via Embedding Alignment is a Strong Baseline Method to Boost Dense Retriever Online Efficiency},
    author = {Wang, Yuxuan and Lyu, Hong},
    booktitle = {Proceedings of The Fourth Workshop on Simple and Efficient Natural Language Processing (SustaiNLP)},
    year = {2023},
    url = {https://arxiv.org/abs/2306.11550}
}""",
    "EmbedDistill": """@misc{kim2023embeddistill,
    title = {EmbedDistill: A Geometric Knowledge Distillation for Information Retrieval},
    author = {Kim, Seungyeon and Rawat, Ankit Singh and Zaheer, Manzil and Jayasumana, Sadeep and Sadhanala, Veeranjaneyulu and Jitkrittum, Wittawat and Menon, Aditya Krishna and Fergus, Rob and Kumar, Sanjiv},
    year = {2023},
    eprint = {2301.12005},
    archivePrefix = {arXiv},
    url = {https://arxiv.org/abs/2301.12005}
}""",
    "TAS-B": """@inproceedings{hofstaetter2021tasb,
    title = {Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling},
    author = {Hofst{\\"a}tter, Sebastian and Lin, Sheng-Chieh and Yang, Jheng-Hong and Lin, Jimmy and Hanbury, Allan},
    booktitle = {Proceedings of the 44th International ACM SIGIR Conference on Research and Development in Information Retrieval},
    year = {2021},
    url = {https://arxiv.org/abs/2104.06967}
}""",
    "MD2PR": """@misc{li2023md2pr,
    title = {MD2PR: A Multi-level Distillation based Dense Passage Retrieval Model},
    author = {Li, Haifeng and Hai, Mo and Tang, Dong},
    year = {2023},
    eprint = {2312.16821},
    archivePrefix = {arXiv},
    url = {https://arxiv.org/abs/2312.16821}
}""",
    "DAFT": """@misc{leonhardt2022daft,
    title = {Distribution-Aligned Fine-Tuning for Efficient Neural Retrieval},
    author = {Leonhardt, Jurek and Jahnke, Marcel and Anand, Avishek},
    year = {2022},
    eprint = {2211.04942},
    archivePrefix = {arXiv},
    url = {https://arxiv.org/abs/2211.04942}
}""",
}

_ALIASES = {"tasb": "TAS-B", "tas-balanced": "TAS-B", "tas_b": "TAS-B", "embed_distill": "EmbedDistill"}


def normalise_method(method: str | None) -> str | None:
    """The registry's spelling of a method name (``"qed"`` -> ``"QED"``), or the name as given if unknown."""
    if not method:
        return None
    lowered = method.strip().lower()
    for name in METHOD_BIBTEX:
        if name.lower() == lowered:
            return name
    return _ALIASES.get(lowered, method.strip())


def method_citation(method: str | None) -> str | None:
    """BibTeX of a method's paper, or ``None`` when asym-st has no verified reference for it."""
    name = normalise_method(method)
    return METHOD_BIBTEX.get(name) if name else None
