-- GET one path, each request with the next of the tokens in the file BENCH_TOKENS
-- (one per line; threads start at different offsets), or with none when it is unset.
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
local i = 0
function init(args)
  -- Requests are formatted once here so the Lua cost per request stays a table lookup.
  for n, token in ipairs(tokens) do
    requests[n] = wrk.format("GET", wrk.path, { ["Authorization"] = "Bearer " .. token })
  end
  if #requests == 0 then
    requests[1] = wrk.format("GET", wrk.path)
  end
  i = (id or 0) * math.floor(#requests / 64)
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function done(summary, latency, _)
  report(summary, latency)
end
