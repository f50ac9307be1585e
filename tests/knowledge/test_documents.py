"""The plain knowledge file formats, the bundled sample, and clear errors for broken files."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpline.knowledge.documents import DocumentFormatError, parse_files
from tests.conftest import SAMPLE_KB


def test_sample_store_has_the_promised_content() -> None:
    documents = parse_files([SAMPLE_KB])
    by_kind: dict[str, list[str]] = {}
    for document in documents:
        by_kind.setdefault(document.kind, []).append(document.id)
    assert len(by_kind["faq"]) >= 60
    assert len(by_kind["product"]) >= 200
    policies = {doc.metadata["policy"] for doc in documents if doc.kind == "policy"}
    assert {"Delivery policy", "Returns and refunds policy", "Payment policy", "Privacy policy"} <= policies
    products = [doc for doc in documents if doc.kind == "product"]
    assert all({"price_eur", "stock", "allergens", "category"} <= set(doc.metadata) for doc in products)
    assert any(doc.title == "Fairtrade Bananas" for doc in products)
    assert all(doc.source and not doc.source.lower().endswith("readme.md") for doc in documents)


def test_formats_parse_into_documents(tmp_path: Path) -> None:
    (tmp_path / "faq.jsonl").write_text(
        '{"id": "faq-a", "question": "Q?", "answer": "A.", "tags": ["x"]}\n\n'
        '{"id": "doc-b", "title": "Note", "text": "Body", "kind": "policy", "metadata": {"k": 1}}\n',
        encoding="utf-8",
    )
    (tmp_path / "terms.md").write_text(
        "# Terms\n\nIntro text.\n\n## Cancel orders\n\nYou can cancel.\n", encoding="utf-8"
    )
    (tmp_path / "p.csv").write_text(
        "sku,name,category,price_eur,unit,stock,allergens,description\n"
        'X-1,"Oat Milk, Barista",Dairy & Eggs,1.5,1 l,0,oats;gluten,"Creamy, foamy"\n',
        encoding="utf-8",
    )
    documents = {doc.id: doc for doc in parse_files([tmp_path])}
    assert set(documents) == {"faq-a", "doc-b", "policy-terms.overview", "policy-terms.cancel-orders", "product-x-1"}
    assert documents["faq-a"].kind == "faq"
    assert documents["faq-a"].tags == ["x"]
    assert documents["policy-terms.cancel-orders"].title == "Terms: Cancel orders"
    product = documents["product-x-1"]
    assert product.metadata["allergens"] == ["oats", "gluten"]
    assert "out of stock" in product.text
    assert "€1.50" in product.text


def test_content_hash_changes_with_content_only(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "faq-a", "question": "Q?", "answer": "A."}\n', encoding="utf-8")
    first = parse_files([tmp_path])[0].content_hash()
    assert parse_files([tmp_path])[0].content_hash() == first
    (tmp_path / "a.jsonl").write_text('{"id": "faq-a", "question": "Q?", "answer": "B."}\n', encoding="utf-8")
    assert parse_files([tmp_path])[0].content_hash() != first


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", "{not json}\n", "bad.jsonl:1: not valid JSON"),
        ("bad.jsonl", '{"id": "faq-a", "question": "", "answer": "x"}\n', "'question' must be a non-empty string"),
        ("bad.jsonl", '{"id": "../etc", "title": "t", "text": "x"}\n', "document id"),
        ("bad.jsonl", '{"id": "a", "title": "t", "text": "x", "kind": "poem"}\n', "kind must be one of"),
        ("bad.md", "no title here\n", "starts with a '# Title'"),
        ("bad.csv", "sku,name\nX,Y\n", "missing columns"),
        ("bad.csv", "sku,name,category,price_eur,unit,stock,allergens,description\nX,Y,C,cheap,1,1,,d\n", "numbers"),
        ("bad.txt", "hello", "unsupported file type"),
    ],
)
def test_broken_files_are_refused_with_the_place(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DocumentFormatError, match=message.replace("(", r"\(").replace("'", "'")):
        parse_files([tmp_path])


def test_duplicate_ids_and_missing_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "faq-a", "question": "Q?", "answer": "A."}\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"id": "faq-a", "question": "Q2?", "answer": "B."}\n', encoding="utf-8")
    with pytest.raises(DocumentFormatError, match="duplicate document id 'faq-a'"):
        parse_files([tmp_path])
    with pytest.raises(DocumentFormatError, match="no such file"):
        parse_files([tmp_path / "missing"])
