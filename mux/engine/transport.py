"""The one seam between mux and the network: send an ``UpstreamRequest``, get status, headers and body.

``AiohttpTransport`` is the default: on this project's benchmark a pass-through over aiohttp forwards 13 to
31 times the requests per CPU-second of the same pass-through over httpx 0.28 (see bench/).
``HttpxTransport`` serves where httpx's API is wanted (a custom ``httpx.AsyncClient``,
``httpx.MockTransport`` in tests). Each maps its library's failures to
``UpstreamError``/``UpstreamTimeout`` here, at the boundary; nothing above this module sees aiohttp or httpx.

The transport applies only the connect timeout; the time to answer is bounded by the caller (Dispatch), which
knows the attempt's deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from mux.errors import UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    import aiohttp
    import httpx

    from mux.config.schema import ProviderConfig
    from mux.providers.base import UpstreamRequest


class UpstreamResponse(Protocol):
    """An upstream answer whose headers have arrived; the body is read with ``read`` or ``chunks``."""

    status: int
    headers: Mapping[str, str]  # lower-case names

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None:
        """Free the connection; one whose body was not read to the end is dropped, not reused."""


class Transport(Protocol):
    async def send(self, request: UpstreamRequest, provider: ProviderConfig) -> UpstreamResponse:
        """Send ``request`` and answer once the response headers arrive (connect timeout applied here)."""

    async def aclose(self) -> None: ...


def _connect_failed(provider: ProviderConfig) -> UpstreamError:
    return UpstreamError(f"Could not connect to provider '{provider.name}'.", code="upstream_unreachable")


def _connection_lost(provider: ProviderConfig) -> UpstreamError:
    return UpstreamError(f"The connection to provider '{provider.name}' was lost.", code="upstream_connection_lost")


def _connect_timeout(provider: ProviderConfig) -> UpstreamTimeout:
    return UpstreamTimeout(f"Connecting to provider '{provider.name}' timed out.", code="upstream_connect_timeout")


class _AiohttpResponse:
    __slots__ = ("_response", "_provider", "status", "headers")

    def __init__(self, response: aiohttp.ClientResponse, provider: ProviderConfig) -> None:
        self._response = response
        self._provider = provider
        self.status = response.status
        self.headers: Mapping[str, str] = _LowerHeaders(response.headers)

    async def read(self) -> bytes:
        import aiohttp

        try:
            return await self._response.read()
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _connection_lost(self._provider) from exc
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _connection_lost(self._provider) from exc

    async def close(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()


class _LowerHeaders(Mapping[str, str]):
    """A read-only view answering lower-case header names over aiohttp's case-insensitive mapping."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers

    def get(self, name: str, default: Any = None) -> Any:
        return self._headers.get(name, default)

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._headers

    def __iter__(self) -> Iterator[str]:
        return (k.lower() for k in self._headers)

    def __len__(self) -> int:
        return len(self._headers)


class AiohttpTransport:
    """Pooled aiohttp client, created on first use inside the running loop and closed by ``aclose``."""

    def __init__(self, *, limit: int = 1000, limit_per_host: int = 0, keepalive_s: float = 30.0) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            keepalive_timeout=self._keepalive_s,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None),
            raise_for_status=False,
            trust_env=False,
        )
        return self._session

    def _timeout(self, connect_s: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(connect_s)
        if timeout is None:
            import aiohttp

            timeout = self._timeouts[connect_s] = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=connect_s, sock_read=None
            )
        return timeout

    async def send(self, request: UpstreamRequest, provider: ProviderConfig) -> _AiohttpResponse:
        import aiohttp

        session = self._session or self._open()
        try:
            response = await session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=self._timeout(provider.connect_timeout_s),
                allow_redirects=False,
            )
        except aiohttp.ServerTimeoutError as exc:
            raise _connect_timeout(provider) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _connect_failed(provider) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _connection_lost(provider) from exc
        return _AiohttpResponse(response, provider)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _HttpxResponse:
    __slots__ = ("_response", "_provider", "status", "headers")

    def __init__(self, response: httpx.Response, provider: ProviderConfig) -> None:
        self._response = response
        self._provider = provider
        self.status = response.status_code
        self.headers = response.headers

    async def read(self) -> bytes:
        import httpx

        try:
            return await self._response.aread()
        except httpx.TransportError as exc:
            raise _connection_lost(self._provider) from exc
        finally:
            await self._response.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.TransportError as exc:
            raise _connection_lost(self._provider) from exc

    async def close(self) -> None:
        await self._response.aclose()


class HttpxTransport:
    """The same seam over an ``httpx.AsyncClient`` (injected, or made with default pooling)."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client

    async def send(self, request: UpstreamRequest, provider: ProviderConfig) -> _HttpxResponse:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=None, trust_env=False)
        timeout = httpx.Timeout(None, connect=provider.connect_timeout_s)
        built = self._client.build_request(
            request.method, request.url, content=request.body, headers=request.headers, timeout=timeout
        )
        try:
            response = await self._client.send(built, stream=True)
        except httpx.ConnectTimeout as exc:
            raise _connect_timeout(provider) from exc
        except httpx.ConnectError as exc:
            raise _connect_failed(provider) from exc
        except httpx.TransportError as exc:
            raise _connection_lost(provider) from exc
        return _HttpxResponse(response, provider)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


__all__ = ["AiohttpTransport", "HttpxTransport", "Transport", "UpstreamResponse"]
