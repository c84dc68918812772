-- GET one path, each request with the next of the tokens in the file BENCH_TOKENS
-- (one per line), or with none when it is unset. With at least as many tokens as
-- threads (BENCH_THREADS, which bench/src/wrk.rs sets), each thread cycles through a
-- share of the file of its own: a token comes back only after its whole share went
-- by, however fast each thread runs. The cold run depends on that: 25,000 tokens on
-- two threads come back after 12,500 requests, more than the edge's token cache holds
-- (bench/src/revisits.rs checks it). Before, the threads shared one cycle from
-- offsets 390 tokens apart, so the thread behind resent what the other had sent
-- shortly before: 3,497 of 98,779 and 34,471 of 69,794 requests in two runs of a
-- second against a recorder, as the threads drifted apart or not.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local file = os.getenv("BENCH_TOKENS")
local tokens = {}
if file then
  for line in io.lines(file) do tokens[#tokens + 1] = line end
end

local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local requests = {}
local first, count, i = 0, 1, 0
function init(args)
  -- Requests are formatted once here so the Lua cost per request stays a table lookup.
  for n, token in ipairs(tokens) do
    requests[n] = wrk.format("GET", wrk.path, { ["Authorization"] = "Bearer " .. token })
  end
  if #requests == 0 then
    requests[1] = wrk.format("GET", wrk.path)
  end
  local threads = tonumber(os.getenv("BENCH_THREADS")) or 1
  count = #requests
  if count >= threads then
    count = math.floor(count / threads)
    first = (id or 0) * count
  end
end

function request()
  i = i % count + 1
  return requests[first + i]
end

function done(summary, latency, _)
  report(summary, latency)
end
