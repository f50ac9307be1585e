"""Knowledge documents and the plain file formats a store keeps them in.

- ``*.jsonl``: FAQ entries ``{"id", "question", "answer", "tags"?}`` or generic documents
  ``{"id", "title", "text", "kind"?, "metadata"?, "tags"?}``.
- ``*.md``: a policy; ``# Title`` then ``## Section`` blocks, each section its own document ``<file>.<section>``.
- ``*.csv``: a product catalogue with ``sku,name,category,price_eur,unit,stock,allergens,description``.

Files named README* are documentation, not knowledge, and are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

Kind = Literal["faq", "policy", "product"]
KINDS: tuple[Kind, ...] = ("faq", "policy", "product")
DOC_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
PRODUCT_COLUMNS = ("sku", "name", "category", "price_eur", "unit", "stock", "allergens", "description")
CHUNK_WORDS = 120


class DocumentFormatError(ValueError):
    """A knowledge file that cannot be read; the message says which file and line."""


@dataclass(slots=True)
class SourceDocument:
    id: str
    kind: Kind
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    source: str = ""

    def content_hash(self) -> str:
        payload = orjson.dumps(
            [self.kind, self.title, self.text, self.metadata, sorted(self.tags)], option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(payload).hexdigest()

    def chunks(self) -> list[str]:
        """Texts to embed for search; the first is the most question-like form of the document."""
        if self.kind == "faq":
            question = str(self.metadata.get("question", self.title))
            return [question, f"{question}\n{self.metadata.get('answer', self.text)}"]
        if self.kind == "product":
            summary = f"{self.title}. {self.metadata.get('category', '')}. {self.metadata.get('description', '')}"
            return [self.title, summary.strip()]
        return [self.title, *(f"{self.title}\n{piece}" for piece in split_words(self.text, CHUNK_WORDS))]


def split_words(text: str, limit: int) -> Iterator[str]:
    """Paragraphs, with long ones cut into pieces of at most ``limit`` words (the embedder reads 256 tokens)."""
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        words = paragraph.split()
        for start in range(0, len(words), limit):
            yield " ".join(words[start : start + limit])


def check_id(doc_id: str, where: str) -> str:
    if not DOC_ID_PATTERN.match(doc_id):
        raise DocumentFormatError(f"{where}: document id {doc_id!r} must match {DOC_ID_PATTERN.pattern}")
    return doc_id


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "section"


def parse_files(paths: Iterable[Path]) -> list[SourceDocument]:
    """Every document in the given files and directories (recursively, in name order)."""
    documents: list[SourceDocument] = []
    for path in paths:
        if not path.exists():
            raise DocumentFormatError(f"{path}: no such file or directory")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.name.lower().startswith("readme"):
                continue
            documents.extend(parse_file(file))
    seen: dict[str, str] = {}
    for document in documents:
        if document.id in seen:
            raise DocumentFormatError(
                f"duplicate document id {document.id!r} in {seen[document.id]} and {document.source}"
            )
        seen[document.id] = document.source
    return documents


def parse_file(file: Path) -> list[SourceDocument]:
    text = file.read_text(encoding="utf-8")
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return parse_jsonl(text, str(file))
    if suffix in {".md", ".markdown"}:
        return parse_markdown(text, str(file), file.stem)
    if suffix == ".csv":
        return parse_products_csv(text, str(file))
    raise DocumentFormatError(f"{file}: unsupported file type {suffix!r} (use .jsonl, .md or .csv)")


def parse_jsonl(text: str, source: str) -> list[SourceDocument]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DocumentFormatError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(entry, dict):
            raise DocumentFormatError(f"{where}: each line must be a JSON object")
        documents.append(document_from_entry(entry, where, source))
    return documents


def document_from_entry(entry: dict[str, Any], where: str, source: str) -> SourceDocument:
    doc_id = check_id(str(entry.get("id", "")), where)
    tags = [str(tag) for tag in entry.get("tags", [])]
    if "question" in entry and "answer" in entry:
        question, answer = _required_text(entry, "question", where), _required_text(entry, "answer", where)
        return SourceDocument(doc_id, "faq", question, answer, {"question": question, "answer": answer}, tags, source)
    kind = entry.get("kind", "policy")
    if kind not in KINDS:
        raise DocumentFormatError(f"{where}: kind must be one of {KINDS}")
    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict):
        raise DocumentFormatError(f"{where}: metadata must be an object")
    title, body = _required_text(entry, "title", where), _required_text(entry, "text", where)
    return SourceDocument(doc_id, kind, title, body, metadata, tags, source)


def _required_text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DocumentFormatError(f"{where}: {key!r} must be a non-empty string")
    return value.strip()


def parse_markdown(text: str, source: str, stem: str) -> list[SourceDocument]:
    """A policy file: each ``## Section`` becomes ``policy-<file>.<section-slug>``."""
    title_match = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
    if title_match is None:
        raise DocumentFormatError(f"{source}: a policy file starts with a '# Title' line")
    policy_title = title_match.group(1).strip()
    parts = re.split(r"^##\s+(.+)$", text[title_match.end() :], flags=re.MULTILINE)
    documents = []
    intro = parts[0].strip()
    if intro:
        documents.append(_policy_section(stem, policy_title, "Overview", intro, source))
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        if body.strip():
            documents.append(_policy_section(stem, policy_title, heading.strip(), body.strip(), source))
    if not documents:
        raise DocumentFormatError(f"{source}: no sections found")
    return documents


def _policy_section(stem: str, policy_title: str, heading: str, body: str, source: str) -> SourceDocument:
    doc_id = check_id(f"policy-{slugify(stem)}.{slugify(heading)}", source)
    return SourceDocument(
        doc_id,
        "policy",
        f"{policy_title}: {heading}",
        body,
        {"policy": policy_title, "section": heading},
        [slugify(stem)],
        source,
    )


def parse_products_csv(text: str, source: str) -> list[SourceDocument]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in PRODUCT_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise DocumentFormatError(f"{source}: missing columns {missing}; expected {list(PRODUCT_COLUMNS)}")
    return [product_document(row, f"{source}:{number}", source) for number, row in enumerate(reader, start=2)]


def product_document(row: dict[str, str], where: str, source: str) -> SourceDocument:
    sku = check_id(row["sku"].strip(), where)
    try:
        price = round(float(row["price_eur"]), 2)
        stock = int(row["stock"])
    except ValueError as exc:
        raise DocumentFormatError(f"{where}: price_eur and stock must be numbers ({exc})") from exc
    allergens = [item.strip() for item in row["allergens"].split(";") if item.strip()]
    name, unit = row["name"].strip(), row["unit"].strip()
    metadata: dict[str, Any] = {
        "sku": sku,
        "category": row["category"].strip(),
        "price_eur": price,
        "unit": unit,
        "stock": stock,
        "allergens": allergens,
        "description": row["description"].strip(),
    }
    return SourceDocument(
        f"product-{sku.lower()}",
        "product",
        name,
        describe_product(name, metadata),
        metadata,
        [slugify(metadata["category"])],
        source,
    )


def describe_product(name: str, metadata: dict[str, Any]) -> str:
    stock = int(metadata["stock"])
    availability = f"in stock ({stock} available)" if stock > 0 else "currently out of stock"
    allergens = ", ".join(metadata["allergens"]) or "none listed"
    return (
        f"{name} ({metadata['unit']}) costs €{metadata['price_eur']:.2f} and is {availability}. "
        f"Category: {metadata['category']}. Allergens: {allergens}. {metadata['description']}"
    ).strip()
