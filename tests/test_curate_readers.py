"""Every reader on small files the tests make, and the damaged files that must go to the error list."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autarky.console import UserError
from autarky.data.curate import CurateConfig, curate
from autarky.data.formats import roff_to_text
from autarky.data.read import Source, SourceError, find_sources, read_source

RUSSIAN = (
    "Я помню чудное мгновенье: передо мной явилась ты, как мимолетное виденье, как гений чистой красоты."
)
ENGLISH = "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest."


def texts(path: Path, **options) -> list[str]:
    (source,), _, _ = find_sources([path])
    return [d.text for d in read_source(source, CurateConfig(**options).read_options)]


def docs(path: Path) -> list:
    (source,), _, _ = find_sources([path])
    return list(read_source(source, CurateConfig().read_options))


def test_plain_text_in_legacy_encodings(tmp_path):
    for encoding in ("cp1251", "koi8_r", "cp866"):
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes(RUSSIAN.encode(encoding))
        (doc,) = docs(path)
        assert doc.text == RUSSIAN and doc.meta["encoding"] == encoding


def test_jsonl_plain_gzip_and_zstd_with_fields(tmp_path):
    import zstandard

    lines = "\n".join(json.dumps({"body": f"{ENGLISH} {i}", "key": f"k{i}"}) for i in range(3)).encode()
    (tmp_path / "a.jsonl").write_bytes(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"):
        assert texts(tmp_path / name, text_field="body") == [f"{ENGLISH} {i}" for i in range(3)]
    found = list(
        read_source(
            find_sources([tmp_path / "a.jsonl"])[0][0],
            CurateConfig(text_field="body", id_field="key").read_options,
        )
    )
    assert [d.meta["source_id"] for d in found] == ["k0", "k1", "k2"]


def test_parquet_with_text_and_id_fields(tmp_path):
    pq.write_table(pa.table({"content": [ENGLISH, RUSSIAN], "doc": [7, 8]}), tmp_path / "t.parquet")
    assert texts(tmp_path / "t.parquet", text_field="content") == [ENGLISH, RUSSIAN]
    with pytest.raises(SourceError, match="no 'text' column"):
        texts(tmp_path / "t.parquet")


def test_html_keeps_the_article_and_drops_boilerplate(tmp_path):
    html = f"""<html><head><meta charset="windows-1251"><title>T</title><script>var x=1;</script></head><body>
    <nav><a href="/">Home</a> <a href="/about">About</a></nav>
    <div class="cookie-banner">We use cookies to improve your experience.</div>
    <main><h1>Заголовок</h1><p>{RUSSIAN}</p><pre>def f():
    return 1</pre></main>
    <footer>© 2024 Example Corp. All rights reserved.</footer></body></html>"""
    (tmp_path / "page.html").write_bytes(html.encode("cp1251"))
    (doc,) = docs(tmp_path / "page.html")
    assert RUSSIAN in doc.text and "Заголовок" in doc.text
    assert "def f():\n    return 1" in doc.text  # <pre> keeps its lines and indentation
    for junk in ("Home", "cookies", "rights reserved", "var x"):
        assert junk not in doc.text
    assert doc.meta["format"] == "html"


def make_pdf(text: str) -> bytes:
    """A one-page PDF with one line of Helvetica text, offsets computed so that the xref is right."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def test_pdf_and_docx(tmp_path):
    import docx

    (tmp_path / "a.pdf").write_bytes(make_pdf(ENGLISH))
    assert texts(tmp_path / "a.pdf") == [ENGLISH]
    document = docx.Document()
    document.add_paragraph(RUSSIAN)
    document.add_paragraph(ENGLISH)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "left", "right"
    document.save(tmp_path / "a.docx")
    assert texts(tmp_path / "a.docx") == [f"{RUSSIAN}\n\n{ENGLISH}\n\nleft | right"]


def test_fb2_in_cp1251_and_epub(tmp_path):
    fb2 = f"""<?xml version="1.0" encoding="windows-1251"?>
<FictionBook xmlns="http://www.gribuser.ru/xml/fictionbook/2.0"><description><title-info><book-title>Книга</book-title></title-info></description>
<body><title><p>Глава первая</p></title><section><p>{RUSSIAN}</p><poem><stanza><v>Строка стиха</v></stanza></poem></section></body>
<binary id="cover.jpg" content-type="image/jpeg">AAAA</binary></FictionBook>"""
    (tmp_path / "book.fb2").write_bytes(fb2.encode("cp1251"))
    (text,) = texts(tmp_path / "book.fb2")
    assert text.splitlines()[0] == "Глава первая" and RUSSIAN in text and "Строка стиха" in text
    assert "Книга" not in text and "AAAA" not in text  # metadata and images are not the text

    with zipfile.ZipFile(tmp_path / "book.epub", "w") as z:
        z.writestr("mimetype", "application/epub+zip")
        z.writestr(
            "META-INF/container.xml",
            '<container><rootfiles><rootfile full-path="OEBPS/c.opf"/></rootfiles></container>',
        )
        z.writestr(
            "OEBPS/c.opf",
            '<package><manifest><item id="a" href="one.xhtml"/><item id="b" href="two.xhtml"/></manifest>'
            '<spine><itemref idref="b"/><itemref idref="a"/></spine></package>',
        )
        z.writestr("OEBPS/one.xhtml", f"<html><body><p>{ENGLISH}</p></body></html>")
        z.writestr("OEBPS/two.xhtml", f"<html><body><p>{RUSSIAN}</p></body></html>")
    assert texts(tmp_path / "book.epub") == [f"{RUSSIAN}\n\n{ENGLISH}"]  # spine order, not file order


def test_man_page_roff(tmp_path):
    roff = r""".TH LS 1 "2024" "GNU" "User Commands"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
.B ls
lists \fIfiles\fR \(em sorted \(lqalphabetically\(rq.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with .
"""
    (tmp_path / "ls.1.gz").write_bytes(gzip.compress(roff.encode()))
    (text,) = texts(tmp_path / "ls.1.gz")
    assert "NAME\n\nls - list directory contents" in text
    assert 'ls\nlists files — sorted "alphabetically".' in text
    assert "-a, --all" in text and ".TH" not in text and "\\f" not in text
    assert roff_to_text(".SH A\ntext") == "A\n\ntext"


def test_warc_responses(tmp_path):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "crawl.warc.gz"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, ctype, body in [
            ("http://a.example/", "text/html; charset=utf-8", f"<html><body><p>{ENGLISH}</p></body></html>"),
            ("http://b.example/x.png", "image/png", "\x89PNG"),
            ("http://c.example/t.txt", "text/plain", RUSSIAN),
        ]:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(
                    url, "response", payload=io.BytesIO(body.encode()), http_headers=headers
                )
            )
    found = docs(path)
    assert [d.text for d in found] == [ENGLISH, RUSSIAN]
    assert [d.meta["url"] for d in found] == ["http://a.example/", "http://c.example/t.txt"]
    assert len({d.id for d in found}) == 2


def test_archives_zip_and_tar_with_members_named(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("docs/one.txt", ENGLISH)
        z.writestr("docs/two.md", RUSSIAN.encode("koi8_r"))
        z.writestr("docs/image.png", b"\x89PNG")
        z.writestr("__MACOSX/docs/._one.txt", b"junk")
    found = docs(tmp_path / "a.zip")
    assert [(d.source.rsplit("!", 1)[1], d.text) for d in found] == [
        ("docs/one.txt", ENGLISH),
        ("docs/two.md", RUSSIAN),
    ]
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as t:
        for name, data in (
            ("x/one.txt", ENGLISH.encode()),
            ("x/inner.zip", (tmp_path / "a.zip").read_bytes()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    found = docs(tmp_path / "b.tar.gz")
    assert [d.source.split("!", 1)[1] for d in found] == [
        "x/inner.zip!docs/one.txt",
        "x/inner.zip!docs/two.md",
        "x/one.txt",
    ]


def test_globs_and_tags(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text(ENGLISH)
    (tmp_path / "a" / "two.md").write_text(RUSSIAN)
    sources, _, _ = find_sources([tmp_path / "a" / "*.txt"], {"license": "CC-BY-4.0"})
    assert [Path(s.path).name for s in sources] == ["one.txt"]
    (doc,) = read_source(sources[0], CurateConfig().read_options)
    assert doc.tags == {"license": "CC-BY-4.0"}


def test_tags_per_source_override_the_run_tags(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "web").mkdir()
    (tmp_path / "books" / "one.txt").write_text(ENGLISH)
    (tmp_path / "web" / "two.txt").write_text(RUSSIAN)
    books, web = tmp_path / "books", tmp_path / "web"
    sources, _, _ = find_sources(
        [books, web], {"license": "internal"}, {str(books): {"license": "public-domain", "origin": "library"}}
    )
    by_name = {Path(s.path).name: dict(s.tags) for s in sources}
    assert by_name == {
        "one.txt": {"license": "public-domain", "origin": "library"},
        "two.txt": {"license": "internal"},
    }
    with pytest.raises(UserError, match="not among the sources"):
        find_sources([books], {}, {str(web): {"origin": "x"}})


def test_damaged_files_go_to_the_error_list_and_the_run_goes_on(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text(ENGLISH)
    (src / "truncated.txt.gz").write_bytes(gzip.compress(ENGLISH.encode() * 50)[:40])
    (src / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    (src / "junk.txt").write_bytes(bytes(range(256)) * 4)
    (src / "bad.docx").write_bytes(b"PK\x03\x04 not a zip")
    with zipfile.ZipFile(src / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", b"0" * (3 << 20))  # 3 MB of zeros in a few KB, over the 1 MB budget
    os.symlink(src / "loop-b.txt", src / "loop-a.txt")
    os.symlink(src / "loop-a.txt", src / "loop-b.txt")
    config = CurateConfig(near_dedup=False, min_budget_bytes=1 << 20)
    corpus = curate([src], tmp_path / "work", config=config, workers=1)
    m = corpus.metrics
    reasons = {Path(e["path"]).name: e["reason"] for e in m["errors"]}
    assert set(reasons) == {
        "truncated.txt.gz",
        "broken.pdf",
        "junk.txt",
        "bad.docx",
        "bomb.zip",
        "loop-a.txt",
        "loop-b.txt",
    }
    assert "truncated" in reasons["truncated.txt.gz"] and "binary" in reasons["junk.txt"]
    assert "bomb" in reasons["bomb.zip"] and "link" in reasons["loop-a.txt"]
    assert m["files_failed"] == 7 and m["documents_kept"] == 1
    assert m["documents_in"] == m["documents_kept"] + m["documents_dropped"]
    assert "could not be read (7)" in (corpus.path / "report.md").read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_an_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text(ENGLISH)
    (src / "secret.txt").write_text(ENGLISH + " secret")
    (src / "secret.txt").chmod(0)
    corpus = curate([src], tmp_path / "work", workers=1)
    assert [Path(e["path"]).name for e in corpus.metrics["errors"]] == ["secret.txt"]


def test_source_ids_differ_for_identical_files(tmp_path):
    (tmp_path / "a.txt").write_text(ENGLISH)
    (tmp_path / "b.txt").write_text(ENGLISH)
    sources, _, _ = find_sources([tmp_path])
    assert [s.copy for s in sources] == [0, 1]
    ids = [d.id for s in sources for d in read_source(s, CurateConfig().read_options)]
    assert len(set(ids)) == 2
    assert isinstance(sources[0], Source)


def test_roff_comments_end_every_line_they_are_on():
    roff = '.TH X 1\nfirst line \\" a comment\nsecond line\\" another\nthird \\c\nfourth \\" last\n'
    text = roff_to_text(roff)
    assert text.splitlines() == ["first line ", "second line", "third ", "fourth"]
    assert "comment" not in text and "another" not in text
    assert roff_to_text('\\e\\(dq quoted \\" gone') == '\\" quoted'  # an escape that makes \\" is no comment
