"""Ack latency of the Slack bot over real HTTP: 200 signed slash commands at concurrency 1
and at 20, against ``clusterbook-bot http`` (gunicorn, one worker, threads) with its Web API
pointed at the local stand-in.

The commands cycle through what people type and what is answered in the ack itself: help,
the runbook list, a runbook's parameters, a cluster's status and the recent runs (both read
the run index), and a run whose parameter is refused (catalogue look-up and full parameter
validation, no run started). Each request is freshly signed, as Slack does.

Target: p99 <= 50 ms at 20 concurrent (Slack allows 3,000 ms).
Last line: {"p50_ms_c1": ..., "p99_ms_c1": ..., "p50_ms_c20": ..., "p99_ms_c20": ...}
"""

from __future__ import annotations

import http.client
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from clusterbook_bot.demo import DEMO_ACCESS, DEMO_USER, sign, slash_body, start_http_bot
from clusterbook_bot.standin import SlackStandin

REQUESTS = 200
COMMANDS = [
    "help",
    "runbooks",
    "params 00_hello",
    "status demo",
    "runs",
    "run 00_hello times=eleven",
]


def one_request(conn: http.client.HTTPConnection, path: str, body: bytes, secret: str) -> float:
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": sign(body, timestamp=timestamp, secret=secret),
    }
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200 or b"text" not in payload:
        raise RuntimeError(f"unexpected answer {response.status}: {payload[:200]!r}")
    return elapsed


def measure(url: str, secret: str, response_url: str, *, concurrency: int) -> list[float]:
    parts = urlsplit(url)
    bodies = [
        slash_body(
            COMMANDS[i % len(COMMANDS)],
            user=DEMO_USER,
            channel="C0BENCH",
            command="/clusterbook",
            response_url=response_url,
        )
        for i in range(REQUESTS)
    ]
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(REQUESTS))

    def client() -> None:
        # One keep-alive connection per client, as Slack's senders reuse connections.
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                elapsed = one_request(conn, parts.path, bodies[index], secret)
                with lock:
                    latencies.append(elapsed)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    secret = secrets.token_hex(16)
    with SlackStandin() as standin, tempfile.TemporaryDirectory() as tmp:
        bot = start_http_bot(
            standin=standin, state_dir=Path(tmp), signing_secret=secret, access_yaml=DEMO_ACCESS
        )
        try:
            measure(bot.events_url, secret, standin.response_url(), concurrency=4)  # warm up
            results = {}
            for concurrency in (1, 20):
                latencies = measure(
                    bot.events_url, secret, standin.response_url(), concurrency=concurrency
                )
                results[f"p50_ms_c{concurrency}"] = round(statistics.median(latencies), 1)
                results[f"p99_ms_c{concurrency}"] = round(percentile(latencies, 0.99), 1)
                print(
                    f"concurrency {concurrency:>2}: {len(latencies)} requests, "
                    f"p50 {results[f'p50_ms_c{concurrency}']} ms, "
                    f"p99 {results[f'p99_ms_c{concurrency}']} ms, "
                    f"max {max(latencies):.1f} ms",
                    file=sys.stderr,
                )
        finally:
            bot.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
