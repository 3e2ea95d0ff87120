"""serve's HTTP callers in a cluster: ServiceAccount tokens (TokenReview), routes by RBAC
(SubjectAccessReview on meshward.io resources), verdicts cached briefly and boundedly.

The reviews run off the event loop (the Kubernetes client blocks) on their own threads, at most
`MAX_IN_FLIGHT` at once, each bounded by the client's timeout. An error (the API server
unreachable, serve not allowed to create reviews) is never cached and never a yes: the guard
answers 503.

Caching: a token's verdict is kept `ttl` seconds (a revoked token or a deleted bound pod is
honoured within that), a refusal `negative_ttl` seconds (so a client retrying a bad token does
not cost a review each time), keyed by the token's SHA-256, never the token; at most `size`
entries of each kind, the oldest evicted first.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from meshward.app.auth import API_GROUP, Permission, Principal
from meshward.kube.review import Access, Reviewer, UserInfo

T = TypeVar("T")
MAX_IN_FLIGHT = 16


@dataclass
class Verdicts(Generic[T]):
    """A bounded map with per-entry expiry (insertion order is eviction order)."""

    size: int
    clock: Callable[[], float] = time.monotonic
    _items: OrderedDict[Hashable, tuple[float, T]] = field(default_factory=OrderedDict)

    def get(self, key: Hashable) -> tuple[bool, T | None]:
        found = self._items.get(key)
        if found is None:
            return False, None
        expires, value = found
        if expires <= self.clock():
            del self._items[key]
            return False, None
        return True, value

    def put(self, key: Hashable, value: T, ttl: float) -> None:
        self._items.pop(key, None)
        self._items[key] = (self.clock() + ttl, value)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def principal_from(user: UserInfo) -> Principal:
    return Principal(user.username, user.groups, uid=user.uid, extra=user.extra)


def access_for(permission: Permission) -> Access:
    return Access(
        permission.verb,
        group=API_GROUP,
        resource=permission.resource,
        namespace=permission.namespace,
    )


class KubeAuth:
    """Both the guard's Authenticator and its Authorizer, over one Reviewer."""

    def __init__(
        self,
        reviewer: Reviewer,
        ttl: float = 10.0,
        negative_ttl: float = 2.0,
        size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reviewer = reviewer
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self.tokens: Verdicts[Principal | None] = Verdicts(size, clock)
        self.access: Verdicts[bool] = Verdicts(size, clock)
        self.reviews = 0  # calls made to the API server (cache misses)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        # its own threads: a slow API server must not hold up the default executor's other
        # work (audit writes, store reads)
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="kube-review")

    async def _off_loop(self, fn: Callable[..., T], *args: object) -> T:
        async with self._slots:
            self.reviews += 1
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def authenticate(self, token: str) -> Principal | None:
        key = hashlib.sha256(token.encode()).digest()
        hit, principal = self.tokens.get(key)
        if hit:
            return principal
        user = await self._off_loop(self.reviewer.review_token, token)
        principal = principal_from(user) if user is not None else None
        self.tokens.put(key, principal, self.ttl if principal else self.negative_ttl)
        return principal

    async def allowed(self, principal: Principal, permission: Permission | None) -> bool:
        if permission is None:  # a route outside the permission table: nobody, in a cluster
            return False
        access = access_for(permission)
        key = (principal.name, principal.uid, principal.groups, principal.extra, access)
        hit, verdict = self.access.get(key)
        if hit:
            return bool(verdict)
        user = UserInfo(principal.name, principal.uid, principal.groups, principal.extra)
        ok = await self._off_loop(self.reviewer.allowed, user, access)
        self.access.put(key, ok, self.ttl if ok else self.negative_ttl)
        return ok
