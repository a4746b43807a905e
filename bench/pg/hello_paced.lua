-- bench/pg/hello_paced.lua - wrk script for GET /hello beside the /sleep load: each connection
-- waits PACE_MS between its requests, so /hello measures the loop's latency instead of
-- competing with /sleep for the worker's CPU (an unpaced closed loop would take most of it).
local pace = tonumber(os.getenv("PACE_MS") or "5")
function delay() return pace end
