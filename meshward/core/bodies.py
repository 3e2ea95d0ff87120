"""Request parts turned into fields: query parameters and decoded bodies.

The one place that reads query strings and bodies, shared by the threat detectors (which scan
every leaf value and key) and by allowlist learning (which learns the body's shape). Pure and
bounded: every function caps what it reads and says so (`truncated` / `partial`) instead of
raising, whatever the input.
"""

from __future__ import annotations

import binascii
import itertools
import json
import re
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, unquote_plus
from xml.parsers import expat

import orjson

from meshward.core.observation import whole
from meshward.core.values import classify_leaf

Leaf = str | int | float | bool | None

KINDS = ("json", "form", "multipart", "xml", "text", "binary", "empty", "invalid")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_BOUNDARY = re.compile(r"""boundary=(?:"([^"]{1,200})"|([^\s;,]{1,200}))""", re.IGNORECASE)
# name and filename, also in RFC 2231/5987 form (filename*=UTF-8''%e2%82%ac, continuations
# filename*0*=...; filename*1=...), which Werkzeug, aiohttp and Go's mime package decode
_DISPOSITION_PARAM = re.compile(
    r"""\b(name|filename)(\*\d{1,3})?(\*)?\s*=\s*(?:"((?:[^"\\]|\\.){0,1000})"|([^\s;]{0,1000}))""",
    re.IGNORECASE,
)
_CHARSET = re.compile(r""";\s*charset\s*=\s*"?([^\s;",]{1,40})""", re.IGNORECASE)
_UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_PART_HEADER_LIMIT = 8192  # bytes of headers read per multipart part


class DecodedBody:
    """A body as fields: `fields` hold leaf values by path, `keys` the object keys by parent.

    A JSON body keeps its parsed document and walks it only for what is asked: `shape()` (what
    the allowlist reads on every request) is a cheaper walk than `fields` and `keys` (read by the
    threat detectors only when their pre-filter flags the body). Both walks apply the same limits,
    so `partial` is the same whichever ran.
    """

    __slots__ = (
        "_doc",
        "_fields",
        "_keys",
        "_mixed",
        "_partial",
        "_shape",
        "_typed",
        "kind",
        "max_depth",
        "max_fields",
    )

    def __init__(
        self,
        kind: str,
        fields: list[tuple[str, Leaf]] | None = None,
        keys: list[tuple[str, str]] | None = None,
        partial: bool = False,
    ) -> None:
        self.kind = kind  # one of KINDS
        self._fields = fields if fields is not None else []
        self._keys = keys if keys is not None else []
        self._partial: bool | None = partial  # None: a walk still has to tell
        self._shape: dict[str, str] | None = None
        self._mixed: set[tuple[str, str]] = set()
        self._typed: set[tuple[str, str]] = set()  # (path, class) of JSON numbers, booleans, null
        self._doc: object = None
        self.max_depth = 64
        self.max_fields = 4096

    @classmethod
    def json(cls, doc: object, max_depth: int, max_fields: int) -> DecodedBody:
        out = cls("json")
        out._doc, out._fields, out._keys, out._partial = doc, None, None, None  # type: ignore[assignment]
        out.max_depth, out.max_fields = min(max_depth, MAX_WALK_DEPTH), max_fields
        return out

    @property
    def fields(self) -> list[tuple[str, Leaf]]:
        if self._fields is None:
            if self._doc is _LEFT_BEHIND:
                raise ValueError("the fields of a pickled body that were not walked before")
            self._fields, self._keys = [], []
            self._partial = _walk_json(self, fields=self._fields, keys=self._keys)
        return self._fields

    @property
    def keys(self) -> list[tuple[str, str]]:
        if self._keys is None:
            self.fields  # noqa: B018  (one walk fills both)
        assert self._keys is not None
        return self._keys

    @property
    def partial(self) -> bool:
        """A limit (bytes, depth, fields) cut what was decoded."""
        if self._partial is None:
            self.shape()
        return bool(self._partial)

    @partial.setter
    def partial(self, value: bool) -> None:
        self._partial = value

    def shape(self) -> dict[str, str]:
        """Value class of the first leaf of each generalised path."""
        if self._shape is None:
            shape: dict[str, str] = {}
            if self._fields is None:
                self._partial = _walk_json(self, shape=shape, mixed=self._mixed, typed=self._typed)
            else:
                for path, leaf in self._fields:
                    cls = classify_leaf(leaf)
                    if shape.setdefault(path, cls) != cls:
                        self._mixed.add((path, cls))
                    if type(leaf) is not str:
                        self._typed.add((path, cls))
            self._shape = shape
        return self._shape

    def leaf_classes(self) -> Iterable[tuple[str, str]]:
        """Every distinct (generalised path, value class) pair of the leaves: a later array
        element whose value is of another class than the first's is seen too."""
        shape = self.shape()
        return itertools.chain(shape.items(), sorted(self._mixed)) if self._mixed else shape.items()

    def typed(self) -> set[tuple[str, str]]:
        """The (path, class) pairs of `leaf_classes` that a JSON number, boolean or null gave,
        not a string: checked strictly (values.covered_strictly)."""
        self.shape()
        return self._typed

    def __repr__(self) -> str:
        return f"DecodedBody({self.kind!r}, partial={self.partial})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as what learning and scoring read (the ingest worker hands decoded bodies to
        serve's loop): the kind, the shape (walked now if it was not) and the fields if they
        were walked. A JSON document stays behind, so the copy's `fields` cannot be walked
        later: it raises ValueError rather than answer empty."""
        self.shape()
        state = (self._partial, self._shape, self._mixed, self._typed, self.max_depth)
        return _unpickled, (self.kind, self._fields, self._keys, *state, self.max_fields)


_LEFT_BEHIND = object()  # the JSON document of a pickled body (see DecodedBody.__reduce__)


def _unpickled(
    kind: str,
    fields: list[tuple[str, Leaf]] | None,
    keys: list[tuple[str, str]] | None,
    partial: bool,
    shape: dict[str, str],
    mixed: set[tuple[str, str]],
    typed: set[tuple[str, str]],
    max_depth: int,
    max_fields: int,
) -> DecodedBody:
    body = DecodedBody(kind, fields, keys, partial)
    if fields is None:
        body._fields, body._doc = None, _LEFT_BEHIND  # type: ignore[assignment]
    body._shape, body._mixed, body._typed = shape, mixed, typed
    body.max_depth, body.max_fields = max_depth, max_fields
    return body


def parse_query(
    query: str, max_params: int = 1024, encoding: str = "utf-8"
) -> tuple[list[tuple[str, str]], bool]:
    """Decoded (name, value) pairs of a query or form string, and whether max_params cut it.

    urllib.parse semantics: `&` separates, `+` is a space, blank values are kept, empty pieces
    are skipped; percent escapes are bytes in `encoding`. Splitting stops after max_params
    pieces, so a million parameters cost no more than max_params.
    """
    if not query:
        return [], False
    pieces = query.split("&", max_params)
    truncated = len(pieces) > max_params
    if truncated:
        pieces = pieces[:max_params]
    out: list[tuple[str, str]] = []
    for piece in pieces:
        if not piece:
            continue
        name, _, value = piece.partition("=")
        out.append((_unquote(name, encoding), _unquote(value, encoding)))
    return out, truncated


def _unquote(text: str, encoding: str = "utf-8") -> str:
    if "%" not in text and "+" not in text:
        return text
    return unquote_plus(text, encoding=encoding, errors="replace")


def decode_form(
    data: bytes, max_fields: int = 4096, charset: str = "utf-8", escapes: str = ""
) -> DecodedBody:
    """A urlencoded form body as fields, read in `charset`, and its percent escapes as bytes
    in `escapes` (default: the charset too, as aiohttp's request.post() reads them)."""
    pairs, truncated = parse_query(data.decode(charset, "replace"), max_fields, escapes or charset)
    return DecodedBody(
        "form",
        [(_child("$", k), v) for k, v in pairs],
        [("$", k) for k, _ in pairs],  # the names: apps read them too
        truncated,
    )


_KINDS: dict[str, str] = {}  # content type -> kind: a few content types repeat


def body_kind(content_type: str) -> str:
    """The kind a content type announces ("" when it says nothing useful)."""
    kind = _KINDS.get(content_type)
    if kind is None:
        kind = _kind_of(content_type.split(";", 1)[0].strip().lower())
        if len(_KINDS) < 256:
            _KINDS[content_type] = kind
    return kind


def _kind_of(ct: str) -> str:
    if not ct:
        return ""
    if ct == "application/json" or ct.endswith("+json") or ct.endswith("/json"):
        return "json"
    if ct == "application/x-www-form-urlencoded":
        return "form"
    if ct.startswith("multipart/"):
        return "multipart"
    if ct.endswith("/xml") or ct.endswith("+xml"):
        return "xml"
    if ct.startswith("text/") or ct in ("application/javascript", "application/graphql"):
        return "text"
    return "binary"


def decode_body(
    content_type: str,
    body: bytes,
    *,
    max_bytes: int = 1 << 20,
    max_depth: int = 64,
    max_fields: int = 4096,
) -> DecodedBody:
    """Decode a body into fields by its content type (pass the full header: multipart needs the
    boundary). Never raises; limits set `partial`.

    Without a content type, a body that parses as a JSON object or array is "json", printable
    UTF-8 is "text", anything else "binary". Invalid JSON/XML is "invalid" with no fields. A JSON
    body longer than max_bytes cannot be parsed: it is "json", partial, with no fields.
    """
    if not body:
        return DecodedBody("empty")
    kind = body_kind(content_type)
    cut = len(body) > max_bytes
    data = body[:max_bytes] if cut else body
    try:
        if kind == "json":
            if cut:
                return DecodedBody("json", partial=True)
            return _decode_json(data, max_depth, max_fields, require_container=False)
        if kind == "form":
            out = decode_form(data, max_fields)
        elif kind == "multipart":
            out = _decode_multipart(content_type, data, max_fields)
        elif kind == "xml":
            out = _decode_xml(data, max_depth, max_fields, cut)
        elif kind == "text":
            out = DecodedBody("text", [("$", data.decode("utf-8", "replace"))])
        elif kind == "binary":
            out = DecodedBody("binary")
        else:
            out = _sniff(data, cut, max_depth, max_fields)
    except (ValueError, RecursionError, MemoryError):  # defensive: nothing escapes
        return DecodedBody("invalid", partial=cut)
    if cut:
        out.partial = True
    return out


def _sniff(data: bytes, cut: bool, max_depth: int, max_fields: int) -> DecodedBody:
    """No content type: JSON container if it parses as one, else text or binary."""
    head = data[:64].lstrip()
    if not cut and head[:1] in (b"{", b"["):
        out = _decode_json(data, max_depth, max_fields, require_container=True)
        if out.kind == "json":
            return out
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return DecodedBody("binary")
    sample = text[:512]
    printable = sum(1 for c in sample if c.isprintable() or c in "\r\n\t")
    if printable < len(sample) * 0.95:
        return DecodedBody("binary")
    return DecodedBody("text", [("$", text)])


def _decode_json(
    data: bytes, max_depth: int, max_fields: int, *, require_container: bool
) -> DecodedBody:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses some documents the json module reads (NaN, integers past 64 bits,
        # lone surrogates, nesting past 1024): let the json module have the final word
        try:
            doc = json.loads(data)
        except RecursionError:  # valid or not, nested deeper than the C scanner allows
            return DecodedBody("json" if not require_container else "invalid", partial=True)
        except ValueError:  # JSONDecodeError, invalid UTF-8, over-long integers
            return DecodedBody("invalid")
    if require_container and not isinstance(doc, (dict, list)):
        return DecodedBody("invalid")
    return DecodedBody.json(doc, max_depth, max_fields)


MAX_WALK_DEPTH = 256  # the walk recurses once per level: far below Python's recursion limit
# parent path -> {key: child path}, shared by all walks: array elements and requests repeat
# their paths. Bounded: cleared past _MEMO_PARENTS parents; at most _MEMO_KEYS keys per parent
# (maps keyed by ids are computed, not kept) and only keys of up to _MEMO_KEY_LEN characters.
_CHILD_PATHS: dict[str, dict[str, str]] = {}
_MEMO_PARENTS = 1024
_MEMO_KEYS = 64
_MEMO_KEY_LEN = 64


def _walk_json(
    body: DecodedBody,
    *,
    shape: dict[str, str] | None = None,
    mixed: set[tuple[str, str]] | None = None,
    typed: set[tuple[str, str]] | None = None,
    fields: list[tuple[str, Leaf]] | None = None,
    keys: list[tuple[str, str]] | None = None,
) -> bool:
    """Walk a JSON document once, in document order, filling what is given: `shape` (the class
    of the first leaf of each generalised path) with `mixed` (the other classes later leaves of a
    path have) and `typed` (the pairs a number, boolean or null gave), `fields` (leaves) and `keys`
    (object keys by parent). Returns whether a limit stopped it: depth (`max_depth`), or
    `max_fields` leaves or keys; the limits count the same whatever is collected.

    This is on the engine's hot path: recursive (one frame per level, at most MAX_WALK_DEPTH),
    child paths memoised, each path classified once, leaves handled inline.
    """
    max_depth, max_fields = body.max_depth, body.max_fields
    memo = _CHILD_PATHS
    if len(memo) > _MEMO_PARENTS:
        memo.clear()
    leaves_left = keys_left = max_fields
    stopped = False

    def visit(node: object, path: str, depth: int) -> bool:
        """False once a limit stopped the walk."""
        nonlocal leaves_left, keys_left, stopped
        if depth >= max_depth:
            stopped = True
            return True
        kids: dict[str, str] | None = None  # child paths of an object's keys
        last = False  # the key limit falls inside this object
        pairs: Iterable[tuple[Any, object]]  # (key, value); the key is None in an array
        if type(node) is dict:
            kids = memo.get(path)
            if kids is None:
                kids = memo[path] = {}
            pairs = node.items()
            last = len(node) > keys_left
            if last:
                pairs = itertools.islice(pairs, keys_left)
                keys_left = 0
            else:
                keys_left -= len(node)
        else:
            items: list[object] = node  # type: ignore[assignment]
            if len(items) > max_fields:
                stopped = True
                items = items[:max_fields]
            pairs = zip(itertools.repeat(None), items)
        child = path + "[]"  # an array element's path; an object's keys get their own
        for k, v in pairs:
            if kids is not None:
                if keys is not None:
                    keys.append((path, k))
                known = kids.get(k)
                if known is None:
                    known = _child(path, k)
                    if len(kids) < _MEMO_KEYS and len(k) <= _MEMO_KEY_LEN:
                        kids[k] = known
                child = known
            t = type(v)
            if t is dict or t is list:
                if not visit(v, child, depth + 1):
                    return False
                continue
            if not leaves_left:
                stopped = True
                return False
            leaves_left -= 1
            if shape is not None:
                cls = classify_leaf(v)
                if shape.setdefault(child, cls) != cls:
                    mixed.add((child, cls))  # type: ignore[union-attr]
                if t is not str:
                    typed.add((child, cls))  # type: ignore[union-attr]
            if fields is not None:
                fields.append((child, v))  # type: ignore[arg-type]  # a JSON leaf
        if last:
            stopped = True
            return False
        return True

    doc = body._doc
    if type(doc) is dict or type(doc) is list:
        visit(doc, "$", 0)
    else:  # a scalar document: one leaf at the root
        if shape is not None:
            shape["$"] = classify_leaf(doc)
            if type(doc) is not str and typed is not None:
                typed.add(("$", shape["$"]))
        if fields is not None:
            fields.append(("$", doc))  # type: ignore[arg-type]
    return stopped


def _child(parent: str, key: str) -> str:
    if (key.isascii() and key.isidentifier()) or _IDENT.match(key):
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def _decode_multipart(content_type: str, data: bytes, max_fields: int) -> DecodedBody:
    """Parts by their Content-Disposition name; file names as `<name>.filename` fields."""
    m = _BOUNDARY.search(content_type)
    if not m:
        return DecodedBody("invalid")
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1", "replace")
    out = DecodedBody("multipart")
    chunks = data.split(delimiter, max_fields + 1)
    if len(chunks) < 2:
        return DecodedBody("invalid")
    if len(chunks) > max_fields + 1:
        out.partial = True
        chunks = chunks[: max_fields + 1]
    for n, chunk in enumerate(chunks[1:]):
        if chunk.startswith(b"--"):  # closing delimiter
            break
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.partition(b"\n\n")
        if not sep or len(head) > _PART_HEADER_LIMIT:
            out.partial = True
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        text_head = head.decode("utf-8", "replace")
        names, filenames = _disposition(text_head)
        path = _child("$", names[-1] if names else f"part{n}")
        out.keys.extend(("$", name) for name in names)
        out.fields.extend((path + ".filename", filename) for filename in filenames)
        for value in _part_values(text_head, content):
            out.fields.append((path, value))
    return out


def _disposition(head: str) -> tuple[list[str], list[str]]:
    """The part's names and file names, each as every spelling a framework may pick: plain
    and RFC 2231 (`filename*`, decoded, continuations joined)."""
    for line in head.splitlines():
        if line.lower().startswith("content-disposition:"):
            found: dict[str, list[str]] = {"name": [], "filename": []}
            starred: dict[str, list[tuple[int, bool, str]]] = {}
            for m in _DISPOSITION_PARAM.finditer(line):
                key = m.group(1).lower()
                value = m.group(4) if m.group(4) is not None else m.group(5)
                if m.group(2) or m.group(3):
                    index = int(m.group(2)[1:]) if m.group(2) else 0
                    starred.setdefault(key, []).append((index, bool(m.group(3)), value))
                elif value not in found[key]:  # repeated: some parsers take the first
                    found[key].append(value)
            for key, pieces in starred.items():
                value = _rfc2231(sorted(pieces, key=lambda piece: piece[0]))
                if value not in found[key]:
                    found[key].append(value)
            return found["name"], found["filename"]
    return [], []


def _rfc2231(pieces: list[tuple[int, bool, str]]) -> str:
    """An RFC 2231 parameter value from its pieces (index, extended, text): the first extended
    piece starts with `charset'language'`, extended pieces are percent-encoded."""
    charset = "utf-8"
    out: list[str] = []
    for n, (_, extended, text) in enumerate(pieces):
        if extended:
            if n == 0 and text.count("'") >= 2:
                charset, _, text = text.split("'", 2)
            try:
                text = unquote(text, encoding=charset or "utf-8", errors="replace")
            except LookupError:
                text = unquote(text, errors="replace")
        out.append(text)
    return "".join(out)


def _part_values(head: str, content: bytes) -> list[str]:
    """A part's content as the application may read it: as sent, and also decoded by its
    Content-Transfer-Encoding (base64, quoted-printable: aiohttp decodes both, Go's mime
    package quoted-printable) and its charset (aiohttp decodes text parts by it)."""
    values = [content.decode("utf-8", "replace")]
    lower = head.lower()
    if "content-transfer-encoding" in lower:
        m = re.search(r"content-transfer-encoding:\s*([\w-]+)", lower)
        coding = m.group(1) if m else ""
        try:
            if coding == "base64":
                content = binascii.a2b_base64(content)
            elif coding == "quoted-printable":
                content = binascii.a2b_qp(content)
        except (binascii.Error, ValueError):
            pass
    if "charset" in lower:
        for line in head.splitlines():
            if line.lower().startswith("content-type:"):
                recoded = recode(line[13:], content)
                if recoded is not None:
                    content = recoded
                break
    value = content.decode("utf-8", "replace")
    if value != values[0]:
        values.append(value)
    return values


_CHARSETS: dict[str, str] = {}  # content type -> charset: a few content types repeat


def charset_of(content_type: str) -> str:
    """The charset parameter of a content type, lower-case ("" when there is none)."""
    known = _CHARSETS.get(content_type)
    if known is not None:
        return known
    m = _CHARSET.search(content_type) if "harset" in content_type.lower() else None
    charset = m.group(1).lower() if m else ""
    if len(_CHARSETS) < 256:
        _CHARSETS[content_type] = charset
    return charset


def recode(content_type: str, data: bytes) -> bytes | None:
    """The body as UTF-8 when the application may read it as text in another encoding; None
    when that reads the same as the bytes taken as UTF-8 (the usual case) or is not text.

    - A charset parameter: aiohttp's request.text(), .json() and .post() decode the body with
      any codec Python has (utf-16, utf-7, ibm037/EBCDIC, ...), Express and Jackson the UTF
      ones.
    - Without one, a UTF-16/32 byte order mark or the NUL pattern of UTF-16/32 text: Python's
      json.loads(bytes) (Flask get_json, Django json.loads(request.body)) and Jackson detect
      it whatever the content type says. Decoded strictly, so binary bodies (gRPC frames start
      with NUL bytes) stay binary.
    """
    charset = charset_of(content_type) if content_type else ""
    if charset and charset not in _UTF8_NAMES:
        try:
            text = data.decode(charset, "replace")
        except (LookupError, ValueError):  # not a codec, or not a text encoding (rot13)
            return None
    else:
        if data[:1] not in (b"\x00", b"\xff", b"\xfe") and data[1:2] != b"\x00":
            return None
        encoding = json.detect_encoding(data[:4])
        if not encoding.startswith(("utf-16", "utf-32")):
            return None
        try:
            text = whole(data.decode(encoding, "surrogatepass"))
        except UnicodeDecodeError:
            return None
    if text.startswith("\ufeff"):
        text = text[1:]
    out = text.encode("utf-8", "surrogatepass")
    return None if out == data else out


class _StopXml(Exception):
    """Raised inside expat handlers to end parsing at a limit."""


def _decode_xml(data: bytes, max_depth: int, max_fields: int, cut: bool) -> DecodedBody:
    """Element text as `$.root.child` fields, attributes as `$.root.child@attr`.

    Entity declarations end the parse (no expansion, so no entity bombs); what was read before
    stays, marked partial. The raw body is still there for detectors that look for XXE.
    """
    out = DecodedBody("xml")
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[str] = ["$"]
    texts: list[list[str]] = [[]]

    def start(name: str, attrs: dict[str, str]) -> None:
        if len(stack) > max_depth:
            raise _StopXml
        path = _child(stack[-1], name)
        for k, v in attrs.items():
            add(f"{path}@{k}", v)
        stack.append(path)
        texts.append([])

    def end(name: str) -> None:
        text = "".join(texts.pop()).strip()
        path = stack.pop()
        if text:
            add(path, text)

    def add(path: str, value: str) -> None:
        if len(out.fields) >= max_fields:
            raise _StopXml
        out.fields.append((path, value))

    def chars(text: str) -> None:
        texts[-1].append(text)

    def entity(*_: object) -> None:
        raise _StopXml

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.EntityDeclHandler = entity
    try:
        parser.Parse(data, True)
    except _StopXml:
        out.partial = True
    except expat.ExpatError:
        if not cut:
            return DecodedBody("invalid")
        out.partial = True  # the cut ended the document early; keep what was read
    return out


_DECODABLE = {"gzip": 16 + 15, "x-gzip": 16 + 15, "deflate": 15}


def decode_content(encoding: str, body: bytes, max_bytes: int = 1 << 20) -> tuple[bytes, bool]:
    """Undo Content-Encoding (gzip, deflate; several in a row) so inspection sees the plaintext.

    Returns the decoded bytes and `partial`: True when the output limit cut it (a compression
    bomb stops at `max_bytes`), when the data is corrupt, or when an encoding is one we cannot
    undo (br, zstd, ...): then the body comes back as it was and only what is readable of it
    is inspected, and the verdict says so.
    """
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    data, partial = body, False
    for coding in reversed(codings):  # the last encoding applied is undone first
        if coding == "identity":
            continue
        wbits = _DECODABLE.get(coding)
        if wbits is None:
            return data, True
        try:
            data, cut = _inflate(data, wbits, max_bytes)
        except zlib.error:
            if coding != "deflate":
                return body, True
            try:  # many servers send raw deflate without the zlib header
                data, cut = _inflate(data, -15, max_bytes)
            except zlib.error:
                return body, True
        partial = partial or cut
    return data, partial


def decode_grpc_messages(
    encoding: str, body: bytes, max_bytes: int = 1 << 20
) -> tuple[bytes, bool]:
    """gRPC's own compression undone: each length-prefixed message whose flag says compressed
    is decompressed with the call's `grpc-encoding` (gzip, deflate), as grpc-go, grpc-java and
    grpcio do by default, and framed again uncompressed. Returns the messages and `partial`
    (an encoding we cannot undo, corrupt data, a cut last message, or `max_bytes` reached)."""
    out = bytearray()
    partial = False
    at = 0
    while at + 5 <= len(body):
        flag, size = body[at], int.from_bytes(body[at + 1 : at + 5], "big")
        message = body[at + 5 : at + 5 + size]
        at += 5 + size
        if flag & 1:
            message, cut = decode_content(encoding, message, max(max_bytes - len(out), 0))
            partial = partial or cut
        out += b"\0" + len(message).to_bytes(4, "big") + message
        if len(out) >= max_bytes:
            return bytes(out[:max_bytes]), True
    return bytes(out), partial or at != len(body)


_GZIP_MEMBERS = 64  # members of one gzip stream inflated; past that the rest is `partial`


def _inflate(data: bytes, wbits: int, max_bytes: int) -> tuple[bytes, bool]:
    """Inflate one stream. gzip: every member, as gunzip, Go's gzip.Reader, Node's zlib and
    Java's GZIPInputStream do (a second member is as much body as the first); bytes after the
    last member that start no member are ignored, as most decoders do."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, max_bytes)
    cut = bool(d.unconsumed_tail) or not d.eof
    if wbits != 16 + 15 or cut:
        return out, cut
    pieces = [out]
    size = len(out)
    rest = d.unused_data
    for _ in range(_GZIP_MEMBERS):
        if not rest.startswith(b"\x1f\x8b"):
            return b"".join(pieces), False
        d = zlib.decompressobj(wbits)
        try:
            piece = d.decompress(rest, max_bytes - size)
        except zlib.error:  # a corrupt later member: what came before is still the body
            return b"".join(pieces), True
        pieces.append(piece)
        size += len(piece)
        if d.unconsumed_tail or not d.eof:
            return b"".join(pieces), True
        rest = d.unused_data
    return b"".join(pieces), rest.startswith(b"\x1f\x8b")
