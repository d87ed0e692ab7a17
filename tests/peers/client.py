#!/usr/bin/env python3
"""A real MCP client (the Python `mcp` SDK 2.x) for Tollgate's whole-binary tests.

Connects to an MCP endpoint over HTTP, runs steps in ONE session, and prints
one JSON document on stdout for the Rust test to assert on:

    client.py [OPTIONS] URL list
    client.py [OPTIONS] URL call NAME [ARGS_JSON]
    client.py [OPTIONS] URL steps STEPS_JSON   (or `-` to read stdin)

    OPTIONS: --transport streamable|sse   Streamable HTTP (default; URL is the endpoint) or the
                                          legacy HTTP+SSE transport (URL is the SSE endpoint)
             --mode auto|legacy           see below
             --trace                      record every HTTP exchange under `http`
             --header 'Name: value'       an extra HTTP header (repeatable)
             --timeout SECONDS            for each request (default 30)
             --elicit RESULT_JSON         declare the elicitation capability and answer every
                                          `elicitation/create` with this ElicitResult
                                          (e.g. '{"action": "accept", "content": {"name": "Ada"}}')
             --sample TEXT                declare the sampling capability and answer every
                                          `sampling/createMessage` with an assistant message TEXT

STEPS_JSON is a list of steps, each one of
    {"op": "list"}
    {"op": "call", "name": "echo", "arguments": {"message": "hi"}, "repeat": 3}
    {"op": "call", "name": "slow", "arguments": {}, "progress": true}
        (`progress`: send a progress token and record the notifications/progress received for
        the call under `progress`, in order: [{"progress": 1, "total": 5, "message": null,
        "at": 0.51}, ...], where `at` is seconds since the call was sent; the call's own
        `elapsed` is seconds until its result arrived, so a test can tell streamed
        notifications from ones delivered all at once with the result)

Output:
    {"protocol_version": "...", "server_info": {...} | null,
     "results": [ {"op": "list", "tools": [<Tool>, ...]},
                  {"op": "call", "name": "echo", "result": <CallToolResult>},
                  {"op": "call", "name": "x", "error": {"code": -32602, "message": "...", "data": ...}},
                  {"op": "call", "name": "y", "exception": "ValidationError: ..."} ],
     "http": [ {"method": "POST", "status": 200, "mcp_method": "...", ...}, ... ],   (with --trace)
     "elicitations": [<ElicitRequestParams>, ...],    (with --elicit: the requests answered, in order)
     "samplings": [<CreateMessageRequestParams>, ...]}  (with --sample: likewise)

Results are the SDK's pydantic models dumped by alias (`isError`, `structuredContent`,
`_meta`), so they read as on the wire. A JSON-RPC error to a call is data (`error`); an
exception that is not an MCP error (e.g. a reply the SDK cannot validate) is reported
as `exception` and the remaining steps still run. Exit status: 0 when the session was
established and every step ran; 1 (with a message on stderr and a JSON `connect_error`
on stdout) when the connection or handshake failed; 2 on a usage error.

`--mode auto` (the SDK's default) first probes `server/discover` and falls back to the
`initialize` handshake when the server answers with a JSON-RPC error; `--mode legacy`
goes straight to `initialize`. `--trace` records every HTTP exchange, so a test can see
which of the two happened.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any

import anyio
import httpx2
from mcp import types
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


def dump(model: Any) -> Any:
    if model is None:
        return None
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="client.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--transport", choices=["streamable", "sse"], default="streamable")
    p.add_argument("--mode", default="auto", help="auto (probe server/discover first) or legacy (initialize)")
    p.add_argument("--trace", action="store_true", help="record every HTTP exchange under `http`")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for each request (default 30)")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="an extra HTTP header")
    p.add_argument("--elicit", metavar="RESULT_JSON", help="answer every elicitation/create with this ElicitResult")
    p.add_argument("--sample", metavar="TEXT", help="answer every sampling/createMessage with this assistant text")
    p.add_argument("url")
    p.add_argument("command", choices=["list", "call", "steps"])
    p.add_argument("rest", nargs="*")
    return p.parse_args(argv)


def steps_from(ns: argparse.Namespace) -> list[dict[str, Any]]:
    if ns.command == "list":
        if ns.rest:
            raise ValueError("`list` takes no arguments")
        return [{"op": "list"}]
    if ns.command == "call":
        if not 1 <= len(ns.rest) <= 2:
            raise ValueError("`call` takes NAME [ARGS_JSON]")
        args = json.loads(ns.rest[1]) if len(ns.rest) == 2 else None
        return [{"op": "call", "name": ns.rest[0], "arguments": args}]
    if len(ns.rest) != 1:
        raise ValueError("`steps` takes one JSON list (or `-` for stdin)")
    text = sys.stdin.read() if ns.rest[0] == "-" else ns.rest[0]
    steps = json.loads(text)
    if not isinstance(steps, list) or not all(isinstance(s, dict) and s.get("op") in ("list", "call") for s in steps):
        raise ValueError('steps must be a list of {"op": "list"} / {"op": "call", "name": ...}')
    return steps


class ServerRequests:
    """Answers the requests a server sends the client (elicitation, sampling) as told, and records them.

    A callback given to the SDK also declares the capability in `initialize`, so servers that
    offer tools only to capable clients (server-everything's `trigger-elicitation-request`,
    `trigger-sampling-request`) list them."""

    def __init__(self, ns: argparse.Namespace, out: dict[str, Any]) -> None:
        self.elicit_answer = types.ElicitResult.model_validate(json.loads(ns.elicit)) if ns.elicit else None
        self.sample_answer = ns.sample
        if self.elicit_answer is not None:
            out["elicitations"] = []
        if self.sample_answer is not None:
            out["samplings"] = []
        self.out = out

    def callbacks(self) -> dict[str, Any]:
        cbs: dict[str, Any] = {}
        if self.elicit_answer is not None:
            cbs["elicitation_callback"] = self.on_elicit
        if self.sample_answer is not None:
            cbs["sampling_callback"] = self.on_sample
        return cbs

    async def on_elicit(self, context: Any, params: Any) -> Any:
        self.out["elicitations"].append(dump(params))
        return self.elicit_answer

    async def on_sample(self, context: Any, params: Any) -> Any:
        self.out["samplings"].append(dump(params))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=self.sample_answer),
            model="tollgate-e2e",
            stop_reason="endTurn",
        )


class Trace:
    """Records each HTTP exchange: method, status, the JSON-RPC method(s) sent, and the reply's type."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []

    async def on_request(self, request: httpx2.Request) -> None:
        entry: dict[str, Any] = {"method": request.method, "path": request.url.path}
        for h in ("mcp-protocol-version", "mcp-method", "mcp-name", "mcp-session-id", "accept"):
            if h in request.headers:
                entry[h] = request.headers[h]
        if request.method == "POST":
            try:
                body = json.loads(request.content or b"null")
                msgs = body if isinstance(body, list) else [body]
                entry["mcp_method"] = [m.get("method") for m in msgs if isinstance(m, dict)]
                entry["request"] = body
            except (ValueError, httpx2.RequestNotRead):
                pass
        request.extensions["tollgate_trace"] = entry
        self.exchanges.append(entry)

    async def on_response(self, response: httpx2.Response) -> None:
        entry = response.request.extensions.get("tollgate_trace")
        if entry is not None:
            entry["status"] = response.status_code
            entry["content_type"] = response.headers.get("content-type")


async def run(ns: argparse.Namespace, steps: list[dict[str, Any]]) -> int:
    trace = Trace() if ns.trace else None
    headers = {}
    for h in ns.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()

    def http_client_factory(
        headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None
    ) -> httpx2.AsyncClient:
        c = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
        if trace is not None:
            c.event_hooks = {"request": [trace.on_request], "response": [trace.on_response]}
        return c

    http_client = http_client_factory(headers=headers or None)
    out: dict[str, Any] = {"results": []}
    server_requests = ServerRequests(ns, out)
    async with http_client:
        if ns.transport == "sse":
            transport = sse_client(ns.url, headers=headers or None, httpx_client_factory=http_client_factory)
        else:
            transport = streamable_http_client(ns.url, http_client=http_client)
        client = Client(
            transport, mode=ns.mode, read_timeout_seconds=ns.timeout, cache=None, **server_requests.callbacks()
        )
        try:
            await client.__aenter__()
        except Exception as e:  # the handshake failed: report it, the test decides
            out["connect_error"] = describe(e)
            if trace is not None:
                out["http"] = trace.exchanges
            print(json.dumps(out))
            print(f"client.py: could not connect to {ns.url}: {out['connect_error']}", file=sys.stderr)
            return 1
        try:
            out["protocol_version"] = client.protocol_version
            out["server_info"] = dump(client.server_info)
            for step in steps:
                for _ in range(int(step.get("repeat", 1))):
                    out["results"].append(await run_step(client, step))
        finally:
            try:
                await client.__aexit__(None, None, None)
            except* anyio.BrokenResourceError:
                # The SDK's legacy SSE reader can receive one more event (a
                # server notification) after the client closed its stream;
                # every step's result is in already.
                out["teardown"] = "the SDK's SSE reader saw an event after the client closed"
    if trace is not None:
        out["http"] = trace.exchanges
    print(json.dumps(out))
    return 0


async def run_step(client: Client, step: dict[str, Any]) -> dict[str, Any]:
    if step["op"] == "list":
        entry: dict[str, Any] = {"op": "list"}
        try:
            listing = await client.list_tools()
            entry["tools"] = [dump(t) for t in listing.tools]
        except MCPError as e:
            entry["error"] = dump(e.error)
        except Exception as e:
            entry["exception"] = describe(e)
        return entry
    entry = {"op": "call", "name": step["name"]}
    progress_callback = None
    started = time.monotonic()
    if step.get("progress"):
        entry["progress"] = []

        async def progress_callback(progress: float, total: float | None, message: str | None) -> None:
            at = round(time.monotonic() - started, 3)
            entry["progress"].append({"progress": progress, "total": total, "message": message, "at": at})

    try:
        result = await client.call_tool(step["name"], step.get("arguments"), progress_callback=progress_callback)
        entry["result"] = dump(result)
    except MCPError as e:
        entry["error"] = dump(e.error)
    except Exception as e:
        entry["exception"] = describe(e)
    if step.get("progress"):
        entry["elapsed"] = round(time.monotonic() - started, 3)
    return entry


def describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    if isinstance(e, MCPError):
        return f"MCPError {e.code}: {e.message}"
    return f"{type(e).__name__}: {e}"


def main(argv: list[str]) -> int:
    ns = parse_args(argv)
    try:
        steps = steps_from(ns)
    except (ValueError, json.JSONDecodeError) as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 2
    try:
        return anyio.run(run, ns, steps)
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
