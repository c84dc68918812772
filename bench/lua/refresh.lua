-- One session per connection (run with as many threads as connections): each
-- request presents the refresh token the previous response returned, as a client
-- does. Start tokens come from BENCH_TOKENS, one line per thread.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end

local threads = {}
function setup(thread)
  thread:set("token", tokens[#threads + 1])
  threads[#threads + 1] = thread
end

-- Globals, so that `done` can read them from each thread with `thread:get`.
ok, failed = 0, 0
function request()
  return wrk.format("POST", "/auth/refresh", { ["Content-Type"] = "application/json" },
    '{"refresh_token":"' .. token .. '"}')
end

function response(status, _, body)
  if status == 200 then
    token = body:match('"refresh_token":"([^"]+)"')
    ok = ok + 1
  else
    -- The chain is broken: the next request replays the old token, and the origin
    -- (rightly) revokes the session. Counted, and the run is reported as failed.
    failed = failed + 1
  end
end

function done(summary, latency, _)
  local good, bad = 0, 0
  for _, t in ipairs(threads) do
    good = good + t:get("ok")
    bad = bad + t:get("failed")
  end
  report(summary, latency, string.format(',"ok":%d,"failed":%d', good, bad))
end
