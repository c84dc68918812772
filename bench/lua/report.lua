-- Shared by every wrk script here: `done` prints one JSON line the bench parses.
-- Latencies are in microseconds, as wrk keeps them.
function report(summary, latency, extra)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"non_2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d%s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.status, e.connect, e.read, e.write, e.timeout, extra or ""))
end
