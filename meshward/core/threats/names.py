"""Every threat name meshward emits or has fixed for a coming detector: the one registry.

Names are dotted, public (alerts, the API, dashboards and saved JSONL carry them) and never
renamed. A module that reports a threat imports its name from here; `Threat` objects built
by sources are checked against `THREAT_NAMES` in the tests (tests/core/threats/test_names.py).
"""

from __future__ import annotations

# embedded attacks in HTTP requests (the signature sets and libinjection find them)
SQLI = "SQL.Injection"
XSS = "Cross.Site.Scripting"
TRAVERSAL = "Path.Traversal"
RFI = "Remote.File.Inclusion"
CMDI = "Command.Injection"
SSTI = "Template.Injection"
JNDI = "JNDI.Injection"
PHP = "PHP.Injection"
NOSQL = "NoSQL.Injection"
SSRF = "SSRF.Metadata"
JAVA = "Java.Deserialization"
XXE = "XML.External.Entity"
CRLF = "HTTP.Header.Injection"
SMUGGLING = "HTTP.Request.Smuggling"
NEGATIVE_LENGTH = "HTTP.Negative.Body.Length"
LDAP_INJECTION = "LDAP.Injection"
MAIL_HEADER_INJECTION = "Mail.Header.Injection"
SERVER_SIDE_INCLUDE = "Server.Side.Include"
SCANNER_USER_AGENT = "Scanner.UserAgent"
# what the embedded-threat detector finds today
HTTP_THREATS: tuple[str, ...] = (
    SQLI,
    XSS,
    TRAVERSAL,
    RFI,
    CMDI,
    SSTI,
    JNDI,
    PHP,
    NOSQL,
    SSRF,
    JAVA,
    XXE,
    CRLF,
    SMUGGLING,
    NEGATIVE_LENGTH,
    LDAP_INJECTION,
    MAIL_HEADER_INJECTION,
    SERVER_SIDE_INCLUDE,
    SCANNER_USER_AGENT,
)

# the caller's and the callee's sidecars saw one call differently (tap/envoy/join.py)
EXCHANGE_MISMATCH = "Exchange.Mismatch"

# network events the node tap finds (tap/node/netthreats.py)
PING_OF_DEATH = "Ping.Death"
TEARDROP = "IP.Fragment.Teardrop"
ICMP_FLOOD = "ICMP.Flood"
ICMP_TUNNELING = "ICMP.Tunneling"
UDP_FLOOD = "UDP.Flood"
UDP_PORT_SCAN = "UDP.Port.Scan"
UDP_NEW_PEER = "UDP.New.Peer"
DNS_AMPLIFICATION = "DNS.Amplification"
DNS_ZONE_TRANSFER = "DNS.Zone.Transfer"
DNS_TUNNELING = "DNS.Tunneling"
NETWORK_THREATS: tuple[str, ...] = (
    PING_OF_DEATH,
    TEARDROP,
    ICMP_FLOOD,
    ICMP_TUNNELING,
    UDP_FLOOD,
    UDP_PORT_SCAN,
    UDP_NEW_PEER,
    DNS_AMPLIFICATION,
    DNS_ZONE_TRANSFER,
    DNS_TUNNELING,
)

# the mesh guard: configuration changes the controller finds, control-plane and bypass
# traffic the node tap finds (docs/mesh-guard.md)
MESH_MTLS_WEAKENED = "Mesh.MTLS.Weakened"
MESH_FILTER_TAMPERED = "Mesh.Filter.Tampered"
MESH_INJECTION_DISABLED = "Mesh.Injection.Disabled"
MESH_UNMESHED_POD = "Mesh.Unmeshed.Pod"
MESH_POLICY_WIDENED = "Mesh.Policy.Widened"
MESH_CONTROL_PLANE_ACCESS = "Mesh.ControlPlane.Access"
MESH_SIDECAR_BYPASS = "Mesh.Sidecar.Bypass"
MESH_THREATS: tuple[str, ...] = (
    MESH_MTLS_WEAKENED,
    MESH_FILTER_TAMPERED,
    MESH_INJECTION_DISABLED,
    MESH_UNMESHED_POD,
    MESH_POLICY_WIDENED,
    MESH_CONTROL_PLANE_ACCESS,
    MESH_SIDECAR_BYPASS,
)

THREAT_NAMES: frozenset[str] = frozenset(
    (*HTTP_THREATS, EXCHANGE_MISMATCH, *NETWORK_THREATS, *MESH_THREATS)
)
