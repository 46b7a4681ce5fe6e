"""An OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks, over real HTTP.

It answers /v1/chat/completions (with `usage`) the way a model following the unification prompts
would, and misbehaves on request per passage: each passage carries a tag (`编号P0007`), and
`behaviours[tag]` picks what the server does with it:

    ok              a question the passage answers, an answer drawn from it
    rate_limit      the first `burst` requests: 429 with Retry-After: `retry_after`
    server_error    the first `burst` requests: 500
    timeout_once    the first request is answered after `slow_s` seconds
    malformed       the question reply is broken JSON
    fenced          replies wrapped in ``` fences with a remark before and after (still readable)
    ignore          an answer about something else (drift)
    cite            an answer that says it read a reference (leak)
    english         an answer in English
    short           a one-line answer to a long passage
    long_question   a question far over any sensible length
    judge_fail      the judge fails the pair
    not_json        the question request gets a 200 whose body is an HTML page, not JSON

With `expect_key`, a request whose bearer key differs gets a 401 whose body echoes the key it
sent, as OpenAI-compatible gateways do ("Incorrect API key provided: ..."); with `forbidden_models`
or `known_models`, a request for such a (or any other) model gets a 403 (or 404) echoing its
Authorization header.

Requests and answered completions are counted per (tag, step), and the requests in flight
(`in_flight`, and the most at once: `most_in_flight`). With `hold_after=N` it answers N
completions and then holds every later request unanswered until `release()`: a run can be killed
with requests in flight that were never answered, as a crash would leave them. Run as a script,
it prints its port and serves until killed (SIGINT: then a last line of JSON with what it
counted and its own CPU seconds).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TAG = re.compile(r"编号(P\d+)")
PASSAGE = re.compile(r"<<<\n(.*?)\n>>>", re.S)
QUESTION = re.compile(r"问题：(.*?)\n")


def step_of(prompt: str) -> str:
    if '"verdict"' in prompt:
        return "judge"
    if '"answer"' in prompt:
        return "answer"
    return "question"


def reply_for(step: str, behaviour: str, passage: str) -> str:
    topic = re.sub(r"[^\u4e00-\u9fff]", "", passage)[:12]
    if step == "question":
        if behaviour == "malformed":
            return '{"question": "' + topic + '是怎么回事'
        if behaviour == "long_question":
            return json.dumps({"question": "请详细解释" + topic * 30 + "？"}, ensure_ascii=False)
        body = json.dumps({"question": f"我最近在调理身体，想请教：{topic}这方面应当怎样理解和运用？"}, ensure_ascii=False)
        return f"好的，问题如下：\n```json\n{body}\n```\n以上。" if behaviour == "fenced" else body
    if step == "answer":
        answers = {
            "ignore": "建议您多喝热水，保持作息规律，早睡早起，适当运动，饮食清淡，心情舒畅，如有不适及时到医院就诊检查。",
            "cite": "根据原文所述，" + passage,
            "english": "Astragalus root tonifies qi and raises yang; it consolidates the exterior and stops sweating. " * 3,
            "short": "可以。",
        }
        answer = answers.get(behaviour, "从中医的角度来看，" + passage.replace("\n", "") + "临证时还需结合具体情况辨证施治。")
        body = json.dumps({"answer": answer}, ensure_ascii=False)
        return f"```json\n{body}\n```" if behaviour == "fenced" else body
    if behaviour == "judge_fail":
        return json.dumps({"verdict": "fail", "reason": "回答超出了知识范围"}, ensure_ascii=False)
    return json.dumps({"verdict": "pass", "reason": ""}, ensure_ascii=False)


class ChatServer:
    def __init__(self, latency_ms: float = 0, behaviours: dict | None = None, json_mode: bool = True, burst: int = 2,
                 retry_after: str = "0", slow_s: float = 1.0, port: int = 0, hold_after: int | None = None,
                 expect_key: str | None = None, forbidden_models: tuple = (), known_models: tuple | None = None):
        self.expect_key, self.forbidden_models, self.known_models = expect_key, tuple(forbidden_models), known_models
        self.latency = latency_ms / 1000
        self.behaviours = behaviours or {}
        self.json_mode = json_mode
        self.burst, self.retry_after, self.slow_s = burst, retry_after, slow_s
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (tag, step) -> requests received
        self.answered: Counter = Counter()  # (tag, step) -> 200 completions sent
        self.statuses: Counter = Counter()
        self.in_flight = 0  # completions requests being handled now
        self.most_in_flight = 0  # the most ever handled at once
        self.first_at = self.last_at = 0.0  # epoch seconds: the first request came, the last was answered
        self.hold_after = hold_after  # answer this many completions, then hold every request
        self._granted = 0
        self._released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes: without this, Nagle's algorithm and
            # delayed ACKs hold each response back by tens of milliseconds.
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                with server.lock:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                    server.first_at = server.first_at or time.time()
                try:
                    status, payload, headers = server.handle(body, self.headers.get("authorization") or "")
                finally:
                    with server.lock:
                        server.in_flight -= 1
                        server.last_at = time.time()
                self._send(status, payload, headers)

            def _send(self, status, payload, headers=None):
                page = isinstance(payload, str)  # a gateway's HTML page instead of JSON
                data = payload.encode("utf-8") if page else json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("content-type", "text/html; charset=utf-8" if page else "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # a burst of new connections must not wait in a 5-deep backlog

            def handle_error(self, request, client_address):
                # A client that gave up (time-out, kill) closes its socket: not a server fault.
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def refuse(self, authorization: str, model: str | None) -> tuple[int, dict, dict] | None:
        """The gateway's refusals, each echoing what the client sent (the leak a client must mask)."""
        sent = authorization.removeprefix("Bearer ").strip()
        if self.expect_key is not None and sent != self.expect_key:
            return self._status(401, {"error": {"message": f"Incorrect API key provided: {sent}. You can find your API key at the console.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}})
        if model in self.forbidden_models:
            return self._status(403, {"error": {"message": f"key {sent} may not use model {model}", "authorization": authorization}})
        if self.known_models is not None and model not in self.known_models:
            return self._status(404, {"error": {"message": f"The model {model} does not exist or you do not have access to it (Authorization: {authorization})"}})
        return None

    def handle(self, body: dict, authorization: str = "") -> tuple[int, dict, dict]:
        messages = body.get("messages") or []
        prompt = "\n".join(m.get("content") or "" for m in messages)
        step = step_of(prompt)
        found = TAG.search(prompt)
        tag = found.group(1) if found else "-"
        passage = PASSAGE.search(prompt)
        passage = passage.group(1) if passage else prompt
        behaviour = self.behaviours.get(tag, "ok")
        with self.lock:
            self.requests[(tag, step)] += 1
            seen = self.requests[(tag, step)]
        refused = self.refuse(authorization, body.get("model"))
        if refused:
            return refused
        if self.latency:
            time.sleep(self.latency)
        with self.lock:
            held = self.hold_after is not None and self._granted >= self.hold_after
            self._granted += not held
        if held:
            # Never answered: the client is killed meanwhile, so this request cost nothing.
            self._released.wait()
            return self._status(503, {"error": {"message": "held"}})
        if body.get("response_format") and not self.json_mode:
            return self._status(400, {"error": {"message": "response_format is not supported by this server"}})
        if behaviour == "rate_limit" and seen <= self.burst:
            return self._status(429, {"error": {"message": "rate limited"}}, {"retry-after": self.retry_after})
        if behaviour == "server_error" and seen <= self.burst:
            return self._status(500, {"error": {"message": "internal error"}})
        if behaviour == "timeout_once" and seen == 1:
            time.sleep(self.slow_s)
        if behaviour == "not_json" and step == "question":
            return self._status(200, "<html><body>502 Bad Gateway</body></html>")
        content = reply_for(step, behaviour, passage)
        with self.lock:
            self.answered[(tag, step)] += 1
            self.statuses[200] += 1
        return 200, {
            "id": f"chatcmpl-{tag}-{step}-{seen}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(content), "total_tokens": len(prompt) + len(content)},
        }, {}

    def _status(self, status: int, payload: dict, headers: dict | None = None):
        with self.lock:
            self.statuses[status] += 1
        return status, payload, headers or {}

    @property
    def answered_total(self) -> int:
        with self.lock:
            return sum(self.answered.values())

    def release(self) -> None:
        """Let held requests go (each gets a 503) and stop holding."""
        self.hold_after = None
        self._released.set()

    def start(self) -> "ChatServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0)
    args = parser.parse_args()
    server = ChatServer(latency_ms=args.latency_ms, port=args.port)
    print(server.port, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:  # the figures a benchmark reads after stopping the server with SIGINT
        print(json.dumps({"requests": sum(server.requests.values()), "most_in_flight": server.most_in_flight,
                          "first_at": server.first_at, "last_at": server.last_at, "cpu_s": time.process_time()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
