"""ThreatDetector: finds embedded attacks in every part of an Observation.

Two passes keep the common case cheap:
1. Pre-filter: one Hyperscan scan over the raw parts (path, query, header values and a JSON
   body, one value per line) with the signatures plus INDICATORS (encodings, quotes, markup,
   what libinjection needs...); other bodies get a second scan. A part where nothing matches
   has no threat: normalisation only changes text that an indicator matches, the signatures
   are caseless, and libinjection only runs where an indicator matches. Only flagged parts go on.
   Every match counts (a pattern may match in several parts); header values a scan found
   clean before are left out (_CleanValues).
2. Detail: each flagged part is split into fields (query parameters, cookies, JSON leaves and
   keys, form fields, multipart parts, XML text); each field that the pre-filter flags on its
   own is normalised and scanned, and libinjection checks SQLi/XSS. Each finding names its
   location and evidence.

The soundness of pass 1 is tested, not assumed: tests compare it with `prefilter=False`.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import threading
from itertools import accumulate

from meshward.core.bodies import (
    DecodedBody,
    body_kind,
    charset_of,
    decode_body,
    decode_form,
    parse_query,
    recode,
)
from meshward.core.observation import Observation, Threat
from meshward.core.redact import SECRET_HEADERS
from meshward.core.threats import injection
from meshward.core.threats.inspection import Inspection
from meshward.core.threats.names import (
    CMDI,
    CRLF,
    JAVA,
    NEGATIVE_LENGTH,
    NOSQL,
    RFI,
    SCANNER_USER_AGENT,
    SMUGGLING,
    SQLI,
    SSRF,
    TRAVERSAL,
    XSS,
)
from meshward.core.threats.normalise import (
    alternate,
    decode,
    evidence,
    fold,
    look_alikes,
    unsplit,
)
from meshward.core.threats.signatures import (
    COMMAND_NAMES,
    IP_URL,
    SCANNER_AGENTS,
    CompiledCache,
    SignatureSet,
)

# Headers that carry framing or infrastructure data, not user input: never scanned for payloads
# (framing headers get their own checks below).
SKIP_HEADERS = frozenset(
    {
        ":method",
        ":scheme",
        ":path",
        ":authority",
        ":status",
        "content-length",
        "transfer-encoding",
        "x-request-id",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "b3",
        "traceparent",
        "tracestate",
        "x-forwarded-client-cert",
        "x-envoy-attempt-count",
        "x-envoy-internal",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-decorator-operation",
        "x-envoy-peer-metadata",
        "x-envoy-peer-metadata-id",
        "accept-encoding",
        "connection",
        "te",
        "grpc-timeout",
    }
)
NOSQL_OPERATORS = frozenset(
    (
        "$ne",
        "$eq",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$in",
        "$nin",
        "$regex",
        "$where",
        "$exists",
        "$or",
        "$and",
        "$not",
        "$nor",
        "$expr",
        "$elemmatch",
        "$function",
        "$accumulator",
        "$eval",
        "$type",
        "$size",
        "$all",
        "$mod",
        "$text",
        "$jsonschema",
    )
)
METADATA_IPS = frozenset(
    {"169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192"}
)  # AWS/GCP/Azure/OpenStack, AWS ECS, Alibaba, Oracle
TRANSFER_CODINGS = frozenset({"chunked", "gzip", "deflate", "compress", "identity", "x-gzip"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9a-z-]+\Z|:[a-z]+\Z")
_IPV4_TOKEN = re.compile(
    r"(?<![\w.])((?:0x[0-9a-f]{1,8}|\d{1,12})(?:\.(?:0x[0-9a-f]{1,8}|\d{1,12})){0,3})(?![\w])"
)
_IPV6_MAPPED = re.compile(r"[0-9a-f:]{0,30}:ffff:[0-9a-f.:]{3,20}")
_SSRF_HINT = re.compile(r"169|0x|2852039166|0251|25177524776|ffff|100\.|192\.0\.0")
# NUL-byte truncation (a file-inclusion trick: the server's C layer stops at the NUL): a NUL
# after a file extension (shell.php%00) or before one that ends the value (passwd%00.png).
_NUL_TRUNCATION = re.compile(
    r"\w\.[a-z][a-z0-9]{0,4}\x00|[\w/]\x00+\.[a-z][a-z0-9]{0,4}\s*$", re.IGNORECASE
)
_JAVA_MAGIC = b"\xac\xed\x00\x05"
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e\x80-\xff]{2,}")
# JSON quotes are structure, not payload: as newlines they start a line per string, so that
# value-anchored signatures (^...$, multiline) see each string on its own.
_JSON_PREFILTER = bytes.maketrans(b'"', b"\n")
_CHARSET_PARAM = re.compile(r";\s*charset\s*=[^;]*", re.IGNORECASE)
_SCANNER = re.compile(SCANNER_AGENTS, re.IGNORECASE)
_PLAIN_SEGMENT = re.compile(r"[\w.~-]*\Z")  # a path segment with nothing but a name in it
_FORM_LIKE = re.compile(rb"[\w.\[\]%-]{1,256}=")  # a body that starts as a urlencoded form does
_XML_TEXT = re.compile(r">[^<]{1,65536}<")  # the text between two tags of an XML document


_Part = tuple[str, str]  # (kind: path | query | header, header name)


class ThreatDetector:
    """The embedded-threat detector (a meshward.core.threats.inspection.Detector). Thread-safe,
    stateless per call.

    level: 1..3 like OWASP CRS paranoia levels (1: few false positives).
    max_scan_bytes: body bytes inspected; beyond it the Inspection is `partial`.
    max_value_bytes: bytes of one field value inspected.
    max_fields: query parameters, cookies and body fields inspected per request.
    max_threats: findings reported per request (the rest are dropped, counted in `dropped`).
    prefilter: False inspects every part in detail (slow; tests use it to check that the
        pre-filter never hides a finding).
    """

    def __init__(
        self,
        level: int = 1,
        max_scan_bytes: int = 256 * 1024,
        max_value_bytes: int = 16 * 1024,
        max_fields: int = 1024,
        max_threats: int = 32,
        prefilter: bool = True,
        cache: CompiledCache | None = None,
    ) -> None:
        if level not in (1, 2, 3):
            raise ValueError(f"sensitivity level must be 1, 2 or 3, not {level!r}")
        self.level = level
        self.max_scan_bytes = max_scan_bytes
        self.max_value_bytes = max_value_bytes
        self.max_fields = max_fields
        self.max_threats = max_threats
        self.use_prefilter = prefilter
        self.sigs = signature_set(level, cache)
        self.dropped = 0  # findings beyond max_threats (approximate under threads)
        self._clean = _CleanValues()

    # ---- entry point

    def inspect(self, obs: Observation, body: DecodedBody | None = None) -> Inspection:
        """Threats in every part of obs. `body`: the body as the caller already decoded it
        (the engine decodes once per request); without it the body is decoded here, and only
        when the pre-filter flags it."""
        limit = self.max_scan_bytes
        if self.use_prefilter:
            head = _head(obs, limit, self._clean, keep_clean=False)
            if head.newline:  # every part gets the detail pass: read the clean ones too
                head = _head(obs, limit, self._clean)
        else:
            head = _head(obs, limit)
        partial = head.cut
        raw = obs.body
        if len(raw) > limit:
            raw, partial = raw[:limit], True
        size = obs.body_size
        if obs.body_truncated or (size is not None and size > len(obs.body)):
            partial = True
        content_type = head.content_type
        kind = body_kind(content_type) if content_type else ""
        parts = head.parts
        if self.use_prefilter:
            flagged = self._prefilter(head, raw, kind)
        else:
            flagged = set(range(len(parts) + 1 if raw else len(parts)))
        recoded = recode(content_type, raw) if raw else None
        negative = size is not None and size < 0
        if not (flagged or head.framing or negative or recoded is not None):
            return Inspection([], partial)  # the common case: nothing to look at in detail
        found = _Findings(self.max_threats)
        if head.framing or negative:
            self._framing(obs, head, found)
        texts = head.texts
        for i in sorted(flagged):
            if i < len(parts):
                self._detail(parts[i], texts[i], obs, found)
            elif self._body(content_type, raw, body, found):
                partial = True
        if recoded is not None:
            self._recoded(content_type, kind, raw, recoded, found)
        self.dropped += found.dropped
        return Inspection(found.threats, partial or found.cut)

    # ---- pass 1

    def _prefilter(self, head: _Head, body: bytes, kind: str) -> set[int]:
        """Indices of parts (len(parts) means the body) where a signature or indicator matched.

        One scan covers the head (its pre-filter lines, one part per line) and a JSON body
        (quotes as newlines) with the `lines` database, which leaves out the signatures that
        treat a newline as an injected command separator: here newlines only separate values.
        Header values this detector already scanned clean (head.clean) are left out of it. Raw
        CR/LF inside the head flags every head part (rare, and never benign); other bodies,
        where raw newlines are content, get the full database.

        Every match is reported (no single-match mode: a pattern that matched in one part must
        still flag the next part it matches in), so a request with more than MAX_MATCHES
        matches flags every part instead of paying for each: sound and bounded.
        """
        scanned = head.scanned  # indices of the parts in `lines`, in order
        json_body = bool(body) and (kind == "json" or (not kind and body[:1] in (b"{", b"[")))
        joined = "\n".join(head.lines)  # never empty: the path is always scanned
        # bytes the node tap could not decode come back as they were (surrogateescape); other
        # surrogates (no source should hand one over) as their 3-byte form instead of raising
        try:
            raw = joined.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            head.errors = "surrogatepass"
            raw = joined.encode("utf-8", "surrogatepass")
        if json_body:
            scanned.append(len(head.parts))
            raw = b"\n".join((raw, body.translate(_JSON_PREFILTER)))
        self.sigs.prefilter(raw, _on_match, lines=True, context=head)
        flagged = head.flagged
        if head.fresh and not head.newline:
            head.remember_clean()
        if head.newline:
            flagged.update(range(len(head.parts)))
        if body and not json_body:
            if kind == "form" or (not kind and _FORM_LIKE.match(body)):
                body = _query_lines(body.decode("latin-1")).encode("latin-1")
            if self.sigs.suspicious(body):
                flagged.add(len(head.parts))
        return flagged

    def _recoded(
        self, content_type: str, kind: str, raw: bytes, text: bytes, found: _Findings
    ) -> None:
        """The body once more as `text`, in the encoding the application may decode it with (its
        charset parameter, or UTF-16/32 detected as Python's json.loads(bytes) and Jackson do;
        bodies.recode), when that reads otherwise than the bytes as UTF-8. Both spellings are
        inspected: some frameworks honour the charset, others read the bytes. Rare, so no
        body-level pre-filter here: every value still passes the per-value one in _value."""
        charset = charset_of(content_type)
        if charset and kind == "form":
            # aiohttp reads the body and its percent escapes in the charset; ASP.NET reads an
            # ASCII body's escapes in it (the ibm037 bypass: %89%95... spells EBCDIC bytes)
            self._fields(decode_form(raw, self.max_fields, charset), found)
            if raw.isascii():
                self._fields(decode_form(raw, self.max_fields, "ascii", charset), found)
            return
        # detected, not declared (UTF-16/32): read it as what it looks like (JSON or text);
        # declared: as the declared type without the charset just applied
        content_type = _CHARSET_PARAM.sub("", content_type) if charset else ""
        self._body(content_type, text, None, found)

    # ---- pass 2

    def _detail(self, part: _Part, text: str, obs: Observation, found: _Findings) -> None:
        kind, name = part
        if kind == "path":
            self._value(obs.path, "path", found)
            # each segment alone too, as a router hands it to the handler (/items/1' or 1=1--):
            # signatures anchored at a value's start see it. A plain word (/api/whoami) is a
            # route name, not a payload, and is not read alone.
            for n, segment in enumerate(obs.path[: self.max_scan_bytes].split("/")):
                if n >= self.max_fields:
                    break
                if segment and not _PLAIN_SEGMENT.match(segment):
                    self._value(segment, "path", found)
        elif kind == "query":
            pairs, _ = parse_query(obs.query[: self.max_scan_bytes], self.max_fields)
            for pname, value in pairs:
                loc = f"query:{pname}"
                self._value(pname, loc, found)
                self._value(value, loc, found)
        elif name == "cookie":
            for n, piece in enumerate(text.split(";")):
                if n >= self.max_fields:
                    break
                cname, sep, value = piece.strip().partition("=")
                loc = f"header:cookie:{cname}" if sep else "header:cookie"
                self._value(value if sep else cname, loc, found)
        else:
            if name == "user-agent" and (tool := _SCANNER.search(text)):
                found.add(SCANNER_USER_AGENT, "header:user-agent", tool.group(0))
            self._value(text, f"header:{name}", found)

    def _body(
        self, content_type: str, body: bytes, decoded: DecodedBody | None, found: _Findings
    ) -> bool:
        """Inspect the body's fields; returns True when limits left some of it uninspected."""
        if _JAVA_MAGIC in body:
            found.add(JAVA, "body", "aced0005 (Java serialization stream)")
        if decoded is None:
            decoded = decode_body(
                content_type, body, max_bytes=self.max_scan_bytes, max_fields=self.max_fields
            )
        if decoded.kind in ("json", "form", "multipart", "xml"):
            self._fields(decoded, found)
        elif decoded.kind == "text" and not body_kind(content_type) and _FORM_LIKE.match(body):
            # no Content-Type: most clients then send a form, and frameworks that default to
            # one (PHP, Express's urlencoded parser with type '*/*') read its fields
            self._fields(decode_form(body, self.max_fields), found)
        if decoded.kind == "binary":
            # protobuf and other binary framing: control bytes (tags, lengths) separate values,
            # they are not newlines an attacker typed; scan each printable run on its own.
            for n, m in enumerate(_PRINTABLE_RUN.finditer(body)):
                if n >= self.max_fields:
                    return True
                self._value(m.group().decode("utf-8", "replace"), "body", found)
        elif decoded.kind in ("xml", "text", "invalid") or (
            decoded.kind == "json" and not decoded.fields and decoded.partial
        ):
            text = body.decode("utf-8", "replace")
            if decoded.kind == "xml":
                # its text is in the fields above; the document itself is read for its markup
                # (doctype, entities, processing instructions, injected elements), each tag on
                # a line of its own as a JSON string is, so that prose in the text is read once
                text = _XML_TEXT.sub(">\n<", text)
            # An XML document is markup by construction: its prolog and namespaces are what
            # libinjection's HTML5 tokeniser flags (<?xml ...?>, xmlns="..."), so a document
            # declared XML is read by the signatures only; its text and attribute values (the
            # fields) get every check.
            markup = decoded.kind == "xml" or body_kind(content_type) == "xml"
            self._value(text, "body", found, markup=markup)
        return decoded.partial

    def _fields(self, decoded: DecodedBody, found: _Findings) -> None:
        named = decoded.kind in ("form", "multipart")
        for parent, key in decoded.keys:
            loc = f"body:{key}" if named else _body_location(parent, named)
            if key.lower() in NOSQL_OPERATORS:
                found.add(NOSQL, loc, key)
            elif key and not key.isalnum():
                self._value(key, loc, found)
        for path, value in decoded.fields:
            if isinstance(value, str) and value:
                self._value(value, _body_location(path, named), found)

    def _value(self, value: str, location: str, found: _Findings, markup: bool = False) -> None:
        """Normalise one field value and run every check on it (`markup`: a whole XML
        document, which libinjection's HTML tokeniser does not read)."""
        if not value or found.full:
            return
        if len(value) > self.max_value_bytes:
            value, found.cut = value[: self.max_value_bytes], True
        if self.use_prefilter and not self.sigs.suspicious(value.encode("utf-8", "replace")):
            return
        unfolded = decode(value)
        decoded = fold(unfolded)
        # libinjection tokenises the text as a database or browser would, backticks included
        # (a code span `sleep()` is a quoted identifier to it); the signatures see prose's code
        # spans marked
        spanned = code_spans_in_prose(decoded) if "`" in decoded else decoded
        norm = spanned.lower()
        alt = alternate(norm)
        names: set[str] = set()
        for text in (norm, alt) if alt else (norm,):
            self._scan(text, location, names, found)
        # Quote-split words (w'h'o'am'i) are joined the way a shell reads them; only the
        # command signatures see that spelling, other languages do not join words so.
        joined = unsplit(norm)
        if joined and CMDI not in names:
            self._scan(joined, location, names, found, only=CMDI)
        if TRAVERSAL not in names and "\x00" in unfolded:  # before fold() strips the NUL
            m = _NUL_TRUNCATION.search(look_alikes(unfolded))
            if m:
                found.add(TRAVERSAL, location, m.group(0))
        if SQLI not in names and injection.is_sqli(decoded, self.level):
            found.add(SQLI, location, decoded)
        if XSS not in names and not markup and injection.is_xss(decoded, self.level):
            found.add(XSS, location, decoded)
        if (
            RFI not in names
            and "://" in norm
            and not location.startswith("header:")  # Referer and Origin name pages by URL
            and (host := remote_address(norm))
        ):
            found.add(RFI, location, host)
        if SSRF not in names and _SSRF_HINT.search(norm):
            ip = metadata_address(norm, whole_value=True)
            if ip:
                found.add(SSRF, location, ip)

    def _scan(
        self, text: str, location: str, names: set[str], found: _Findings, only: str = ""
    ) -> None:
        """Signature matches in one spelling of a value (of threat `only`, if given)."""
        data = text.encode("utf-8", "replace")
        for sid, end in self.sigs.scan(data):
            name = self.sigs.signatures[sid].name
            if name in names or (only and name != only):
                continue
            if name == CMDI and _SEPARATED.search(data):
                # a command after a separator: not when the clause reads as English
                spans = [
                    (a, b) for a, b in self.sigs.matches(sid, data, end) if not _prose(data, a, b)
                ]
                if not spans:
                    continue
                frag = data[spans[0][0] : spans[0][1]].decode("utf-8", "replace")
            else:
                frag = self.sigs.matched_text(sid, data, end).decode("utf-8", "replace")
            names.add(name)
            found.add(name, location, frag)

    # ---- framing

    def _framing(self, obs: Observation, head: _Head, found: _Findings) -> None:
        """Request smuggling, negative length and header injection, from headers and the
        declared size."""
        if obs.body_size is not None and obs.body_size < 0:
            found.add(NEGATIVE_LENGTH, "header:content-length", str(obs.body_size))
        if head.lengths or head.codings:
            self._framing_headers(obs, head.lengths, head.codings, found)
        if head.odd_names:
            for name, _ in obs.headers:
                if not _HEADER_NAME.match(name) and _looks_like_framing(name):
                    found.add(SMUGGLING, f"header:{name}", f"obfuscated header name {name!r}")
        if head.newline or head.crlf:
            for name, value in obs.headers:
                if ("\r" in value or "\n" in value) and not name.startswith(":"):
                    found.add(CRLF, f"header:{name}", value)

    def _framing_headers(
        self, obs: Observation, lengths: list[str], codings: list[str], found: _Findings
    ) -> None:
        for value in lengths:
            v = value.strip()
            if v.startswith("-") and v[1:].strip().isdigit():
                found.add(NEGATIVE_LENGTH, "header:content-length", value)
            elif not (value.isdigit() and value.isascii()):
                found.add(SMUGGLING, "header:content-length", f"content-length: {value!r}")
        if len(lengths) > 1:
            found.add(SMUGGLING, "header:content-length", "content-length: " + ", ".join(lengths))
        if lengths and codings:
            found.add(
                SMUGGLING,
                "header:transfer-encoding",
                f"content-length: {lengths[0]} with transfer-encoding: {codings[0]}",
            )
        if len(codings) > 1:
            found.add(
                SMUGGLING, "header:transfer-encoding", "transfer-encoding: " + ", ".join(codings)
            )
        for value in codings:
            items = [c.strip().lower() for c in value.split(",")]
            if (
                value != value.strip()
                or any(c not in TRANSFER_CODINGS for c in items)
                or ("chunked" in items and items[-1] != "chunked")
                or obs.protocol in ("h2", "http/2", "grpc")
            ):
                found.add(SMUGGLING, "header:transfer-encoding", f"transfer-encoding: {value!r}")


class _Head:
    """The request head as one pass over the headers sees it, and what the pre-filter scan of
    it found (_on_match)."""

    __slots__ = (
        "clean",
        "codings",
        "content_type",
        "crlf",
        "cut",
        "errors",
        "flagged",
        "framing",
        "fresh",
        "lengths",
        "lines",
        "matches",
        "newline",
        "odd_names",
        "parts",
        "scanned",
        "starts",
        "texts",
    )

    def __init__(self, clean: _CleanValues | None) -> None:
        self.parts: list[_Part] = [_PATH]  # path, query, scanned headers
        self.texts: list[str] = []  # their texts, cut to the limit
        self.lines: list[str] = []  # pre-filter texts of the parts to scan (see _head)
        self.scanned: list[int] = [0]  # the index in parts of each of `lines` (and the body)
        self.fresh: list[tuple[int, str]] = []  # header lines scanned that the cache may keep
        self.clean = clean
        self.newline = False  # CR or LF inside the raw path, query or a scanned header value
        self.crlf = False  # CR or LF inside a header value that is not scanned
        self.content_type = ""
        self.lengths: list[str] = []  # content-length values
        self.codings: list[str] = []  # transfer-encoding values
        self.odd_names = False  # a header name outside the HTTP token alphabet
        self.cut = False  # a part was longer than the limit and is inspected in part
        self.framing = False  # something for _framing to look at
        # the pre-filter scan: flagged parts, offsets of the lines in its buffer (computed at
        # the first match), matches so far, how the lines were encoded
        self.flagged: set[int] = set()
        self.starts: list[int] | None = None
        self.matches = 0
        self.errors = "surrogateescape"

    def remember_clean(self) -> None:
        """Keep the header lines the scan found nothing in (see _CleanValues); only when the
        head has no CR or LF, so that no remembered value holds one."""
        if self.clean is not None and not self.newline:
            flagged = self.flagged
            for i, line in self.fresh:
                if i not in flagged:
                    self.clean.add(line)


def _on_match(sid: int, start: int, end: int, flags: int, head: _Head) -> bool | None:
    """Hyperscan's callback for the pre-filter scan of a head (and JSON body): flags the part
    the match ends in; True (stop) once every part is flagged."""
    starts, scanned, flagged = head.starts, head.scanned, head.flagged
    if starts is None:
        lines = head.lines
        if "\n".join(lines).isascii():
            sizes = [len(t) for t in lines]
        else:
            sizes = [len(t.encode("utf-8", head.errors)) for t in lines]
        starts = head.starts = _starts([*sizes, 0] if len(scanned) > len(lines) else sizes)
    flagged.add(scanned[bisect.bisect_right(starts, max(end - 1, 0)) - 1])
    head.matches += 1
    if head.matches > MAX_MATCHES:
        flagged.update(scanned)
    return len(flagged) >= len(scanned) or None


class _CleanValues:
    """Header values the pre-filter found nothing in: user agents, hosts, accept headers repeat
    from request to request, so they are left out of the next scans. Sound: in the joined scan a
    part is unflagged only when no match ends inside it, so scanned alone it matches nothing
    either, and the detail pass runs only on flagged parts. Bounded: at most `limit` values of
    at most MAX_CLEAN_LEN characters, emptied when full. The values of SECRET_HEADERS
    (credentials, cookies) are never kept, nor values with a CR or LF."""

    __slots__ = ("limit", "values")

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self.values: set[str] = set()

    def __contains__(self, line: str) -> bool:
        return line in self.values

    def add(self, line: str) -> None:
        if len(self.values) >= self.limit:
            self.values.clear()
        self.values.add(line)


MAX_CLEAN_LEN = 512
MAX_MATCHES = 256  # pre-filter matches in one request before every part is flagged
_PATH: _Part = ("path", "")
_QUERY: _Part = ("query", "")


def _head(
    obs: Observation, limit: int, clean: _CleanValues | None = None, keep_clean: bool = True
) -> _Head:
    """The head's parts and their pre-filter lines: the path whole and, when it has several
    segments, each segment on a line of its own; the query one parameter per line, then each
    value alone (_query_lines); each scanned header value, a cookie also with each name and
    value alone; so that value-anchored signatures see them as the detail pass reads them.

    Header values in `clean` are left out of `lines`, and with keep_clean=False out of the
    parts too: then only the scanned parts are read (the cheap common case), which is what the
    detector needs unless the head has a CR or LF (head.newline: every part is then read in
    detail, so it reads the head again with keep_clean=True). Clean values hold no CR or LF
    (_Head.remember_clean), so head.newline is the same either way."""
    head = _Head(clean)
    path, query = obs.path, obs.query
    if len(path) > limit or len(query) > limit:
        path, query, head.cut = path[:limit], query[:limit], True
    parts, texts, lines, scanned = head.parts, head.texts, head.lines, head.scanned
    texts.append(path)
    lines.append(path + "\n" + path.replace("/", "\n") if path.count("/") > 1 else path)
    if query:
        parts.append(_QUERY)
        texts.append(query)
        lines.append(_query_lines(query))
        scanned.append(1)
    known = clean.values if clean is not None else _NOTHING
    fresh = head.fresh
    kinds = _NAME_KINDS
    for name, value in obs.headers:
        kind = kinds.get(name)
        if kind == _OTHER and value in known:  # the common case, as the general one below has it
            if keep_clean:
                parts.append(("header", name))
                texts.append(value)
            continue
        if kind is None:
            kind = _name_kind(name)
        if kind >= _ODD:
            head.odd_names = True
            kind -= _ODD
        if kind <= _SKIP or not value:
            if kind == _LENGTH:
                head.lengths.append(value)
            elif kind == _CODING:
                head.codings.append(value)
            elif "\r" in value or "\n" in value:
                head.crlf = True
            continue
        if kind == _CTYPE and not head.content_type:
            head.content_type = value
        if len(value) > limit:
            value, head.cut = value[:limit], True
        if kind == _COOKIE:
            line = value + "\n" + value.replace(";", "\n").replace("=", "\n")
        elif kind == _SECRET or len(value) > MAX_CLEAN_LEN:
            line = value
        elif value in known:
            if keep_clean:
                parts.append(("header", name))
                texts.append(value)
            continue
        else:
            line = value
            fresh.append((len(parts), value))
        scanned.append(len(parts))
        parts.append(("header", name))
        texts.append(value)
        lines.append(line)
    joined = "".join(texts)
    head.newline = "\n" in joined or "\r" in joined
    lengths = head.lengths
    head.framing = bool(
        head.codings
        or head.odd_names
        or head.newline
        or head.crlf
        or (lengths and (len(lengths) > 1 or not (lengths[0].isdigit() and lengths[0].isascii())))
    )
    return head


_NOTHING: frozenset[str] = frozenset()
# What _head does with a header, by name: not scanned (a framing header, another skipped one)
# or scanned (a credential, a cookie, the content type, any other); _ODD added for a name
# outside the HTTP token alphabet.
_LENGTH, _CODING, _SKIP, _SECRET, _COOKIE, _CTYPE, _OTHER, _ODD = 0, 1, 2, 3, 4, 5, 6, 8
_NAME_KINDS: dict[str, int] = {}  # header name -> kind (bounded cache, see _name_kind)


def _name_kind(name: str) -> int:
    if name == "content-length":
        kind = _LENGTH
    elif name == "transfer-encoding":
        kind = _CODING
    elif name in SKIP_HEADERS or name.startswith("x-envoy-"):
        kind = _SKIP
    elif name == "cookie":
        kind = _COOKIE
    elif name in SECRET_HEADERS:
        kind = _SECRET
    elif name == "content-type":
        kind = _CTYPE
    else:
        kind = _OTHER
    if not _HEADER_NAME.match(name):
        kind += _ODD
    if len(_NAME_KINDS) < 4096:
        _NAME_KINDS[name] = kind
    return kind


class _Findings:
    """Threats of one request: one per (name, location), at most `limit`."""

    __slots__ = ("cut", "dropped", "full", "limit", "seen", "threats")

    def __init__(self, limit: int) -> None:
        self.threats: list[Threat] = []
        self.seen: set[tuple[str, str]] = set()
        self.limit = limit
        self.full = False
        self.dropped = 0
        self.cut = False  # a value was longer than max_value_bytes and inspected in part

    def add(self, name: str, location: str, fragment: str) -> None:
        key = (name, location)
        if key in self.seen:
            return
        if len(self.threats) >= self.limit:
            self.full = True
            self.dropped += 1
            return
        self.seen.add(key)
        self.threats.append(Threat(name, evidence(location, 200), evidence(fragment)))


# A Markdown code span: a backtick pair around one line of text, opening at the start of the
# value or after whitespace or an opening bracket or quote (not `$(`, which is a substitution),
# closing before the end, whitespace or punctuation. Backticks glued to a word (x`id`) are not.
_CODE_SPAN = re.compile(
    r"(?:^|(?<=[\s(\[{\"'*_]))(?<!\$\()`([^`\n]{1,200})`(?=$|[\s.,;:!?)\]}\"'*_-])"
)
_PROSE_WORD = re.compile(r"\b[a-z]{3,}\b", re.IGNORECASE)
CODE_SPAN_MARK = "\x1f"  # what the backticks of a code span in prose become: no shell syntax


def code_spans_in_prose(text: str) -> str:
    """Text with the backticks of Markdown code spans replaced by CODE_SPAN_MARK when the text
    around the spans is prose: it has a word of three letters or more that names no command
    ("Use `ls -la` to list files", "run `cat notes.txt`"). Documentation shows commands so;
    a shell runs backticks glued to a word (x`id`), after `$(` or in a value that is only
    substitutions and commands (`id`, ping `id`), and those stay as they are. The span's
    content is kept, so what is dangerous anywhere (/etc/passwd, curl ... | sh, $(...)) is
    still found."""
    spans = list(_CODE_SPAN.finditer(text))
    if not spans:
        return text
    outside = _CODE_SPAN.sub(" ", text)
    if not any(w.group().lower() not in COMMAND_NAMES for w in _PROSE_WORD.finditer(outside)):
        return text
    out = list(text)
    for m in spans:
        out[m.start()] = out[m.end() - 1] = CODE_SPAN_MARK
    return "".join(out)


# Prose around a shell separator (see _prose): two plain words in a row, and a clause end
_SEPARATED = re.compile(rb"[;|&\n]")
_TWO_WORDS = re.compile(rb"(?:^|\s)[a-z]{2,}[,]?\s{1,3}[a-z]{2,}(?:$|[\s.,!?:])")
_ONE_WORD_TAIL = re.compile(rb"\A\s{0,5}[a-z][\w'-]{0,30}\s{0,5}\Z")
_TWO_WORDS_END = re.compile(rb"[a-z]{2,}[,:]?\s{1,3}[a-z]{2,}[.!?,:]?\s{0,5}\Z")
_WORD = re.compile(rb"[a-z]{2,}")
_CLAUSE_CUT = re.compile(rb"[;&|\n`<>\x1f]|\$\(")  # \x1f: a code span's end (CODE_SPAN_MARK)


def _prose(data: bytes, start: int, end: int) -> bool:
    """Does a command found after a separator (`; ls -la`, `| echo chamber`) sit in English?

    - words before the separator, and the clause it starts goes on in plain words after its
      arguments, with no redirect ("The ls command is handy; ls -la is what I use");
    - or its only operand is one plain word and the text before the separator ends in two
      plain words ("Good night all; echo chamber", "Billing question | echo chamber").

    An injected command ends its clause with arguments, a path, a redirect or another
    separator ("; ls -la /tmp", "|echo pwned", "127.0.0.1; echo hello > /var/www/x")."""
    text = data.lower()
    sep = start
    while sep < end and text[sep : sep + 1] in (b" ", b"\t"):
        sep += 1
    if text[sep : sep + 1] not in (b";", b"|", b"&", b"\n"):
        return False  # the match does not start at a separator
    stop = _CLAUSE_CUT.search(text, sep + 1)
    clause = text[sep + 1 : stop.start() if stop else len(text)].strip(b" \t+")
    if not clause or (stop and text[stop.start() : stop.start() + 1] in (b"<", b">")):
        return False  # a redirect: a command line
    rest = clause.partition(b" ")[2]  # after the command name
    before = text[text.rfind(b"\n", 0, sep) + 1 : sep]
    if _TWO_WORDS.search(rest) and _WORD.search(before):
        return True
    return bool(_ONE_WORD_TAIL.match(rest) and _TWO_WORDS_END.search(before))


def metadata_address(text: str, *, whole_value: bool = False) -> str:
    """A cloud metadata IPv4 address hidden in text in any spelling inet_aton accepts (dotted,
    decimal, hex, octal, short forms) or IPv4-mapped IPv6; "" when there is none.

    A bare number (no dots) counts only as a whole value or after `//` or `@` (a URL host), so
    that ordinary numbers do not look like addresses.
    """
    for m in _IPV4_TOKEN.finditer(text):
        token = m.group(1)
        if "." not in token:
            before = text[max(0, m.start() - 2) : m.start()]
            if not (before.endswith(("//", "@")) or (whole_value and m.group(0) == text.strip())):
                continue
        ip = _inet_aton(token)
        if ip is not None and str(ipaddress.IPv4Address(ip)) in METADATA_IPS:
            return token
    for m in _IPV6_MAPPED.finditer(text):
        try:
            mapped = ipaddress.IPv6Address(
                m.group(0).strip(":") if m.group(0).startswith(":::") else m.group(0)
            ).ipv4_mapped
        except ValueError:
            continue
        if mapped is not None and str(mapped) in METADATA_IPS:
            return m.group(0)
    return ""


_IP_URL = re.compile(IP_URL)
# The networks a mesh's services and pods live in (RFC 1918, CGNAT, link-local, IPv6 unique
# local and link-local): a URL to one of them is how services name each other, not an
# inclusion (cloud metadata addresses are SSRF.Metadata, see metadata_address).
MESH_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


def remote_address(text: str) -> str:
    """The URL a value starts with, when its host is an IP address outside MESH_NETWORKS
    (http://203.0.113.9/shell.txt, ftp://[2001:db8::7]/x, http://127.0.0.1/): an inclusion
    from an attacker's host, or a loopback probe; "" otherwise (http://10.2.0.7:8080/hook,
    a host name)."""
    m = _IP_URL.match(text)
    if m is None:
        return ""
    after = text[m.end() : m.end() + 1]
    if after and (after.isalnum() or after in "-._"):
        return ""  # a host name that starts with digits (1.2.3.4.nip.io), or no address
    url = m.group(0).strip(" \t\r\n'\"")
    host = url.partition("://")[2].rpartition("@")[2]
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ""
    if any(ip in net for net in MESH_NETWORKS if net.version == ip.version):
        return ""
    return url


def _inet_aton(token: str) -> int | None:
    """The IPv4 address a token names in the spellings C's inet_aton accepts (what a libc-based
    HTTP client resolves): 1 to 4 parts, each decimal, 0x hex or 0-prefixed octal, the last
    filling the remaining bytes; None when it names none. Pure code: the core opens no sockets."""
    parts = token.split(".")
    if len(parts) > 4:
        return None
    values = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            base, digits = 16, part[2:]
        elif len(part) > 1 and part[0] == "0":
            base, digits = 8, part[1:]
        else:
            base, digits = 10, part
        if not (digits.isascii() and digits.isalnum()):
            return None
        try:
            values.append(int(digits, base))
        except ValueError:
            return None
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    for i, v in enumerate(head):
        last |= v << (8 * (3 - i))
    return last


def _query_lines(query: str) -> str:
    """The query for the pre-filter: one parameter per line, then again with each value on a
    line of its own (so value-anchored signatures see it), `+` as space."""
    lines = query.replace("+", " ").replace("&", "\n")
    return lines + "\n" + lines.replace("=", "\n") if "=" in lines else lines


def _looks_like_framing(name: str) -> bool:
    squeezed = re.sub(r"[^a-z]", "", name.lower())
    return squeezed in ("contentlength", "transferencoding")


def _body_location(path: str, named: bool) -> str:
    if named and path.startswith("$."):
        return "body:" + path[2:]
    return "body:" + path


def _starts(lengths: list[int]) -> list[int]:
    """Start offsets of parts joined with one separator byte."""
    return [0, *accumulate(n + 1 for n in lengths[:-1])]


_SETS: dict[int, SignatureSet] = {}
_LOCK = threading.Lock()
_DEFAULT: ThreatDetector | None = None


def signature_set(level: int, cache: CompiledCache | None = None) -> SignatureSet:
    """The compiled databases for a level, built once per process (compiling takes ~1 s;
    `cache`, given by the app, keeps them between starts)."""
    with _LOCK:
        if level not in _SETS:
            _SETS[level] = SignatureSet(level, cache)
        return _SETS[level]


def default_detector(cache: CompiledCache | None = None) -> ThreatDetector:
    """The process-wide level-1 detector the engine uses."""
    global _DEFAULT
    if _DEFAULT is None:
        detector = ThreatDetector(cache=cache)
        with _LOCK:
            if _DEFAULT is None:
                _DEFAULT = detector
    return _DEFAULT
