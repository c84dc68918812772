-- POST /auth/login with BENCH_BODY (a JSON username and password).
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, _)
  report(summary, latency)
end
