"""The load generator: wrk (Debian's package, installed when missing), driven by a generated Lua script.

wrk is C and spends a few percent of a core at these rates, so it is never what limits a figure; its CPU
is reported beside every figure to show that. The script makes every request unique where the endpoint
needs it (an Idempotency-Key per request, a user drawn from the run's users) and counts the statuses.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

RESULT_PREFIX = "RESULT "
INSTALL_TIMEOUT_S = 600
RUN_GRACE_S = 30


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True, kw_only=True)
class Request:
    """What one scenario sends. `{user}` in the path or body is replaced by one of `users`, drawn at random
    per request; `{key}` by a key unique to the request."""

    method: str
    path: str
    expected_status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    users: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class WrkResult:
    requests: int
    expected: int
    unexpected: int
    socket_errors: int
    first_unexpected: str | None
    duration_s: float
    p50_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.expected / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.unexpected + self.socket_errors


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise WrkError("wrk is missing: install Debian's package (apt-get install wrk) or run as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        subprocess.run(command, check=True, env=env, timeout=INSTALL_TIMEOUT_S, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise WrkError("apt-get installed wrk but it is not on PATH")
    return found


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for this text


def script(request: Request, run_id: str, delay_ms: float | None = None) -> str:
    headers = ", ".join(f"[{_lua_string(name)}] = {_lua_string(value)}" for name, value in request.headers.items())
    users = ", ".join(_lua_string(user) for user in request.users) or '""'
    return f"""
local threads = {{}}
local next_id = 1
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local users = {{{users}}}
local method, path_template, body_template = {_lua_string(request.method)}, {_lua_string(request.path)}, {
        _lua_string(request.body or "")
    }
local has_body = {"true" if request.body is not None else "false"}
local expected_status = {request.expected_status}
local base_headers = {{{headers}}}
local count = 0
expected, unexpected, first_unexpected = 0, 0, ""

function init(args)
  math.randomseed(tid * 7919 + 17)
end

function request()
  count = count + 1
  local key = "{run_id}-" .. tid .. "-" .. count
  local user = users[math.random(1, #users)]
  local path = path_template:gsub("{{user}}", user)
  local headers = {{}}
  for name, value in pairs(base_headers) do headers[name] = value:gsub("{{key}}", key) end
  local body = nil
  if has_body then body = body_template:gsub("{{user}}", user):gsub("{{key}}", key) end
  return wrk.format(method, path, headers, body)
end

{f"function delay() return {round(delay_ms)} end" if delay_ms else ""}

function response(status, headers, body)
  if status == expected_status then
    expected = expected + 1
  else
    unexpected = unexpected + 1
    if first_unexpected == "" then first_unexpected = status .. " " .. string.sub(body or "", 1, 300) end
  end
end

function done(summary, latency, requests)
  local total_expected, total_unexpected, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    total_expected = total_expected + thread:get("expected")
    total_unexpected = total_unexpected + thread:get("unexpected")
    local seen = thread:get("first_unexpected")
    if first == "" and seen ~= nil then first = seen end
  end
  local e = summary.errors
  io.write(string.format('{RESULT_PREFIX}{{"requests": %d, "duration_us": %d, "expected": %d, "unexpected": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d, "first_unexpected": %q}}\\n',
    summary.requests, summary.duration, total_expected, total_unexpected,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), first))
end
"""


def run(
    wrk: str,
    base_url: str,
    request: Request,
    *,
    run_id: str,
    work_dir: Path,
    duration_s: float,
    connections: int,
    threads: int = 1,
    timeout_s: float = 5.0,
    rate_per_s: float | None = None,
) -> WrkResult:
    """`rate_per_s`: about that many requests a second, each connection pausing between its requests
    (Debian's wrk has no fixed-rate mode; the pause ignores the latency, so the rate lands a little under)."""
    lua = work_dir / f"{run_id}.lua"
    delay_ms = 1000 * connections / rate_per_s if rate_per_s else None
    lua.write_text(script(request, run_id, delay_ms))
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(lua),
        base_url,
    ]
    cpu_before_s = children_cpu_s()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=duration_s + RUN_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise WrkError(f"wrk did not finish: {' '.join(command)}") from None
    # wrk has exited and been reaped by communicate(): the children's CPU grew by wrk's alone (the servers,
    # also children of the benchmark, are still running and not yet counted there).
    cpu_s = children_cpu_s() - cpu_before_s
    line = next((line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)), None)
    if process.returncode != 0 or line is None:
        raise WrkError(f"wrk failed ({process.returncode}): {' '.join(command)}\n{stdout}\n{stderr}")
    data = json.loads(line[len(RESULT_PREFIX) :])
    return WrkResult(
        requests=data["requests"],
        expected=data["expected"],
        unexpected=data["unexpected"],
        socket_errors=data["socket_errors"],
        first_unexpected=data["first_unexpected"] or None,
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        cpu_s=cpu_s,
    )


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
